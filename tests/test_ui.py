"""The operator console over HTTP (no browser): sign-in, sessions, CSRF, pages, and changes through the store."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from service.app import create_app
from service.clock import ManualClock
from service.config import new_webhook_secret
from service.domain import KINDS, STATUSES, emitted_type
from service.errors import ApiError
from service.openapi import openapi_document
from service.ui.console import utc
from tests.subscriber import Subscriber
from tests.support import auth, emulated_service, live_server, make_settings, signed_webhook, wait_until

pytestmark = pytest.mark.anyio
TOKEN = "test-admin-token"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient) -> str:
    """Sign in; returns the session's CSRF token (from the overview page)."""
    response = await client.post("/ui/signin", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    page = await client.get("/ui/")
    assert page.status_code == 200
    return csrf_of(page.text)


@asynccontextmanager
async def console(tmp_path: Path, clock: ManualClock | None = None, **overrides: Any) -> AsyncIterator[Any]:
    """A sorahook without workers on a loopback port, and a client for it."""
    app = create_app(make_settings(tmp_path, **overrides), clock=clock, start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def test_signing_in_with_the_admin_token_sets_a_strict_httponly_session_cookie(tmp_path: Path) -> None:
    async with console(tmp_path, ui_session_ttl=600.0) as client:
        assert (await client.get("/ui/")).headers["location"] == "/ui/signin"
        response = await client.post("/ui/signin", data={"token": TOKEN})
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Max-Age=600" in cookie
        assert TOKEN not in cookie
        overview = await client.get("/ui/")
        assert overview.status_code == 200 and "Sign out" in overview.text


async def test_a_wrong_token_is_refused_without_a_session(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        response = await client.post("/ui/signin", data={"token": "not-the-token"})
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert "not the admin token" in response.text
        assert (await client.post("/ui/signin", data={})).status_code == 401
        assert (await client.get("/ui/jobs")).status_code == 303


async def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        csrf = await sign_in(client)
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/h"})
        ).json()
        for data in ({}, {"csrf": "wrong"}, {"csrf": csrf[:-1]}):
            response = await client.post(f"/ui/subscriptions/{sub['id']}/rotate", data=data)
            assert response.status_code == 403 and "CSRF" in response.text
        after = (await client.get(f"/v1/subscriptions/{sub['id']}", headers=auth())).json()
        assert after["secret"] == sub["secret"]
        response = await client.post(f"/ui/subscriptions/{sub['id']}/rotate", data={"csrf": csrf})
        assert response.status_code == 303
        rotated = (await client.get(f"/v1/subscriptions/{sub['id']}", headers=auth())).json()
        assert rotated["secret"] != sub["secret"]


async def test_an_expired_session_is_refused_and_sent_to_sign_in(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    async with console(tmp_path, clock=clock, ui_session_ttl=60.0) as client:
        csrf = await sign_in(client)
        clock.advance(61)
        response = await client.get("/ui/jobs")
        assert response.status_code == 303 and response.headers["location"] == "/ui/signin?expired=1"
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/h"})
        ).json()
        # The client dropped the cookie with the redirect; an old copy of it is refused as well.
        refused = await client.post(f"/ui/subscriptions/{sub['id']}/test", data={"csrf": csrf})
        assert refused.status_code == 303 and refused.headers["location"].startswith("/ui/signin")
        assert "expired" in (await client.get("/ui/signin?expired=1")).text


async def test_signing_out_ends_the_session_even_for_a_kept_cookie(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        csrf = await sign_in(client)
        kept = dict(client.cookies)
        response = await client.post("/ui/signout", data={"csrf": csrf})
        assert response.status_code == 303 and response.headers["location"] == "/ui/signin"
        client.cookies.update(kept)
        assert (await client.get("/ui/")).headers["location"] == "/ui/signin?expired=1"


async def test_console_changes_go_through_the_store_and_are_audited_with_the_session_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sorahook.ui")
    async with console(tmp_path) as client:
        csrf = await sign_in(client)
        response = await client.post(
            "/ui/subscriptions",
            data={"csrf": csrf, "url": "http://127.0.0.1:9/hook", "event_types": "video.*, batch.completed"},
        )
        assert response.status_code == 303
        sub_id = response.headers["location"].rsplit("/", 1)[-1]
        listed = (await client.get("/v1/subscriptions", headers=auth())).json()["data"]
        assert [(s["id"], s["event_types"], s["ordered"]) for s in listed] == [
            (sub_id, ["video.*", "batch.completed"], False)
        ]
        await client.post(f"/ui/subscriptions/{sub_id}/enabled", data={"csrf": csrf, "enabled": "false"})
        assert (await client.get(f"/v1/subscriptions/{sub_id}", headers=auth())).json()["enabled"] is False
        bad = await client.post(
            f"/ui/subscriptions/{sub_id}/edit",
            data={"csrf": csrf, "url": "ftp://nowhere", "event_types": ""},
            headers={"referer": f"/ui/subscriptions/{sub_id}"},
        )
        assert bad.status_code == 303
        page = await client.get(f"/ui/subscriptions/{sub_id}")
        assert "Error:" in page.text  # the API's own validator refused the URL
        assert (
            (await client.get(f"/v1/subscriptions/{sub_id}", headers=auth()))
            .json()["url"]
            .startswith("http://")
        )
    changes = [r for r in caplog.records if r.getMessage() == "console change"]
    assert [getattr(r, "action", None) for r in changes] == ["subscription.create", "subscription.disable"]
    sessions = {getattr(r, "session_id", None) for r in changes}
    assert len(sessions) == 1 and next(iter(sessions)).startswith("ses_")
    for record in caplog.records:
        assert TOKEN not in json.dumps(record.__dict__, default=str)


async def test_find_a_job_by_id_resource_id_or_idempotency_key(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        await sign_in(client)
        created = await client.post(
            "/v1/jobs", headers={**auth(), "idempotency-key": "nightly-42"}, json={"prompt": "a fox"}
        )
        job_id = created.json()["id"]
        tracked = await client.post("/v1/jobs/track", headers=auth(), json={"resource_id": "video_abc123"})
        for find, expected in (
            (job_id, job_id),
            ("nightly-42", job_id),
            ("video_abc123", tracked.json()["id"]),
        ):
            response = await client.get("/ui/jobs", params={"find": find})
            assert response.status_code == 303 and response.headers["location"] == f"/ui/jobs/{expected}"
        batch = await client.post(
            "/v1/jobs/batch",
            headers={**auth(), "idempotency-key": "batch-7"},
            json={"jobs": [{"prompt": "a"}] * 2},
        )
        listed = await client.get("/ui/jobs", params={"find": "batch-7"})
        assert listed.status_code == 200 and "The 2 jobs of the batch" in listed.text
        assert set(re.findall(r'href="/ui/jobs/(job_[0-9a-v]+)"', listed.text)) == {
            j["id"] for j in batch.json()["data"]
        }
        missing = await client.get("/ui/jobs", params={"find": "job_nope"})
        assert missing.status_code == 200 and "No job has" in missing.text
        page = await client.get(f"/ui/jobs/{job_id}")
        assert "a fox" in page.text and "pending" in page.text


async def test_the_jobs_list_pages_by_cursor_and_filters(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        await sign_in(client)
        made = await client.post(
            "/v1/jobs/batch", headers=auth(), json={"jobs": [{"prompt": f"p{i}"} for i in range(60)]}
        )
        ids = sorted((j["id"] for j in made.json()["data"]), reverse=True)
        first = await client.get("/ui/jobs", params={"status": "pending", "kind": "video"})
        shown = re.findall(r'href="/ui/jobs/(job_[0-9a-v]+)"', first.text)
        assert shown == ids[:50]
        next_url = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert next_url
        second = await client.get(next_url.group(1).replace("&amp;", "&"))
        assert re.findall(r'href="/ui/jobs/(job_[0-9a-v]+)"', second.text) == ids[50:]
        assert 'rel="next"' not in second.text
        none = await client.get("/ui/jobs", params={"status": "completed"})
        assert "No jobs." in none.text
        odd = await client.get("/ui/jobs", params={"status": "bogus"})
        assert odd.status_code == 200 and "unknown status &#39;bogus&#39;; showing every job" in odd.text


async def test_every_page_renders_and_links_its_figures(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        await sign_in(client)
        await client.post("/v1/jobs", headers=auth(), json={"prompt": "a fox"})
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/h"})
        ).json()
        overview = (await client.get("/ui/")).text
        assert 'href="/ui/jobs?kind=video&amp;status=pending"' in overview
        assert 'href="/ui/deliveries?status=dead"' in overview
        assert "Webhooks received, last hour</dt><dd>0<" in overview and "0 passes" in overview
        for path in (
            "/ui/subscriptions",
            f"/ui/subscriptions/{sub['id']}",
            "/ui/deliveries",
            f"/ui/deliveries?subscription_id={sub['id']}&status=dead",
        ):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["cache-control"] == "no-store"
        assert (await client.get("/ui/jobs/job_nope")).status_code == 404
        assert (await client.get("/ui/deliveries/dlv_nope")).status_code == 404
        assert (await client.get("/ui/static/console.css")).status_code == 200


async def test_retry_all_dead_makes_a_subscriptions_dead_deliveries_delivered(tmp_path: Path) -> None:
    subscriber = Subscriber()
    subscriber.defaults["/hook"] = 500
    async with (
        live_server(subscriber.app()) as hook_base,
        emulated_service(tmp_path, retry_schedule=(0.0, 0.01)) as (url, _, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        csrf = await sign_in(client)
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": f"{hook_base}/hook"})
        ).json()
        for _ in range(3):
            assert (
                await client.post(f"/v1/subscriptions/{sub['id']}/test", headers=auth())
            ).status_code == 202

        async def dead() -> list[Any]:
            found = (
                await client.get("/v1/deliveries", headers=auth(), params={"subscription_id": sub["id"]})
            ).json()["data"]
            return found if len(found) == 3 and all(d["status"] == "dead" for d in found) else []

        await wait_until(dead)
        subscriber.defaults["/hook"] = 200
        later = str(int(time.time()) + 3600)  # none was made since then: nothing is retried
        none = await client.post(
            f"/ui/subscriptions/{sub['id']}/retry-dead", data={"csrf": csrf, "since": later}
        )
        assert (
            "Retrying 0 dead deliveries now (made since" in (await client.get(none.headers["location"])).text
        )
        assert await dead()
        response = await client.post(f"/ui/subscriptions/{sub['id']}/retry-dead", data={"csrf": csrf})
        assert response.status_code == 303

        async def delivered() -> bool:
            found = (
                await client.get("/v1/deliveries", headers=auth(), params={"subscription_id": sub["id"]})
            ).json()["data"]
            return all(d["status"] == "succeeded" for d in found)

        await wait_until(delivered)
        assert "Retrying 3 dead deliveries" in (await client.get(response.headers["location"])).text
        stats = (await client.get(f"/ui/subscriptions/{sub['id']}")).text
        assert "Last errors" in stats and "500" in stats


async def test_the_docs_page_shows_every_operation_and_every_event_type(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        document = (await client.get("/openapi.json")).json()
        for path, item in document["paths"].items():
            for method in item:
                assert f"<code>{path}</code>" in page.text, (method, path)
        for event_type in document["webhooks"]:
            assert f'id="event-{event_type}"' in page.text
        assert "cdn" not in page.text.lower() and "<script" not in page.text


def test_the_document_has_a_schema_with_a_valid_example_for_every_emitted_event_type() -> None:
    document = openapi_document()
    expected = {emitted_type(k, s) for k in KINDS for s in STATUSES if s != "pending"}
    expected |= {"video.progress", "video.archived", "video.archive_failed", "sorahook.test"}
    expected |= {"sorahook.subscription.disabled"}
    assert set(document["webhooks"]) == expected
    for event_type, item in document["webhooks"].items():
        ref = item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
        assert schema["properties"]["type"] == {"const": event_type}
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": ref,
            "components": document["components"],
        }
        validator = jsonschema_rs.validator_for(root)
        for example in schema["examples"]:
            errors = [e.message for e in validator.iter_errors(example)]
            assert not errors, (event_type, errors)


async def test_events_a_subscriber_receives_match_their_documented_schema(tmp_path: Path) -> None:
    subscriber = Subscriber()
    document = openapi_document()
    async with (
        live_server(subscriber.app()) as hook_base,
        emulated_service(tmp_path) as (url, _, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        await client.post("/v1/subscriptions", headers=auth(), json={"url": f"{hook_base}/hook"})
        job = (await client.post("/v1/jobs", headers=auth(), json={"prompt": "a fox"})).json()

        async def archived() -> bool:
            return any(r.event["type"] == "video.archived" for r in subscriber.received)

        await wait_until(archived, timeout=20)
    types = set()
    for received in subscriber.received:
        event = received.event
        types.add(event["type"])
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": f"#/components/schemas/Event.{event['type']}",
            "components": document["components"],
        }
        errors = [e.message for e in jsonschema_rs.validator_for(root).iter_errors(event)]
        assert not errors, (event["type"], errors)
    assert {"video.queued", "video.completed", "video.archived"} <= types, (types, job["id"])


def test_docs_code_spans_escape_everything_else() -> None:
    from service.ui.console import code_spans

    assert str(code_spans("a `<b>` & <i>c</i>")) == "a <code>&lt;b&gt;</code> &amp; &lt;i&gt;c&lt;/i&gt;"


async def test_every_console_route_but_sign_in_needs_a_session(tmp_path: Path) -> None:
    from starlette.routing import Mount, Route

    app = create_app(make_settings(tmp_path), start_workers=False)
    (mount,) = [r for r in app.routes if isinstance(r, Mount) and r.path == "/ui"]
    checked = 0
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        for route in mount.routes:
            if not isinstance(route, Route) or route.path == "/signin":
                continue
            path = "/ui" + re.sub(r"\{[^}]+\}", "x_1", route.path)
            for method in sorted((route.methods or set()) - {"HEAD"}):
                response = await client.request(method, path, data={"csrf": "x"})
                assert response.status_code == 303, (method, path)
                assert response.headers["location"] == "/ui/signin", (method, path)
                checked += 1
    assert checked >= 18


async def test_jobs_filter_by_origin_created_range_and_metadata(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    async with console(tmp_path, clock=clock) as client:
        await sign_in(client)
        a = (
            await client.post("/v1/jobs", headers=auth(), json={"prompt": "x", "metadata": {"client": "a"}})
        ).json()
        clock.advance(3600)
        b = (
            await client.post("/v1/jobs", headers=auth(), json={"prompt": "y", "metadata": {"client": "b"}})
        ).json()
        t = (await client.post("/v1/jobs/track", headers=auth(), json={"resource_id": "batch_xyz"})).json()

        async def shown(**params: str) -> list[str]:
            page = await client.get("/ui/jobs", params=params)
            assert page.status_code == 200
            return re.findall(r'href="/ui/jobs/(job_[0-9a-v]+)"', page.text)

        assert await shown(metadata="client=a") == [a["id"]]
        assert await shown(metadata="client = b", kind="video") == [b["id"]]
        assert await shown(origin="track") == [t["id"]]
        assert await shown(origin="api") == [b["id"], a["id"]]
        middle = str(int(a["created_at"]) + 1800)
        assert await shown(created_from=middle) == [t["id"], b["id"]]
        assert await shown(created_to=middle) == [a["id"]]
        as_typed = datetime.fromtimestamp(int(middle), UTC).strftime(
            "%Y-%m-%dT%H:%M"
        )  # a datetime-local field
        assert await shown(created_from=as_typed) == [t["id"], b["id"]]
        assert await shown(created_from=middle, metadata="client=a") == []
        refused = await client.get("/ui/jobs", params={"created_to": "yesterday"})
        assert "not a time" in refused.text and len(await shown()) == 3


async def test_a_jobs_page_plays_its_archived_assets_with_range_requests(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, _, _), httpx.AsyncClient(base_url=url) as client:
        await sign_in(client)
        job = (await client.post("/v1/jobs", headers=auth(), json={"prompt": "a fox"})).json()

        async def archived() -> dict[str, Any] | None:
            found = (await client.get(f"/v1/jobs/{job['id']}", headers=auth())).json()
            assets = (found.get("result") or {}).get("assets") or {}
            return assets if {"video", "thumbnail"} <= set(assets) else None

        assets = await wait_until(archived, timeout=20)
        page = (await client.get(f"/ui/jobs/{job['id']}")).text
        assert f'src="/ui/jobs/{job["id"]}/content?variant=thumbnail"' in page
        assert (
            f'<video controls preload="metadata" width="320" src="/ui/jobs/{job["id"]}/content?variant=video"'
            in page
        )
        content = f"/ui/jobs/{job['id']}/content"
        thumbnail = await client.get(content, params={"variant": "thumbnail"})
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert len(thumbnail.content) == assets["thumbnail"]["size"]
        head = await client.get(content, params={"variant": "video"}, headers={"range": "bytes=0-99"})
        assert head.status_code == 206 and len(head.content) == 100
        assert head.headers["content-range"] == f"bytes 0-99/{assets['video']['size']}"
        assert (await client.get(content, params={"variant": "nope"})).status_code == 422
        client.cookies.clear()
        assert (await client.get(content, params={"variant": "video"})).status_code == 303


async def test_the_overview_counts_webhooks_received_and_rejected_in_the_last_hour(tmp_path: Path) -> None:
    secret = new_webhook_secret()
    clock = ManualClock(time.time())
    async with console(tmp_path, clock=clock, webhook_secrets=(secret,)) as client:
        await sign_in(client)

        async def send(resource_id: str, key: str = secret) -> int:
            body, headers = signed_webhook(key, "video.completed", resource_id, timestamp=int(clock.now()))
            return (await client.post("/webhooks/openai", content=body, headers=headers)).status_code

        assert [await send("video_o0"), await send("video_o1")] == [200, 200]
        assert await send("video_bad", new_webhook_secret()) == 401
        assert (await client.post("/webhooks/openai", content=b"{}")).status_code == 400
        overview = (await client.get("/ui/")).text
        assert "Webhooks received, last hour</dt><dd>2<" in overview
        assert (
            "Webhooks rejected, last hour</dt><dd>2 <small>(invalid_signature 1, missing_headers 1)"
            in overview
        )
        assert "counted since the start at" in overview  # the window is in memory: up for under an hour
        assert 'href="/ui/jobs?kind=video&amp;status=completed">2</a>' in overview
        clock.advance(1800)
        assert await send("video_bad2", new_webhook_secret()) == 401
        assert "rejected, last hour</dt><dd>3 <small>" in (await client.get("/ui/")).text
        clock.advance(1860)  # the first three are over an hour old now; the last one is not
        overview = (await client.get("/ui/")).text
        assert "Webhooks received, last hour</dt><dd>0<" in overview
        assert "Webhooks rejected, last hour</dt><dd>1 <small>(invalid_signature 1)</small></dd>" in overview


def test_recent_counts_slide_by_the_minute() -> None:
    from service.recent import RecentCounts

    counts = RecentCounts(started_at=0.0, span=3600.0, step=60.0)
    counts.add("a", 10.0)
    counts.add("a", 59.0)
    counts.add("b", 61.0, n=3)
    assert counts.totals(61.0) == {"a": 2, "b": 3}
    assert counts.totals(3599.0) == {"a": 2, "b": 3}
    assert counts.totals(3600.0) == {"b": 3}  # the first minute has left the hour
    counts.add("c", 3700.0)
    counts.add("c", 3650.0)  # a clock that stepped back counts into the newest minute
    assert counts.totals(3700.0) == {"c": 2}  # and "b", at 61 s, left with minute 1
    assert counts.totals(3720.0 + 3600.0) == {}
    for t in range(0, 360_000, 30):
        counts.add("d", float(t))
    assert len(counts._buckets) <= 60 and counts.totals(359_999.0) == {"d": 120}


def test_console_times_are_utc_and_bounded_like_the_apis() -> None:
    from service.ui.console import _parse_utc

    assert _parse_utc("1764806400") == 1764806400.0
    assert _parse_utc("2025-12-04T00:00") == 1764806400.0
    for bad in ("nan", "inf", "-1", "1e12", "yesterday", ""):
        with pytest.raises(ApiError):
            _parse_utc(bad)


async def test_an_oversized_form_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    async with console(tmp_path) as client:
        big = {"token": "x" * 70_000}
        assert (await client.post("/ui/signin", data=big)).status_code == 413
        csrf = await sign_in(client)
        response = await client.post(
            "/ui/subscriptions", data={"csrf": csrf, "url": "http://x/" + "a" * 70_000}
        )
        assert response.status_code == 413
        assert (await client.get("/v1/subscriptions", headers=auth())).json()["data"] == []
        # Percent-encoded UTF-8 is read as such.
        response = await client.post(
            "/ui/subscriptions", data={"csrf": csrf, "url": "http://127.0.0.1:9/h", "description": "café ☕"}
        )
        assert response.status_code == 303
        assert (await client.get("/v1/subscriptions", headers=auth())).json()["data"][0][
            "description"
        ] == "café ☕"


async def test_a_deliverys_attempts_show_the_first_bytes_of_the_answer_escaped(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = "<script>alert(1)</script>\x1b[31m" + "x" * 500 + " the end"

    async def refuse(request: Request) -> Response:
        await request.body()
        return Response(answer, status_code=500, media_type="text/html")

    refuser = Starlette(routes=[Route("/hook", refuse, methods=["POST"])])
    settings = make_settings(tmp_path, retry_schedule=(0.0, 0.01))
    async with (
        live_server(refuser) as hook_base,
        live_server(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await sign_in(client)
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": f"{hook_base}/hook"})
        ).json()
        body, headers = signed_webhook(settings.webhook_secrets[0], "video.completed", "video_answer")
        assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200

        async def dead() -> dict[str, Any] | None:
            found = (
                await client.get("/v1/deliveries", headers=auth(), params={"subscription_id": sub["id"]})
            ).json()["data"]
            return found[0] if found and found[0]["status"] == "dead" else None

        delivery = await wait_until(dead)
        assert len(delivery["attempts"]) == 2
        page = (await client.get(f"/ui/deliveries/{delivery['id']}")).text
        kept = answer.replace("\x1b", "\\x1b").replace("<", "&lt;").replace(">", "&gt;")
        assert page.count(f"<pre>{kept}</pre>") == 2  # all of it (under 1 KiB), once per attempt
        assert "<script>alert" not in page and "\x1b" not in page
        job = (await client.get(f"/ui/jobs/{delivery['job_id']}")).text
        glimpse = kept[: kept.index("x" * 10)] + "x" * (200 - len(answer[: answer.index("x")]))
        assert f"<pre>{glimpse}…</pre>" in job
        assert f"first 200 of the {len(answer)} characters kept" in job
        assert f'<a href="/ui/deliveries/{delivery["id"]}">all</a>' in job
        listed = (await client.get("/ui/deliveries", params={"subscription_id": sub["id"]})).text
        assert '<pre class="resp">&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31mxxx' in listed
        stats = (await client.get(f"/ui/subscriptions/{sub['id']}")).text  # its last errors, too
        assert '<td class="resp"><pre>&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31mxxx' in stats
        assert "<script>alert" not in job + listed + stats


async def test_the_console_replays_a_time_range(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sorahook.ui")
    clock = ManualClock(float(int(time.time())))
    settings = make_settings(tmp_path)
    async with console(tmp_path, clock=clock, webhook_secrets=settings.webhook_secrets) as client:
        csrf = await sign_in(client)
        start = clock.now()
        for i in range(3):  # emitted at start, start + 100 and start + 200
            body, headers = signed_webhook(
                settings.webhook_secrets[0], "video.completed", f"video_r{i}", timestamp=int(clock.now())
            )
            assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
            # A read sees every webhook acknowledged before it, so the event is emitted before the clock moves.
            assert (await client.get(f"/v1/jobs/video_r{i}", headers=auth())).status_code == 200
            clock.advance(100)
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/h"})
        ).json()
        form = await client.get(f"/ui/subscriptions/{sub['id']}")
        assert 'name="since"' in form.text and 'name="until"' in form.text
        path = f"/ui/subscriptions/{sub['id']}/replay"
        referer = {"referer": f"/ui/subscriptions/{sub['id']}"}

        async def enqueued() -> list[str]:
            found = await client.get("/v1/deliveries", headers=auth(), params={"subscription_id": sub["id"]})
            return [d["job_id"] for d in found.json()["data"]]

        refused = await client.post(
            path, data={"csrf": csrf, "since": str(start + 50), "until": str(start + 50)}, headers=referer
        )
        assert (
            "The end of the range must be after its start."
            in (await client.get(refused.headers["location"])).text
        )
        assert await enqueued() == []
        response = await client.post(
            path, data={"csrf": csrf, "since": str(int(start + 50)), "until": str(int(start + 200))}
        )
        flashed = (await client.get(response.headers["location"])).text
        assert f"Replay enqueued 1 events from {utc(start + 50)} to {utc(start + 200)}." in flashed
        [job_id] = await enqueued()
        job = (await client.get(f"/v1/jobs/{job_id}", headers=auth())).json()
        assert job["resource_id"] == "video_r1"  # until is exclusive: the event at start + 200 is not sent
        await client.post(path, data={"csrf": csrf, "since": str(int(start + 150)), "until": ""})
        assert len(await enqueued()) == 2  # an empty until: everything since
    replays = [r for r in caplog.records if getattr(r, "action", None) == "subscription.replay"]
    assert [(getattr(r, "until", None), getattr(r, "enqueued", None)) for r in replays] == [
        (start + 200, 1),
        (None, 1),
    ]


async def test_retry_dead_since_a_time_goes_through_the_bulk_retry_for_every_subscription(
    tmp_path: Path,
) -> None:
    subscriber = Subscriber()
    subscriber.defaults["/a"] = subscriber.defaults["/b"] = 500
    async with (
        live_server(subscriber.app()) as hook_base,
        live_server(create_app(make_settings(tmp_path, retry_schedule=(0.0, 0.01)))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        csrf = await sign_in(client)
        since = str(int(time.time()) - 1)
        subs = []
        for name in ("a", "b"):
            sub = (
                await client.post("/v1/subscriptions", headers=auth(), json={"url": f"{hook_base}/{name}"})
            ).json()
            subs.append(sub["id"])
            for _ in range(2):
                await client.post(f"/v1/subscriptions/{sub['id']}/test", headers=auth())

        async def statuses() -> dict[str, list[str]]:
            found = (await client.get("/v1/deliveries", headers=auth())).json()["data"]
            return {s: sorted(d["status"] for d in found if d["subscription_id"] == s) for s in subs}

        async def all_dead() -> bool:
            return await statuses() == {s: ["dead", "dead"] for s in subs}

        await wait_until(all_dead)
        subscriber.defaults["/a"] = subscriber.defaults["/b"] = 200
        page = (await client.get("/ui/deliveries")).text
        assert 'action="/ui/deliveries/retry-dead"' in page
        referer = {"referer": "/ui/deliveries"}
        none = await client.post("/ui/deliveries/retry-dead", data={"csrf": csrf}, headers=referer)
        assert "Choose a subscription, a time, or both." in (await client.get(none.headers["location"])).text
        # The bulk retry leaves a disabled subscription's dead deliveries dead (they would only die again).
        await client.patch(f"/v1/subscriptions/{subs[1]}", headers=auth(), json={"enabled": False})
        refused = await client.post(
            f"/ui/subscriptions/{subs[1]}/retry-dead", data={"csrf": csrf}, headers=referer
        )
        assert "Enable the subscription first" in (await client.get(refused.headers["location"])).text
        response = await client.post("/ui/deliveries/retry-dead", data={"csrf": csrf, "since": since})
        flashed = (await client.get(response.headers["location"])).text
        assert "Retrying 2 dead deliveries now (made since" in flashed
        assert "those of disabled subscriptions stay dead" in flashed

        async def a_delivered() -> bool:
            return (await statuses())[subs[0]] == ["succeeded", "succeeded"]

        await wait_until(a_delivered)
        assert (await statuses())[subs[1]] == ["dead", "dead"]
        found = (
            await client.get("/v1/deliveries", headers=auth(), params={"subscription_id": subs[0]})
        ).json()
        assert all(d["attempt_count"] == 3 for d in found["data"])  # two before, one on the fresh schedule


async def test_the_overview_shows_the_reconcilers_last_pass(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, _, _), httpx.AsyncClient(base_url=url) as client:
        await sign_in(client)

        async def shown() -> str | None:
            page = (await client.get("/ui/")).text
            found = re.search(r'<dd id="last-pass">(.*?)</dd>', page, re.S)
            assert found
            return None if "no pass yet" in found.group(1) else found.group(1)

        # The first pass runs at start; nothing is stale in a new store, so it asks OpenAI nothing.
        text = await wait_until(shown)
        assert "nothing stale</span> at " in text and "no OpenAI call" in text


def test_the_last_pass_says_how_it_ended() -> None:
    from service.reconciler import PassRecord, PassReport
    from service.ui.console import make_templates

    partial = make_templates().env.get_template("_last_pass.html")

    def shown(record: PassRecord | None) -> str:
        return " ".join(partial.render(last_pass=record).split())

    t = 1_764_806_400.0
    assert shown(None) == "no pass yet"
    checked = PassReport(stale=3, calls=2, expired=1, outcomes={"updated": 2, "not_found": 1})
    assert shown(PassRecord(t, t + 1, checked)).endswith(
        "checked</span> at 2025-12-04 00:00:01 UTC <small>3 stale jobs, 2 OpenAI calls"
        " (not found 1, updated 2); 1 videos expired</small>"
    )
    limited = PassReport(stale=5, calls=1, halted=True, rate_limited=True)
    assert "rate limited</span>" in shown(PassRecord(t, t, limited, paused_until=t + 120))
    assert "OpenAI answered 429 after 1 calls; no calls until 2025-12-04 00:02:00 UTC" in shown(
        PassRecord(t, t, limited, paused_until=t + 120)
    )
    assert "skipped: backing off" in shown(PassRecord(t, t, PassReport(paused=True), paused_until=t + 60))
    failed = shown(PassRecord(t, t, None, error="OperationalError: <database is locked>"))
    assert 'class="status bad">error</span>' in failed
    assert "the pass failed: OperationalError: &lt;database is locked&gt;" in failed


async def test_a_job_page_shows_a_time_out_of_the_calendars_range_instead_of_failing(tmp_path: Path) -> None:
    # A signed webhook may carry any 64-bit created_at; the job's completed_at comes from it.
    secret = new_webhook_secret()
    async with console(tmp_path, webhook_secrets=(secret,)) as client:
        await sign_in(client)
        for created_at in (2**62, -(2**62)):
            body, headers = signed_webhook(
                secret, "video.completed", f"video_t{created_at > 0:d}", created_at=created_at
            )
            assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
            page = await client.get(f"/ui/jobs/video_t{created_at > 0:d}")
            assert page.status_code == 200
            assert str(created_at) in page.text


def test_console_times_keep_a_given_utc_offset() -> None:
    from service.ui.console import _parse_utc

    assert _parse_utc("2025-12-04T05:00+05:00") == 1764806400.0
    assert _parse_utc("2025-12-04T00:00Z") == 1764806400.0


async def test_retry_all_dead_leaves_a_disabled_subscriptions_deliveries_dead_as_the_api_does(
    tmp_path: Path,
) -> None:
    # The console's bulk retry is the API's operation, not a second path with other rules.
    subscriber = Subscriber()
    subscriber.defaults["/hook"] = 500
    async with (
        live_server(subscriber.app()) as hook_base,
        emulated_service(tmp_path, retry_schedule=(0.0, 0.01)) as (url, _, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        csrf = await sign_in(client)
        sub = (
            await client.post("/v1/subscriptions", headers=auth(), json={"url": f"{hook_base}/hook"})
        ).json()
        assert (await client.post(f"/v1/subscriptions/{sub['id']}/test", headers=auth())).status_code == 202

        async def statuses() -> list[str]:
            found = (
                await client.get("/v1/deliveries", headers=auth(), params={"subscription_id": sub["id"]})
            ).json()["data"]
            return [d["status"] for d in found]

        async def dead() -> bool:
            return await statuses() == ["dead"]

        await wait_until(dead)
        disabled = await client.patch(
            f"/v1/subscriptions/{sub['id']}", headers=auth(), json={"enabled": False}
        )
        assert disabled.status_code == 200
        api = await client.post("/v1/deliveries/retry", headers=auth(), json={"subscription_id": sub["id"]})
        assert api.json()["retried"] == 0
        response = await client.post(f"/ui/subscriptions/{sub['id']}/retry-dead", data={"csrf": csrf})
        assert response.status_code == 303
        assert "Enable the subscription first" in (await client.get(response.headers["location"])).text
        assert await statuses() == ["dead"]
