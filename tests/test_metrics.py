"""Operations: /metrics after real traffic (parsed with prometheus-client's own parser), /healthz, /readyz and
request ids. Real servers on loopback, the emulator as OpenAI and a real local subscriber."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.app import create_app
from service.config import new_webhook_secret
from service.domain import ERROR_CATEGORIES, Kind, Status
from service.metrics import ARCHIVE_FAILURE_REASONS, CONNECTION_REFUSAL_REASONS, KEY_ROTATION_REASONS
from service.openai_client import Operation
from service.signing import Signer
from service.store.records import DeliveryStatus
from tests.subscriber import Subscriber
from tests.support import (
    auth,
    emulated_service,
    get_job,
    live_server,
    make_settings,
    signed_webhook,
    wait_until,
)

pytestmark = pytest.mark.anyio

# The contract's metrics: name -> (Prometheus type as parsed, label names).
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "sorahook_webhooks_received": ("counter", {"type", "outcome"}),
    "sorahook_webhook_rejections": ("counter", {"reason"}),
    "sorahook_jobs": ("gauge", {"kind", "status"}),
    "sorahook_job_duration_seconds": ("histogram", {"kind", "status"}),
    "sorahook_deliveries": ("counter", {"outcome"}),
    "sorahook_delivery_attempt_duration_seconds": ("histogram", set()),
    "sorahook_delivery_backlog": ("gauge", set()),
    "sorahook_event_to_delivery_seconds": ("histogram", set()),
    "sorahook_openai_requests": ("counter", {"operation", "status"}),
    "sorahook_openai_request_duration_seconds": ("histogram", {"operation"}),
    "sorahook_reconciliations": ("counter", {"outcome"}),
    # beyond the contract: finished deliveries vs attempts, jobs and cost, OpenAI retries and errors
    "sorahook_delivery_attempts": ("counter", {"outcome"}),
    "sorahook_jobs_created": ("counter", {"kind", "model"}),
    "sorahook_estimated_cost_usd": ("counter", {"model"}),
    "sorahook_openai_retries": ("counter", {"operation"}),
    "sorahook_openai_errors": ("counter", {"operation", "category"}),
}
REJECTION_REASONS = {
    "missing_headers",
    "invalid_signature",
    "timestamp_out_of_tolerance",
    "invalid_payload",
    "body_too_large",
}
# Closed label-value sets; anything outside them is a bug (an id, a URL, a raw event type...).
CLOSED: dict[str, set[str]] = {
    "kind": set(get_args(Kind)),
    "reason": REJECTION_REASONS
    | set(ARCHIVE_FAILURE_REASONS)
    | set(KEY_ROTATION_REASONS)
    | set(CONNECTION_REFUSAL_REASONS),
    "operation": set(get_args(Operation)),
    "model": {"sora-2", "sora-2-pro", "other"},
    "category": set(ERROR_CATEGORIES),
}
OUTCOMES = {
    "sorahook_webhooks_received_total": {"accepted", "duplicate"},
    "sorahook_deliveries_total": {"delivered", "dead"},
    "sorahook_delivery_attempts_total": set(get_args(DeliveryStatus)) - {"pending"},
    "sorahook_reconciliations_total": {"updated", "unchanged", "not_found", "error"},
}
ID_LIKE = re.compile(r"(?<![A-Za-z])(job|video|evt|sub|dlv|wh|msg|batch|resp)_[0-9A-Za-z]")
UNKNOWN_TYPE = "thirdparty.widget_polished"


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}

    def series(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")  # no token
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def assert_closed_labels(scraped: Scrape, forbidden: Iterable[str] = ()) -> None:
    """Every label value comes from a closed set: never an id, a URL or a raw unknown event type."""
    forbidden = [f for f in forbidden if f]
    for sample in scraped.samples:
        if not sample.name.startswith("sorahook_"):
            continue
        for label, value in sample.labels.items():
            where = f"{sample.name}{{{label}={value!r}}}"
            assert not ID_LIKE.search(value), f"an id in a label value: {where}"
            assert "://" not in value and "/" not in value, f"a URL or path in a label value: {where}"
            for text in forbidden:
                assert text not in value, f"{text!r} leaked into {where}"
            if label in CLOSED:
                assert value in CLOSED[label], where
            if label == "status" and sample.name.startswith("sorahook_jobs"):
                assert value in get_args(Status), where
            if label == "status" and sample.name.startswith("sorahook_job_duration"):
                assert value in {"completed", "failed", "cancelled", "expired"}, where
            if label == "status" and sample.name.startswith("sorahook_openai"):
                assert re.fullmatch(r"\d{3}|\dxx|error", value), where
            if label == "outcome" and sample.name in OUTCOMES:
                assert value in OUTCOMES[sample.name], where
            if label == "type":
                assert value == "other" or re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", value), where


def assert_contract_families(scraped: Scrape) -> None:
    for name, (kind, labels) in CONTRACT.items():
        assert name in scraped.families, f"{name} is missing from /metrics"
        family = scraped.families[name]
        assert family.type == kind, f"{name} is a {family.type}, the contract says {kind}"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, f"{sample.name} labels {sorted(sample.labels)}"


async def _subscribe(client: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"url": url, **extra}, headers=auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _deliveries(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/deliveries", params={"limit": "100", **query}, headers=auth())
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def _post_webhook(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/webhooks/openai", content=body, headers=headers)


# --- every contract metric moves with real traffic -------------------------------------------------------


async def test_every_contract_metric_moves_with_real_traffic(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.defaults["/down"] = 503
    async with (
        live_server(sub_server.app()) as sub_url,
        emulated_service(tmp_path, max_body_bytes=4096) as (url, _emulator, settings),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        secret = settings.webhook_secrets[0]
        before = await scrape(client)
        assert_contract_families(before)
        assert before.value("sorahook_delivery_backlog") == 0
        assert before.series("sorahook_delivery_backlog"), "the backlog gauge is always exposed"

        ok_sub = await _subscribe(client, f"{sub_url}/hook")
        down_sub = await _subscribe(client, f"{sub_url}/down", event_types=["video.completed"])

        # webhooks: accepted, duplicate, an event type sorahook does not model
        body, headers = signed_webhook(secret, "video.completed", "video_metricsdirect")
        assert (await _post_webhook(client, body, headers)).json() == {"status": "accepted"}
        assert (await _post_webhook(client, body, headers)).json() == {"status": "duplicate"}
        body, headers = signed_webhook(secret, UNKNOWN_TYPE, "video_metricsunknown")
        assert (await _post_webhook(client, body, headers)).json() == {"status": "accepted"}

        # one rejection of every reason
        body, headers = signed_webhook(secret, "video.completed", "video_metricsrejected")
        assert (await _post_webhook(client, body, {})).status_code == 400
        other, other_headers = signed_webhook(
            new_webhook_secret(), "video.completed", "video_metricsrejected"
        )
        assert (await _post_webhook(client, other, other_headers)).status_code == 401
        stale, stale_headers = signed_webhook(
            secret, "video.completed", "video_metricsrejected", timestamp=int(time.time()) - 3600
        )
        assert (await _post_webhook(client, stale, stale_headers)).status_code == 401
        junk = b'["not", "an", "event"]'
        junk_headers = Signer().headers("wh_metricsjunk", int(time.time()), junk.decode(), [secret])
        assert (await _post_webhook(client, junk, junk_headers)).status_code == 400
        big = b"{" + b" " * 8192 + b"}"
        big_headers = Signer().headers("wh_metricsbig", int(time.time()), big.decode(), [secret])
        assert (await _post_webhook(client, big, big_headers)).status_code == 413

        # a job through the emulator: create_video, the emulator's signed webhook, the refresh
        created = await client.post("/v1/jobs", json={"prompt": "a fox counting metrics"}, headers=auth())
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        async def completed() -> dict[str, Any] | None:
            job = await get_job(client, job_id)
            return job if job["status"] == "completed" and job["result"] else None

        job = await wait_until(completed, timeout=20)

        # let every delivery settle: /hook succeeds, /down gets 503 until the schedule runs out
        async def settled() -> bool:
            waiting = [
                d for status in ("pending", "failed") for d in await _deliveries(client, status=status)
            ]
            return not waiting and bool(await _deliveries(client, subscription_id=down_sub["id"]))

        await wait_until(settled, timeout=20)
        succeeded = await _deliveries(client, status="succeeded")
        dead = await _deliveries(client, status="dead")
        assert succeeded and dead
        assert {d["subscription_id"] for d in succeeded} == {ok_sub["id"]}
        assert {d["subscription_id"] for d in dead} == {down_sub["id"]}
        after = await scrape(client)

        def moved(name: str, **labels: str) -> float:
            return after.value(name, **labels) - before.value(name, **labels)

        # webhooks_received_total{type,outcome}: mine + the emulator's video.completed; the unknown type is "other"
        assert moved("sorahook_webhooks_received_total", type="video.completed", outcome="accepted") == 2
        assert moved("sorahook_webhooks_received_total", type="video.completed", outcome="duplicate") == 1
        assert moved("sorahook_webhooks_received_total", type="other", outcome="accepted") == 1
        assert UNKNOWN_TYPE not in after.label_values("sorahook_webhooks_received_total", "type")
        assert UNKNOWN_TYPE not in after.text

        # webhook_rejections_total{reason}: one of each, and only those
        for reason in REJECTION_REASONS:
            assert moved("sorahook_webhook_rejections_total", reason=reason) == 1, reason
        assert moved("sorahook_webhook_rejections_total") == len(REJECTION_REASONS)

        # jobs{kind,status}: the gauge agrees with the API
        listed = (await client.get("/v1/jobs", params={"limit": "100"}, headers=auth())).json()["data"]
        assert after.value("sorahook_jobs") == len(listed) == 2  # the unknown type makes no job
        for kind, status in {(j["kind"], j["status"]) for j in listed}:
            expected = sum(1 for j in listed if (j["kind"], j["status"]) == (kind, status))
            assert after.value("sorahook_jobs", kind=kind, status=status) == expected, (kind, status)
        assert after.value("sorahook_jobs", kind="video", status="completed") >= 1

        # deliveries_total{outcome}: finished deliveries only; delivery_attempts_total{outcome}: every attempt
        attempts = [a for d in succeeded + dead for a in d["attempts"]]
        assert moved("sorahook_deliveries_total", outcome="delivered") == len(succeeded)
        assert moved("sorahook_deliveries_total", outcome="dead") == len(dead)
        assert moved("sorahook_deliveries_total") == len(succeeded) + len(dead)
        assert moved("sorahook_delivery_attempts_total", outcome="succeeded") == len(succeeded)
        assert moved("sorahook_delivery_attempts_total", outcome="dead") == len(dead)
        assert moved("sorahook_delivery_attempts_total", outcome="failed") == sum(
            len(d["attempts"]) - 1 for d in dead
        )
        assert moved("sorahook_delivery_attempts_total") == len(attempts)
        # jobs_created_total{kind,model} and estimated_cost_usd_total{model}: the one job made through the API
        assert moved("sorahook_jobs_created_total", kind="video", model="sora-2") == 1
        assert moved("sorahook_jobs_created_total") == 1  # the webhook's job was not made through the API
        assert moved("sorahook_estimated_cost_usd_total", model="sora-2") == pytest.approx(0.4)
        assert all(len(d["attempts"]) == len(settings.retry_schedule) for d in dead)
        # delivery_attempt_duration_seconds: one observation per attempt
        assert moved("sorahook_delivery_attempt_duration_seconds_count") == len(attempts)
        assert moved("sorahook_delivery_attempt_duration_seconds_sum") > 0
        # event_to_delivery_seconds: one observation per successful delivery
        assert moved("sorahook_event_to_delivery_seconds_count") == len(succeeded)
        assert after.value("sorahook_event_to_delivery_seconds_bucket", le="+Inf") == len(succeeded)
        # delivery_backlog: nothing is waiting once everything settled
        assert after.value("sorahook_delivery_backlog") == 0

        # openai_requests_total{operation,status} and openai_request_duration_seconds{operation}
        assert moved("sorahook_openai_requests_total", operation="create_video", status="200") == 1
        assert moved("sorahook_openai_requests_total", operation="retrieve_video") >= 1
        for operation in after.label_values("sorahook_openai_requests_total", "operation"):
            assert moved("sorahook_openai_request_duration_seconds_count", operation=operation) == moved(
                "sorahook_openai_requests_total", operation=operation
            ), operation
        assert moved("sorahook_openai_request_duration_seconds_sum", operation="create_video") > 0

        # reconciliations_total{outcome} is exposed (it moves in the reconciler test below)
        assert "sorahook_reconciliations" in after.families

        assert_contract_families(after)
        assert_closed_labels(
            after,
            forbidden=[
                job_id,
                job["resource_id"],
                ok_sub["id"],
                down_sub["id"],
                sub_url,
                url,
                "video_metrics",
                *(d["id"] for d in succeeded + dead),
                *(d["event_id"] for d in succeeded + dead if "event_id" in d),
            ],
        )


async def test_delivery_backlog_counts_deliveries_waiting_and_drops_when_they_are_sent(
    tmp_path: Path,
) -> None:
    sub_server = Subscriber()
    sub_server.hanging.add("/slow")
    settings = make_settings(tmp_path)
    async with (
        live_server(sub_server.app()) as sub_url,
        live_server(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await _subscribe(client, f"{sub_url}/slow")
        for n in range(3):
            body, headers = signed_webhook(
                settings.webhook_secrets[0], "video.completed", f"video_backlog{n}"
            )
            assert (await _post_webhook(client, body, headers)).status_code == 200

        async def backlog() -> float:
            return (await scrape(client)).value("sorahook_delivery_backlog")

        assert await wait_until(backlog) == 3
        sub_server.release.set()

        async def drained() -> bool:
            return await backlog() == 0

        await wait_until(drained)
        scraped = await scrape(client)
        assert scraped.value("sorahook_deliveries_total", outcome="delivered") == 3
        assert scraped.value("sorahook_delivery_attempts_total", outcome="succeeded") == 3


async def test_reconciler_catching_a_missed_webhook_counts_updated(tmp_path: Path) -> None:
    async with (
        emulated_service(
            tmp_path, emulator_options={"drop_rate": 1.0}, reconcile_interval=0.2, reconcile_after=0.5
        ) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        created = await client.post("/v1/jobs", json={"prompt": "no webhook for me"}, headers=auth())
        assert created.status_code == 202
        job_id = created.json()["id"]

        async def completed() -> bool:
            return (await get_job(client, job_id))["status"] == "completed"

        await wait_until(completed, timeout=20)

        async def counted() -> Scrape | None:
            scraped = await scrape(client)
            return (
                scraped if scraped.value("sorahook_reconciliations_total", outcome="updated") >= 1 else None
            )

        scraped = await wait_until(counted)
        assert scraped.value("sorahook_webhooks_received_total") == 0, "the emulator dropped every webhook"
        assert scraped.value("sorahook_reconcile_pass_openai_calls_count") >= 1
        assert scraped.value("sorahook_openai_requests_total", operation="retrieve_video") >= 1
        assert_closed_labels(scraped, forbidden=[job_id])


async def test_job_duration_is_observed_when_a_job_reaches_a_terminal_state(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path) as (url, _emulator, _settings),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        created = await client.post("/v1/jobs", json={"prompt": "how long did I take"}, headers=auth())
        job_id = created.json()["id"]

        async def completed() -> bool:
            return (await get_job(client, job_id))["status"] == "completed"

        await wait_until(completed, timeout=20)
        scraped = await scrape(client)
        assert scraped.families["sorahook_job_duration_seconds"].type == "histogram"
        assert scraped.value("sorahook_job_duration_seconds_count", kind="video", status="completed") == 1
        assert scraped.value("sorahook_job_duration_seconds_sum", kind="video", status="completed") > 0


# --- health, readiness and request ids ---------------------------------------------------------------------


async def test_healthz_readyz_and_a_worker_dying_makes_readyz_503(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        # /healthz and /readyz need no token, like /metrics
        assert (await client.get("/metrics")).status_code == 200

        runtime = app.state.runtime
        assert runtime.tasks, "the workers run"
        name, task = next(iter(runtime.tasks.items()))
        task.cancel()

        async def unready() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == 503 else None

        response = await wait_until(unready)
        assert name in response.text
        assert (await client.get("/healthz")).status_code == 200, "liveness does not depend on workers"


async def test_every_response_carries_a_request_id_and_the_callers_is_echoed(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        responses = [
            await client.get("/healthz"),
            await client.get("/readyz"),
            await client.get("/metrics"),
            await client.get("/no/such/route"),
            await client.delete("/healthz"),
            await client.get("/v1/jobs"),
            await client.get("/v1/jobs", headers=auth()),
            await client.post("/webhooks/openai", content=b"{}"),
        ]
        assert [r.status_code for r in responses] == [200, 200, 200, 404, 405, 401, 200, 400]
        ids = [r.headers.get("x-request-id") for r in responses]
        assert all(ids), ids
        assert len(set(ids)) == len(ids), "generated request ids are unique"
        for path, method in (("/healthz", "GET"), ("/v1/jobs", "GET"), ("/webhooks/openai", "POST")):
            mine = f"trace-{method.lower()}-{path.strip('/').replace('/', '-')}"
            response = await client.request(method, path, headers={"x-request-id": mine})
            assert response.headers["x-request-id"] == mine, path
            assert response.headers.get_list("x-request-id") == [mine], "exactly one request id"


# --- one registry per app ------------------------------------------------------------------------------------


async def test_two_apps_in_one_process_keep_independent_registries(tmp_path: Path) -> None:
    first_settings = make_settings(tmp_path / "a")
    second_settings = make_settings(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = create_app(first_settings), create_app(second_settings)
    first_registry = first.state.runtime.metrics.registry
    second_registry = second.state.runtime.metrics.registry
    assert first_registry is not second_registry
    assert prometheus_client.REGISTRY not in (first_registry, second_registry)
    async with (
        live_server(first) as first_url,
        live_server(second) as second_url,
        httpx.AsyncClient(base_url=first_url) as a,
        httpx.AsyncClient(base_url=second_url) as b,
    ):
        for _ in range(2):
            body, headers = signed_webhook(new_webhook_secret(), "video.completed", "video_registry")
            assert (await _post_webhook(a, body, headers)).status_code == 401
        body, headers = signed_webhook(
            second_settings.webhook_secrets[0], "video.completed", "video_registry"
        )
        assert (await _post_webhook(b, body, headers)).status_code == 200

        scraped_a, scraped_b = await scrape(a), await scrape(b)
        assert scraped_a.value("sorahook_webhook_rejections_total", reason="invalid_signature") == 2
        assert scraped_b.value("sorahook_webhook_rejections_total") == 0
        assert scraped_a.value("sorahook_webhooks_received_total") == 0
        assert scraped_b.value("sorahook_webhooks_received_total", outcome="accepted") == 1
        assert_contract_families(scraped_a)
        assert_contract_families(scraped_b)
    # nothing of sorahook's lands on the process-wide default registry
    default_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not {n for n in default_names if n.startswith("sorahook_")}


async def test_process_and_python_collectors_and_api_job_counters_are_on_the_apps_registry(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, models=("sora-2", "sora-2-pro", "wan-2.5"))
    app = create_app(settings, start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=auth()) as client:
        await client.post("/v1/jobs", json={"prompt": "a", "model": "sora-2-pro", "size": "1792x1024"})
        await client.post("/v1/jobs", json={"prompt": "b", "model": "wan-2.5"})
        await client.post("/v1/jobs/track", json={"resource_id": "batch_abc"})
        await client.post("/v1/jobs/track", json={"resource_id": "batch_abc"})  # already tracked: not new
        replay = {"Idempotency-Key": "k"}
        await client.post("/v1/jobs", json={"prompt": "c", "seconds": 8}, headers=replay)
        await client.post("/v1/jobs", json={"prompt": "c", "seconds": 8}, headers=replay)  # replayed: not new
        scraped = await scrape(client)
    assert scraped.value("python_info") == 1
    assert "python_gc_objects_collected" in scraped.families
    assert scraped.value("process_resident_memory_bytes") > 0 and "process_cpu_seconds" in scraped.families
    created = "sorahook_jobs_created_total"
    assert scraped.value(created, kind="video", model="sora-2-pro") == 1
    assert scraped.value(created, kind="video", model="wan-2.5") == 1  # a configured model is its own label
    assert scraped.value(created, kind="video", model="sora-2") == 1
    assert scraped.value(created, kind="batch", model="other") == 1
    assert scraped.value(created) == 4
    cost = "sorahook_estimated_cost_usd_total"
    assert scraped.value(cost, model="sora-2-pro") == 2.0 and scraped.value(cost, model="sora-2") == 0.8
    assert scraped.value(cost) == 2.8  # wan-2.5 has no price: nothing added
    assert scraped.value("sorahook_subscriptions", state="enabled") == 0
    for name in (created, cost):  # the configured models and "other": a closed set
        assert scraped.label_values(name, "model") == {*settings.models, "other"}
