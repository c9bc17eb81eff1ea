"""Issue 8 end to end: cost estimates, usage, quotas, moderation, API key rotation, progress, batch submit."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.clock import ManualClock
from service.config import ConfigError, load_settings
from service.pricing import DEFAULT_PRICE_TABLE, load_price_file
from tests.subscriber import Subscriber
from tests.support import (
    auth,
    emulated_service,
    get_job,
    live_server,
    make_settings,
    signed_webhook,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.anyio

MODELS_AND_SIZES = [
    ("sora-2", "720x1280", 0.10),
    ("sora-2", "1280x720", 0.10),
    ("sora-2-pro", "720x1280", 0.30),
    ("sora-2-pro", "1280x720", 0.30),
    ("sora-2-pro", "1024x1792", 0.50),
    ("sora-2-pro", "1792x1024", 0.50),
]


@asynccontextmanager
async def quiet_service(
    tmp_path: Path, clock: ManualClock | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A real server with no workers: jobs stay `pending` (so they hold their concurrent slots)."""
    app = create_app(make_settings(tmp_path, **overrides), clock=clock, start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=auth()) as client:
        yield client


async def _create(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/jobs", json={"prompt": "a fox", **body})


def _quota_error(response: httpx.Response, param: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error = dict(response.json()["error"])
    assert error["code"] == "quota_exceeded" and error["param"] == param
    assert int(response.headers["retry-after"]) >= 1
    return error


# --- cost ---------------------------------------------------------------------------------------------------


async def test_every_model_size_and_length_is_priced_per_second(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        for model, size, per_second in MODELS_AND_SIZES:
            for seconds in (4, 8, 12):
                response = await _create(client, model=model, size=size, seconds=seconds)
                assert response.status_code == 202
                job = response.json()
                assert job["estimated_cost_usd"] == round(per_second * seconds, 4), (model, size, seconds)
                assert (await get_job(client, job["id"]))["estimated_cost_usd"] == job["estimated_cost_usd"]
        # Spot values, written out: no float noise (0.1 × 12 is 1.2, not 1.2000000000000002).
        assert (await _create(client, model="sora-2", seconds=12)).json()["estimated_cost_usd"] == 1.2
        pro = await _create(client, model="sora-2-pro", size="1792x1024", seconds=12)
        assert pro.json()["estimated_cost_usd"] == 6.0
        tracked = await client.post("/v1/jobs/track", json={"resource_id": "batch_abc"})
        assert tracked.status_code == 201 and tracked.json()["estimated_cost_usd"] is None


async def test_a_prices_file_overrides_the_table_and_an_unknown_model_costs_null(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"sora-2": {"*": 0.2}, "sora-3": {"1280x720": 1.25}}))
    table = load_settings({"SORAHOOK_PRICES_FILE": str(prices)}).prices
    assert table == load_price_file(prices) and table != DEFAULT_PRICE_TABLE
    models = ("sora-2", "sora-2-pro", "sora-3", "mystery-model")
    async with quiet_service(tmp_path, prices=table, models=models) as client:

        async def cost(**body: Any) -> Any:
            response = await _create(client, **body)
            assert response.status_code == 202
            return response.json()["estimated_cost_usd"]

        assert await cost(model="sora-2", seconds=4) == 0.8
        assert await cost(model="sora-3", size="1280x720", seconds=8) == 10.0
        assert await cost(model="sora-3", size="720x1280", seconds=8) is None  # no price for that size
        assert await cost(model="mystery-model", seconds=4) is None  # never a guess
        assert await cost(model="sora-2-pro", size="1024x1792", seconds=4) == 2.0  # the file left it alone


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SORAHOOK_PRICES_FILE": "/nonexistent/prices.json"}, "SORAHOOK_PRICES_FILE"),
        ({"SORAHOOK_QUOTA_CONCURRENT": "many"}, "SORAHOOK_QUOTA_CONCURRENT"),
        ({"SORAHOOK_QUOTA_PER_HOUR": "-1"}, "SORAHOOK_QUOTA_PER_HOUR"),
        ({"SORAHOOK_QUOTA_DAILY_USD": "-5"}, "SORAHOOK_QUOTA_DAILY_USD"),
        ({"SORAHOOK_QUOTA_DAILY_USD": "lots"}, "SORAHOOK_QUOTA_DAILY_USD"),
        ({"SORAHOOK_MODERATION": "maybe"}, "SORAHOOK_MODERATION"),
        ({"SORAHOOK_PROGRESS_INTERVAL": "soon"}, "SORAHOOK_PROGRESS_INTERVAL"),
        ({"SORAHOOK_PROGRESS_STEP": "0"}, "SORAHOOK_PROGRESS_STEP"),
        ({"SORAHOOK_PROGRESS_STEP": "101"}, "SORAHOOK_PROGRESS_STEP"),
        ({"SORAHOOK_QUOTA_KEY": "x" * 65}, "SORAHOOK_QUOTA_KEY"),
    ],
)
def test_a_bad_extra_setting_stops_start_up_with_one_line_naming_it(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", "{}", '{"sora-2": 0.1}', '{"sora-2": {"big": 0.1}}', '{"sora-2": {"*": -1}}', "not json"],
)
def test_a_malformed_prices_file_is_refused(tmp_path: Path, content: str) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    with pytest.raises(ConfigError, match="SORAHOOK_PRICES_FILE"):
        load_settings({"SORAHOOK_PRICES_FILE": str(prices)})


def test_the_extra_settings_parse_from_the_environment() -> None:
    settings = load_settings(
        {
            "OPENAI_API_KEY": "sk-one, sk-two",
            "SORAHOOK_QUOTA_KEY": "team",
            "SORAHOOK_QUOTA_CONCURRENT": "3",
            "SORAHOOK_QUOTA_PER_HOUR": "10",
            "SORAHOOK_QUOTA_DAILY_USD": "12.5",
            "SORAHOOK_MODERATION": "true",
            "SORAHOOK_PROGRESS_INTERVAL": "5",
            "SORAHOOK_PROGRESS_STEP": "10",
        }
    )
    assert settings.openai_api_keys == ("sk-one", "sk-two")
    assert (settings.quota_key, settings.quota_concurrent, settings.quota_per_hour) == ("team", 3, 10)
    assert settings.quota_daily_usd == 12.5 and settings.moderation
    assert (settings.progress_interval, settings.progress_step) == (5.0, 10)
    defaults = load_settings({})
    assert (defaults.quota_concurrent, defaults.quota_per_hour, defaults.quota_daily_usd) == (
        None,
        None,
        None,
    )
    assert (defaults.moderation, defaults.progress_interval, defaults.progress_step) == (False, 0.0, 25)


# --- usage --------------------------------------------------------------------------------------------------


async def test_usage_sums_estimated_cost_and_counts_by_model_status_and_client(tmp_path: Path) -> None:
    clock = ManualClock(1_800_000_000.0)
    async with quiet_service(tmp_path, clock=clock) as client:
        made = [
            await _create(client, model="sora-2", seconds=4, metadata={"client": "acme"}),  # 0.4
            await _create(client, model="sora-2", seconds=8, metadata={"client": "acme"}),  # 0.8
            await _create(
                client, model="sora-2-pro", size="1024x1792", seconds=4, metadata={"client": "zeta"}
            ),
        ]
        clock.advance(100)
        later = await _create(client, model="sora-2-pro", seconds=12)  # 3.6, no client
        assert all(r.status_code == 202 for r in [*made, later])
        cancelled = await client.delete(f"/v1/jobs/{made[1].json()['id']}")
        assert cancelled.status_code == 200

        everything = (await client.get("/v1/usage")).json()
        assert everything == {
            "object": "usage",
            "since": None,
            "until": None,
            "total_estimated_cost_usd": 6.8,
            "jobs": 4,
            "by_model": {
                "sora-2": {"jobs": 2, "estimated_cost_usd": 1.2},
                "sora-2-pro": {"jobs": 2, "estimated_cost_usd": 5.6},
            },
            "by_status": {
                "cancelled": {"jobs": 1, "estimated_cost_usd": 0.8},
                "pending": {"jobs": 3, "estimated_cost_usd": 6.0},
            },
            "by_client": {
                "(none)": {"jobs": 1, "estimated_cost_usd": 3.6},
                "acme": {"jobs": 2, "estimated_cost_usd": 1.2},
                "zeta": {"jobs": 1, "estimated_cost_usd": 2.0},
            },
        }
        start = 1_800_000_000
        first = (await client.get("/v1/usage", params={"since": start, "until": start + 50})).json()
        assert (first["since"], first["until"], first["jobs"], first["total_estimated_cost_usd"]) == (
            start,
            start + 50,
            3,
            3.2,
        )
        second = (await client.get("/v1/usage", params={"since": start + 50})).json()
        assert second["jobs"] == 1 and second["by_client"] == {
            "(none)": {"jobs": 1, "estimated_cost_usd": 3.6}
        }
        empty = (await client.get("/v1/usage", params={"since": start + 1000})).json()
        assert empty["jobs"] == 0 and empty["total_estimated_cost_usd"] == 0 and empty["by_model"] == {}
        for params in ({"since": "yesterday"}, {"until": "1.5"}, {"since": "-1"}, {"since": 10, "until": 5}):
            response = await client.get("/v1/usage", params=params)
            assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_parameter"
        assert (
            await client.get("/v1/usage", headers={"authorization": "Bearer wrong-token"})
        ).status_code == 401


async def test_usage_groups_clients_by_the_configured_metadata_key(tmp_path: Path) -> None:
    async with quiet_service(tmp_path, quota_key="team") as client:
        await _create(client, metadata={"team": "red", "client": "ignored"})
        await _create(client, metadata={"client": "ignored"})
        usage = (await client.get("/v1/usage")).json()
        assert usage["by_client"] == {
            "(none)": {"jobs": 1, "estimated_cost_usd": 0.4},
            "red": {"jobs": 1, "estimated_cost_usd": 0.4},
        }


# --- quotas -------------------------------------------------------------------------------------------------


async def test_concurrent_quota_at_its_edge_is_per_client_and_frees_when_a_job_ends(tmp_path: Path) -> None:
    async with quiet_service(tmp_path, quota_concurrent=2) as client:
        acme = {"metadata": {"client": "acme"}}
        first = await _create(client, **acme)
        assert first.status_code == 202
        assert (await _create(client, **acme)).status_code == 202  # the last slot
        over = await _create(client, **acme)
        error = _quota_error(over, "concurrent_jobs")
        assert "acme" in error["message"] and "SORAHOOK_QUOTA_CONCURRENT" in error["message"]
        assert over.headers["retry-after"] == "30"
        assert (await _create(client, metadata={"client": "other"})).status_code == 202
        assert (await client.delete(f"/v1/jobs/{first.json()['id']}")).status_code == 200
        assert (await _create(client, **acme)).status_code == 202  # the cancelled job gave its slot back
        jobs = (await client.get("/v1/jobs", params={"limit": 100})).json()["data"]
        assert len(jobs) == 4  # the refused requests stored nothing


async def test_ten_requests_racing_for_the_last_concurrent_slot_let_exactly_one_through(
    tmp_path: Path,
) -> None:
    async with quiet_service(tmp_path, quota_concurrent=5) as client:
        body = {"metadata": {"client": "racer"}}
        for _ in range(4):
            assert (await _create(client, **body)).status_code == 202
        answers = await asyncio.gather(*(_create(client, prompt=f"racer {i}", **body) for i in range(10)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [202] + [429] * 9
        for refused in (r for r in answers if r.status_code == 429):
            _quota_error(refused, "concurrent_jobs")
        usage = (await client.get("/v1/usage")).json()
        assert usage["by_client"]["racer"]["jobs"] == 5


async def test_jobs_per_hour_quota_at_its_edge_says_when_the_oldest_job_leaves_the_window(
    tmp_path: Path,
) -> None:
    clock = ManualClock(1_800_000_000.0)
    async with quiet_service(tmp_path, clock=clock, quota_per_hour=3) as client:
        body = {"metadata": {"client": "hourly"}}
        first = await _create(client, **body)
        assert first.status_code == 202
        clock.advance(600)
        assert (await _create(client, **body)).status_code == 202
        assert (await client.delete(f"/v1/jobs/{first.json()['id']}")).status_code == 200
        assert (await _create(client, **body)).status_code == 202  # the third: at the limit
        clock.advance(400)
        over = await _create(client, **body)
        error = _quota_error(over, "jobs_per_hour")
        assert "SORAHOOK_QUOTA_PER_HOUR" in error["message"]
        # The first job (made 1000 s ago) leaves the hour window in 2600 s; cancelling it did not help.
        assert over.headers["retry-after"] == "2600"
        clock.advance(2600)
        assert (await _create(client, **body)).status_code == 202
        assert (await _create(client, **body)).status_code == 429


async def test_daily_spend_quota_at_its_edge_counts_estimated_cost(tmp_path: Path) -> None:
    clock = ManualClock(1_800_000_000.0)
    async with quiet_service(
        tmp_path, clock=clock, quota_daily_usd=1.0, models=("sora-2", "sora-2-pro", "free")
    ) as client:
        body = {"metadata": {"client": "spender"}}
        assert (await _create(client, seconds=4, **body)).status_code == 202  # 0.40
        clock.advance(3600)
        assert (await _create(client, seconds=4, **body)).status_code == 202  # 0.80
        over = await _create(client, seconds=4, **body)  # 1.20 > 1.00
        error = _quota_error(over, "daily_spend_usd")
        assert "SORAHOOK_QUOTA_DAILY_USD" in error["message"]
        assert over.headers["retry-after"] == str(86400 - 3600)  # when the first 0.40 leaves the 24 h
        assert (await _create(client, model="free", **body)).status_code == 202  # no price: counts 0
        huge = await _create(
            client, model="sora-2-pro", size="1792x1024", seconds=12, **{"metadata": {"client": "new"}}
        )
        assert _quota_error(huge, "daily_spend_usd") and huge.headers["retry-after"] == "86400"
        assert (await _create(client, seconds=8, metadata={"client": "new"})).status_code == 202  # 0.80 fits
        clock.advance(86400 - 3600)
        assert (await _create(client, seconds=4, **body)).status_code == 202


# --- batch submit -------------------------------------------------------------------------------------------


async def test_a_batch_with_bad_items_creates_nothing_and_lists_every_bad_index(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        jobs = [
            {"prompt": "fine"},
            {"prompt": "bad length", "seconds": 5},
            "not an object",
            {"prompt": "fine too", "size": "1280x720"},
            {"prompt": "typo", "colour": "red"},
        ]
        response = await client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "invalid_batch" and error["param"] == "jobs"
        assert [(e["index"], e["param"]) for e in error["errors"]] == [
            (1, "seconds"),
            (2, None),
            (4, "colour"),
        ]
        assert all(e["message"] for e in error["errors"])
        assert (await client.get("/v1/jobs")).json()["data"] == []
        for body in (
            {"jobs": []},
            {"jobs": [{"prompt": "x"}] * 101},
            {"jobs": "x"},
            {},
            {"jobs": [], "x": 1},
        ):
            bad = await client.post("/v1/jobs/batch", json=body)
            assert bad.status_code == 422, body
        assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_a_batch_is_created_whole_submitted_and_replayed_by_its_idempotency_key(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        jobs = [
            {"prompt": f"scene {i}", "seconds": 4 * (1 + i % 3), "metadata": {"client": "b"}}
            for i in range(5)
        ]
        headers = {"idempotency-key": "batch-one"}
        response = await client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers)
        assert response.status_code == 202 and "idempotent-replayed" not in response.headers
        body = response.json()
        assert body["object"] == "list"
        created = body["data"]
        assert [j["request"]["prompt"] for j in created] == [f"scene {i}" for i in range(5)]
        assert [j["estimated_cost_usd"] for j in created] == [0.4, 0.8, 1.2, 0.4, 0.8]
        again = await client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers)
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert [j["id"] for j in again.json()["data"]] == [j["id"] for j in created]
        # The batch's key on a single job is the key reused with another body: refused, nothing made.
        single = await client.post("/v1/jobs", json={"prompt": "alone"}, headers=headers)
        assert single.status_code == 422 and single.json()["error"]["code"] == "idempotency_key_reused"
        single = await client.post("/v1/jobs", json={"prompt": "alone"}, headers={"idempotency-key": "one"})
        assert single.status_code == 202
        for job in created:
            await wait_for_status(client, job["id"], "completed")
        creates = [c for c in emulator.calls if c == ("POST", "/v1/videos")]
        assert len(creates) == 6
        assert (await client.get("/v1/usage")).json()["by_client"]["b"]["jobs"] == 5


async def test_quotas_apply_to_a_batch_as_a_whole(tmp_path: Path) -> None:
    async with quiet_service(tmp_path, quota_concurrent=3) as client:
        four = [{"prompt": f"p{i}", "metadata": {"client": "team"}} for i in range(4)]
        _quota_error(await client.post("/v1/jobs/batch", json={"jobs": four}), "concurrent_jobs")
        assert (await client.get("/v1/jobs")).json()["data"] == []
        mixed = [*four[:3], {"prompt": "elsewhere", "metadata": {"client": "other"}}]
        response = await client.post("/v1/jobs/batch", json={"jobs": mixed})
        assert response.status_code == 202 and len(response.json()["data"]) == 4
        _quota_error(await client.post("/v1/jobs/batch", json={"jobs": four[:1]}), "concurrent_jobs")


# --- moderation ---------------------------------------------------------------------------------------------


async def test_a_flagged_prompt_fails_with_its_categories_and_never_reaches_the_videos_api(
    tmp_path: Path,
) -> None:
    async with (
        emulated_service(tmp_path, moderation=True) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        flagged = (await _create(client, prompt="a [flag] scene")).json()
        job = await wait_for_status(client, flagged["id"], "failed")
        assert job["error"]["code"] == "moderation_flagged"
        assert job["error"]["categories"] == ["violence"] and "violence" in job["error"]["message"]
        assert job["resource_id"] is None
        assert ("POST", "/v1/moderations") in emulator.calls
        assert ("POST", "/v1/videos") not in emulator.calls
        events = (await client.get(f"/v1/jobs/{flagged['id']}/events")).json()["data"]
        assert [e["type"] for e in events] == ["video.failed"]

        clean = (await _create(client, prompt="a calm lake")).json()
        await wait_for_status(client, clean["id"], "completed")
        assert emulator.calls.count(("POST", "/v1/moderations")) == 2
        assert emulator.calls.count(("POST", "/v1/videos")) == 1
        metrics = (await client.get("/metrics")).text
        assert 'sorahook_openai_requests_total{operation="moderate",status="200"} 2.0' in metrics


async def test_moderation_is_off_by_default(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        job = (await _create(client, prompt="a [flag] scene")).json()
        await wait_for_status(client, job["id"], "completed")
        assert ("POST", "/v1/moderations") not in emulator.calls


async def test_the_emulator_moderations_endpoint_answers_in_openais_shape(tmp_path: Path) -> None:
    import openai

    async with emulated_service(tmp_path) as (url, _, _s):
        async with openai.AsyncOpenAI(api_key="x", base_url=f"{url}/_emulator/v1") as sdk:
            result = await sdk.moderations.create(input=["a [flag] scene", "a calm lake"])
        assert result.id.startswith("modr-")
        flagged, calm = result.results
        assert flagged.flagged and flagged.categories.violence and not flagged.categories.hate
        assert not calm.flagged and not calm.categories.violence


# --- API key rotation ---------------------------------------------------------------------------------------

BAD_KEY = "sk-proj-revoked0000000000000000wxyz"
GOOD_KEY = "sk-proj-working000000000000000abcd"


async def test_a_401_moves_to_the_next_key_counts_it_and_logs_only_the_last_4_characters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        emulated_service(
            tmp_path, openai_api_keys=(BAD_KEY, GOOD_KEY), emulator_options={"api_keys": (GOOD_KEY,)}
        ) as (url, _emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        first = (await _create(client, prompt="one")).json()
        await wait_for_status(client, first["id"], "completed")
        second = (await _create(client, prompt="two")).json()
        await wait_for_status(client, second["id"], "completed")
        metrics = (await client.get("/metrics")).text
        assert 'sorahook_openai_key_rotations_total{reason="unauthorized"} 1.0' in metrics
        # One refused create, then every call on the second key: the rotation sticks.
        assert 'sorahook_openai_requests_total{operation="create_video",status="401"} 1.0' in metrics
        assert 'sorahook_openai_requests_total{operation="create_video",status="200"} 2.0' in metrics
    rotations = [r.getMessage() for r in caplog.records if "refused the API key" in r.getMessage()]
    assert len(rotations) == 1 and "wxyz" in rotations[0] and "abcd" in rotations[0]
    for record in caplog.records:
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        assert BAD_KEY not in text and GOOD_KEY not in text
        assert BAD_KEY[:-4] not in text and GOOD_KEY[:-4] not in text


async def test_an_insufficient_quota_429_moves_to_the_next_key(tmp_path: Path) -> None:
    other = "sk-proj-secondaccount000000000099"
    async with (
        emulated_service(
            tmp_path, openai_api_keys=(GOOD_KEY, other), emulator_options={"api_keys": (GOOD_KEY, other)}
        ) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        emulator.inject_fault(429, code="insufficient_quota", path_prefix="/v1/videos")
        job = (await _create(client)).json()
        await wait_for_status(client, job["id"], "completed")
        metrics = (await client.get("/metrics")).text
        assert 'sorahook_openai_key_rotations_total{reason="insufficient_quota"} 1.0' in metrics
        assert "unauthorized" not in metrics.split("key_rotations_total")[-1].split("\n")[0]


async def test_when_every_key_is_refused_the_job_fails_with_openais_error(tmp_path: Path) -> None:
    async with (
        emulated_service(
            tmp_path,
            openai_api_keys=(BAD_KEY, "sk-proj-alsobad000000000000001111"),
            emulator_options={"api_key": GOOD_KEY},
        ) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        job = (await _create(client)).json()
        failed = await wait_for_status(client, job["id"], "failed")
        assert failed["error"]["code"] == "invalid_api_key"
        assert emulator.calls.count(("POST", "/v1/videos")) == 2  # once per key, no more


# --- progress -----------------------------------------------------------------------------------------------


STATE_AND_PROGRESS = [
    "video.queued",
    "video.in_progress",
    "video.progress",
    "video.completed",
    "video.failed",
]


async def test_progress_events_arrive_in_order_throttled_by_the_step(tmp_path: Path) -> None:
    sub_server = Subscriber()
    async with (
        live_server(sub_server.app()) as sub_url,
        emulated_service(
            tmp_path, progress_interval=0.2, progress_step=25, emulator_options={"duration": 3.0}
        ) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        sub = await client.post(
            "/v1/subscriptions",
            json={"url": f"{sub_url}/hook", "event_types": STATE_AND_PROGRESS, "ordered": True},
        )
        assert sub.status_code == 201
        ids = [(await _create(client, prompt=f"slow {i}")).json()["id"] for i in range(3)]

        def events(job_id: str) -> list[dict[str, Any]]:
            return [r.event for r in sub_server.on("/hook") if r.event["data"].get("id") == job_id]

        async def all_completed() -> bool:
            return all(any(e["type"] == "video.completed" for e in events(i)) for i in ids)

        await wait_until(all_completed, timeout=30)
        total_progress_events = 0
        for job_id in ids:
            timeline = events(job_id)
            types = [e["type"] for e in timeline]
            assert types[-1] == "video.completed" and types[0] == "video.queued", types
            progress = [e["data"] for e in timeline if e["type"] == "video.progress"]
            assert progress, f"no video.progress for {job_id}: {types}"
            total_progress_events += len(progress)
            values = [p["progress"] for p in progress]
            assert values[0] >= 25 and all(b - a >= 25 for a, b in itertools.pairwise(values))
            assert all(v < 100 for v in values) and len(values) <= 3
            assert all(p["status"] == "in_progress" for p in progress)
            # Progress is not a state change: it carries the sequence of the state event before it.
            state_events = [e for e in timeline if e["type"] != "video.progress"]
            assert [e["data"]["sequence"] for e in state_events] == list(range(1, len(state_events) + 1))
            assert {p["sequence"] for p in progress} == {2}  # after video.in_progress
            assert (await get_job(client, job_id))["sequence"] == len(state_events)
        # The poller listed the three videos (one call each time) far more often than it announced progress.
        lists = emulator.calls.count(("GET", "/v1/videos"))
        assert lists > max(len([e for e in events(i) if e["type"] == "video.progress"]) for i in ids)
        assert total_progress_events <= 9


async def test_progress_polling_is_off_by_default(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path, emulator_options={"duration": 1.0}) as (url, emulator, _),
        httpx.AsyncClient(base_url=url, headers=auth()) as client,
    ):
        job = (await _create(client)).json()
        await wait_for_status(client, job["id"], "completed")
        events = (await client.get(f"/v1/jobs/{job['id']}/events")).json()["data"]
        assert "video.progress" not in {e["type"] for e in events}
        assert ("GET", "/v1/videos") not in emulator.calls


async def test_jobs_heard_of_only_by_webhook_count_toward_no_clients_quota(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quota_per_hour=2)
    app = create_app(settings, start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=auth()) as client:
        for i in range(3):
            body, headers = signed_webhook(
                settings.webhook_secrets[0], "video.completed", f"video_elsewhere{i}"
            )
            assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
        # No client key on these requests: the three webhook jobs must not use up the anonymous quota.
        assert (await _create(client)).status_code == 202
        assert (await _create(client)).status_code == 202
        _quota_error(await _create(client), "jobs_per_hour")
