"""The jobs API end to end: a real server, the emulator as OpenAI, a real SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.support import (
    auth,
    emulated_service,
    get_job,
    live_server,
    make_settings,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def test_a_job_goes_from_pending_to_completed_through_the_emulator_webhook(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, emulator, _), httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/jobs", json={"prompt": "a red fox in snow", "seconds": 4}, headers=auth()
        )
        assert response.status_code == 202
        created = response.json()
        assert (
            created["status"] == "pending" and created["origin"] == "api" and created["id"].startswith("job_")
        )
        assert created["request"] == {
            "model": "sora-2",
            "prompt": "a red fox in snow",
            "seconds": "4",
            "size": "720x1280",
        }

        async def enriched() -> dict[str, Any] | None:
            job = await get_job(client, created["id"])
            return job if job["status"] == "completed" and job["result"] else None

        job = await wait_until(enriched, timeout=15)
        assert job["resource_id"].startswith("video_") and job["progress"] == 100
        assert job["result"]["expires_at"] > job["completed_at"] - 1
        assert job["result"]["size"] == "720x1280" and job["result"]["seconds"] == "4"
        assert job["sequence"] == 2  # pending -> queued -> completed
        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        kinds = [(e["direction"], e["type"], e["source"]) for e in events]
        assert ("emitted", "video.queued", "submitter") in kinds
        assert ("received", "video.completed", "webhook") in kinds
        assert ("emitted", "video.completed", "webhook") in kinds
        creates = [c for c in emulator.calls if c == ("POST", "/v1/videos")]
        assert len(creates) == 1 and len(emulator.videos) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"prompt": "ok", "seconds": 5}, "seconds"),
        ({"prompt": "ok", "seconds": "5"}, "seconds"),
        ({"prompt": "ok", "size": "100x100"}, "size"),
        ({"prompt": "ok", "model": "dall-e-3"}, "model"),
        ({"prompt": "ok", "callback_url": "ftp://example.com/x"}, "callback_url"),
        ({"prompt": "ok", "callback_url": 5}, "callback_url"),
        ({"prompt": "ok", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"prompt": "ok", "metadata": {"k": 1}}, "metadata"),
        ({"prompt": "ok", "metadata": ["a"]}, "metadata"),
        ({"prompt": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_create_validation_names_the_field(tmp_path: Path, body: dict[str, Any], param: str) -> None:
    app = create_app(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/jobs", json=body, headers=auth())
        assert response.status_code == 422
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["message"]


async def test_models_come_from_configuration(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, models=("wan-2.5",)), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (
            await client.post("/v1/jobs", json={"prompt": "x", "model": "wan-2.5"}, headers=auth())
        ).status_code == 202
        assert (
            await client.post("/v1/jobs", json={"prompt": "x", "model": "sora-2"}, headers=auth())
        ).status_code == 422


async def test_bad_json_and_missing_token_are_clear_errors(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/jobs", content=b"{not json", headers=auth())
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
        response = await client.post("/v1/jobs", json={"prompt": "x"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        response = await client.get("/v1/jobs", headers=auth("wrong-token"))
        assert response.status_code == 401
        response = await client.get("/v1/jobs/job_nope", headers=auth())
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_same_idempotency_key_returns_the_same_job(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        headers = {**auth(), "Idempotency-Key": "order-42"}
        first = await client.post("/v1/jobs", json={"prompt": "a"}, headers=headers)
        second = await client.post("/v1/jobs", json={"prompt": "a"}, headers=headers)
        assert first.json()["id"] == second.json()["id"]
        assert second.headers.get("idempotent-replayed") == "true"
        listed = (await client.get("/v1/jobs", headers=auth())).json()
        assert len(listed["data"]) == 1


async def test_list_filters_and_paginates_newest_first(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        ids = [
            (await client.post("/v1/jobs", json={"prompt": f"p{i}"}, headers=auth())).json()["id"]
            for i in range(5)
        ]
        page = (await client.get("/v1/jobs?limit=2", headers=auth())).json()
        assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
        page2 = (await client.get(f"/v1/jobs?limit=2&after={page['last_id']}", headers=auth())).json()
        assert [j["id"] for j in page2["data"]] == ids[::-1][2:4]
        page3 = (await client.get(f"/v1/jobs?limit=2&after={page2['last_id']}", headers=auth())).json()
        assert [j["id"] for j in page3["data"]] == ids[:1] and page3["has_more"] is False
        assert len((await client.get("/v1/jobs?status=pending", headers=auth())).json()["data"]) == 5
        assert (await client.get("/v1/jobs?status=completed", headers=auth())).json()["data"] == []
        assert (await client.get("/v1/jobs?status=bogus", headers=auth())).status_code == 422
        assert (await client.get("/v1/jobs?limit=0", headers=auth())).status_code == 422


async def test_transient_openai_errors_are_retried_and_create_one_video(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, emulator, _), httpx.AsyncClient(base_url=url) as client:
        emulator.inject_fault(500, count=2)
        job = (await client.post("/v1/jobs", json={"prompt": "retry me"}, headers=auth())).json()
        done = await wait_for_status(client, job["id"], "queued", "in_progress", "completed")
        assert done["resource_id"] in emulator.videos
        assert len(emulator.videos) == 1
        assert sum(1 for c in emulator.calls if c == ("POST", "/v1/videos")) == 3


async def test_rate_limit_with_retry_after_is_honoured(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, emulator, _), httpx.AsyncClient(base_url=url) as client:
        emulator.inject_fault(429, count=1, retry_after=0.2)
        job = (await client.post("/v1/jobs", json={"prompt": "slow down"}, headers=auth())).json()
        done = await wait_for_status(client, job["id"], "queued", "in_progress", "completed")
        assert len(emulator.videos) == 1 and done["resource_id"]


async def test_moderation_rejection_fails_the_job_with_openai_code(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, emulator, _), httpx.AsyncClient(base_url=url) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "[moderation] nope"}, headers=auth())).json()
        failed = await wait_for_status(client, job["id"], "failed")
        assert failed["error"]["code"] == "moderation_blocked" and failed["error"]["message"]
        assert failed["resource_id"] is None and len(emulator.videos) == 0
        assert sum(1 for c in emulator.calls if c == ("POST", "/v1/videos")) == 1


async def test_failed_video_carries_openai_error(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, _, _s), httpx.AsyncClient(base_url=url) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "[fail] this"}, headers=auth())).json()

        async def failed_with_detail() -> dict[str, Any] | None:
            current = await get_job(client, job["id"])
            return current if current["status"] == "failed" and current["error"] else None

        failed = await wait_until(failed_with_detail, timeout=15)
        assert failed["error"]["code"] == "video_generation_failed"


async def test_cancel_pending_job_is_never_submitted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with (
        live_server(create_app(settings, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as c,
    ):
        job = (await c.post("/v1/jobs", json={"prompt": "never"}, headers=auth())).json()
        cancelled = await c.delete(f"/v1/jobs/{job['id']}", headers=auth())
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = await c.delete(f"/v1/jobs/{job['id']}", headers=auth())
        assert again.status_code == 409
    async with emulated_service(tmp_path) as (url, emulator, _), httpx.AsyncClient(base_url=url) as client:
        # Same database file, now with workers and OpenAI: the cancelled job stays unsubmitted.
        other = (await client.post("/v1/jobs", json={"prompt": "fresh"}, headers=auth())).json()
        await wait_for_status(client, other["id"], "queued", "in_progress", "completed")
        assert (await get_job(client, job["id"]))["status"] == "cancelled"
        assert len(emulator.videos) == 1


async def test_cancel_submitted_video_deletes_it_at_openai(tmp_path: Path) -> None:
    options = {"duration": 30.0}
    async with (
        emulated_service(tmp_path, emulator_options=options) as (url, emulator, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        job = (await client.post("/v1/jobs", json={"prompt": "long one"}, headers=auth())).json()
        queued = await wait_for_status(client, job["id"], "queued", "in_progress")
        response = await client.delete(f"/v1/jobs/{job['id']}", headers=auth())
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        assert ("DELETE", f"/v1/videos/{queued['resource_id']}") in emulator.calls
        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        assert events[-1]["type"] == "video.cancelled"


async def test_content_streams_the_asset_and_is_gone_after_expiry(tmp_path: Path) -> None:
    from service.emulator.assets import CONTENT

    async with (
        # archive=False: this is the fallback to OpenAI; the archived copy outlives expiry (test_archive.py)
        emulated_service(tmp_path, emulator_options={"asset_ttl": 2.0}, archive=False) as (url, _, _s),
        httpx.AsyncClient(base_url=url) as client,
    ):
        job = (await client.post("/v1/jobs", json={"prompt": "thumb"}, headers=auth())).json()
        early = await client.get(f"/v1/jobs/{job['id']}/content?variant=thumbnail", headers=auth())
        assert early.status_code == 409

        async def enriched() -> dict[str, Any] | None:
            current = await get_job(client, job["id"])
            return current if current["status"] == "completed" and current["result"] else None

        await wait_until(enriched, timeout=15)
        for variant in ("thumbnail", "video", "spritesheet"):
            response = await client.get(f"/v1/jobs/{job['id']}/content?variant={variant}", headers=auth())
            assert response.status_code == 200
            assert response.content == CONTENT[variant][0]
            assert response.headers["content-type"] == CONTENT[variant][1]
        bad = await client.get(f"/v1/jobs/{job['id']}/content?variant=poster", headers=auth())
        assert bad.status_code == 422

        async def expired() -> bool:
            r = await client.get(f"/v1/jobs/{job['id']}/content?variant=video", headers=auth())
            return r.status_code == 410

        assert await wait_until(expired, timeout=10, interval=0.2)


async def test_track_a_video_made_elsewhere(tmp_path: Path) -> None:
    async with emulated_service(tmp_path) as (url, _, settings), httpx.AsyncClient(base_url=url) as client:
        made = await client.post(f"{url}/_emulator/v1/videos", json={"prompt": "made elsewhere"})
        video_id = made.json()["id"]
        tracked = await client.post("/v1/jobs/track", json={"resource_id": video_id}, headers=auth())
        assert tracked.status_code == 201 and tracked.json()["origin"] == "track"
        again = await client.post("/v1/jobs/track", json={"resource_id": video_id}, headers=auth())
        assert again.status_code == 200 and again.json()["id"] == tracked.json()["id"]
        done = await wait_for_status(client, video_id, "completed")
        assert done["id"] == tracked.json()["id"]
        bad = await client.post("/v1/jobs/track", json={"resource_id": "thing_1"}, headers=auth())
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "kind"
        batch = await client.post(
            "/v1/jobs/track", json={"resource_id": "batch_1", "kind": "batch"}, headers=auth()
        )
        assert batch.status_code == 201 and batch.json()["kind"] == "batch"
        del settings
