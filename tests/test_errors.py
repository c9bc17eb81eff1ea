"""A failed job's error: OpenAI's code and message, a category from a closed set, and a line for end users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from service.config import ConfigError, load_settings
from service.domain import ERROR_CATEGORIES, USER_MESSAGES, categorized, error_category
from tests.support import auth, emulated_service, get_job, wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("status", "code", "category"),
    [
        (400, "moderation_blocked", "content_policy"),
        (None, "moderation_blocked", "content_policy"),  # a video that failed later, by webhook
        (None, "moderation_flagged", "content_policy"),
        (400, "content_policy_violation", "content_policy"),
        (429, "insufficient_quota", "quota_or_billing"),
        (402, None, "quota_or_billing"),
        (403, "billing_hard_limit_reached", "quota_or_billing"),
        (429, "rate_limit_exceeded", "rate_limited"),
        (429, None, "rate_limited"),
        (None, "timeout", "network"),
        (None, "connection_error", "network"),
        (408, None, "network"),
        (404, "not_found", "not_found"),
        (404, None, "not_found"),
        (None, "resource_not_found", "not_found"),
        (400, "invalid_value", "invalid_request"),
        (400, None, "invalid_request"),
        (422, "whatever", "invalid_request"),
        (500, None, "provider_error"),
        (503, "server_error", "provider_error"),
        (None, "video_generation_failed", "provider_error"),
        (None, None, "provider_error"),
        (401, "invalid_api_key", "provider_error"),  # the operator's key, nothing the end user can change
        (None, "cancelled", "cancelled"),
    ],
)
def test_status_and_code_map_to_one_category(status: int | None, code: str | None, category: str) -> None:
    assert error_category(status, code) == category


@given(st.one_of(st.none(), st.integers(100, 599)), st.one_of(st.none(), st.text(max_size=40)))
def test_every_status_and_code_has_a_category_from_the_closed_set(
    status: int | None, code: str | None
) -> None:
    assert error_category(status, code) in ERROR_CATEGORIES


def test_an_error_stored_without_a_category_gets_one_from_its_code() -> None:
    old = {"code": "moderation_blocked", "message": "no"}
    assert categorized(old) == {
        **old,
        "category": "content_policy",
        "user_message": USER_MESSAGES["content_policy"],
    }
    assert categorized(None) is None
    for category, line in USER_MESSAGES.items():
        assert line and "\n" not in line and len(line) < 120, category


def _sample(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def _failed_job(client: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
    """The job once failed with its error filled in (a video.failed webhook's error comes with the refresh)."""
    created = await client.post("/v1/jobs", json={"prompt": prompt}, headers=auth())
    assert created.status_code == 202, created.text

    async def failed() -> dict[str, Any] | None:
        job = await get_job(client, created.json()["id"])
        return job if job["status"] == "failed" and job["error"] else None

    return dict(await wait_until(failed, timeout=20))


async def test_failed_jobs_carry_category_and_user_message_next_to_openais_code(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path) as (url, emulator, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        # Refused at creation (400 moderation_blocked).
        job = await _failed_job(client, "[moderation] a fox")
        assert job["error"]["code"] == "moderation_blocked"
        assert job["error"]["message"] == "Your request was blocked by our moderation system."
        assert job["error"]["category"] == "content_policy"
        assert job["error"]["user_message"] == USER_MESSAGES["content_policy"]

        # Failed later, reported by the video.failed webhook and filled in by the refresh.
        job = await _failed_job(client, "[fail] a fox")
        assert job["error"]["code"] == "video_generation_failed"
        assert job["error"]["category"] == "provider_error" and job["error"]["user_message"]

        # Out of quota: a 429 insufficient_quota is billing, not a rate limit, and is not retried.
        emulator.inject_fault(429, code="insufficient_quota", path_prefix="/v1/videos")
        job = await _failed_job(client, "a fox with no budget")
        assert job["error"]["code"] == "insufficient_quota"
        assert job["error"]["category"] == "quota_or_billing"

        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        [failed] = [e for e in events if e["type"] == "video.failed" and e["direction"] == "emitted"]
        assert failed["payload"]["data"]["error"]["category"] == "quota_or_billing"  # subscribers see it too

        metrics = (await client.get("/metrics")).text
        errors = "sorahook_openai_errors_total"
        assert _sample(metrics, errors, operation="create_video", category="content_policy") == 1
        assert _sample(metrics, errors, operation="create_video", category="quota_or_billing") == 1


def test_the_openai_client_timeout_and_retries_come_from_the_environment() -> None:
    settings = load_settings({"SORAHOOK_OPENAI_TIMEOUT": "2.5", "SORAHOOK_OPENAI_MAX_RETRIES": "0"})
    assert (settings.openai_timeout, settings.openai_max_retries) == (2.5, 0)
    assert (load_settings({}).openai_timeout, load_settings({}).openai_max_retries) == (30.0, 3)
    for env in (
        {"SORAHOOK_OPENAI_TIMEOUT": "soon"},
        {"SORAHOOK_OPENAI_TIMEOUT": "0"},
        {"SORAHOOK_OPENAI_MAX_RETRIES": "-1"},
        {"SORAHOOK_OPENAI_MAX_RETRIES": "many"},
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(env)
        assert next(iter(env)) in str(caught.value) and "\n" not in str(caught.value)
