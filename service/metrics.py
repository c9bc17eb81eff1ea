"""Every Prometheus metric sorahook exposes, defined once on a registry the app owns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.domain import ERROR_CATEGORIES, EVENT_TYPES, KINDS
from service.models import DEFAULT_MODEL_TABLE, model_label

# Label values must come from closed sets: unknown event types are counted as "other".
_KNOWN_TYPES = frozenset(EVENT_TYPES) | {
    "video.queued",
    "video.in_progress",
    "video.cancelled",
    "video.expired",
    "video.archived",
    "video.archive_failed",
    "video.progress",
    "sorahook.test",
    "sorahook.subscription.disabled",
}

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SLOW = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400)
# Why an asset ended `archive_failed`: links expired (expires_at, 410), OpenAI does not know it (404), OpenAI
# kept refusing it (other 4xx), or transient failures outlasted the retries.
ARCHIVE_FAILURE_REASONS = ("expired", "not_found", "refused", "retries_exhausted")
# Why the OpenAI client moved to the next API key (a 401, or a 429 insufficient_quota). Not started at 0:
# a series appears with the first rotation.
KEY_ROTATION_REASONS = ("unauthorized", "insufficient_quota")
# Why the HTTP server closed or refused a connection before the app had a whole request (service/server.py).
CONNECTION_REFUSAL_REASONS = ("header_timeout", "body_timeout", "header_too_large", "too_many_connections")
# A finished delivery (deliveries_total) and one attempt's outcome (delivery_attempts_total): an attempt
# that fails with retries left is `failed`, the last failed one `dead`.
DELIVERY_RESULTS = ("delivered", "dead")
ATTEMPT_OUTCOMES = ("succeeded", "failed", "dead")


class _Snapshot(Collector):
    """A gauge family filled at scrape time from a cached snapshot (the store is async, scrapes are sync)."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: list[str],
        read: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ):
        self._name, self._doc, self._labels, self._read = name, doc, labels, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        for labels, value in self._read():
            family.add_metric(list(labels), value)
        yield family


class Metrics:
    def __init__(self, models: Sequence[str] = DEFAULT_MODEL_TABLE.names) -> None:
        """`models` are the model label's values (the configured models); any other model counts as "other"."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.models = frozenset(models)
        # The process (CPU, memory, open files) and Python (version, gc) collectors, on this registry only.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)  # exposes nothing where the interpreter keeps no gc stats
        self.webhooks_received = Counter(
            "sorahook_webhooks_received_total", "Verified webhooks received", ["type", "outcome"], registry=r
        )
        self.webhook_rejections = Counter(
            "sorahook_webhook_rejections_total", "Webhooks refused", ["reason"], registry=r
        )
        self.job_duration = Histogram(
            "sorahook_job_duration_seconds",
            "Time from job creation to a terminal state",
            ["kind", "status"],
            buckets=_SLOW,
            registry=r,
        )
        self.deliveries = Counter(
            "sorahook_deliveries_total",
            "Finished deliveries: delivered (a 2xx) or dead (attempts exhausted)",
            ["outcome"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            "sorahook_delivery_attempts_total",
            "Delivery attempts by outcome: succeeded, failed (to be retried) or dead (the last one failed)",
            ["outcome"],
            registry=r,
        )
        self.jobs_created = Counter(
            "sorahook_jobs_created_total",
            "Jobs created through the API (POST /v1/jobs, /v1/jobs/batch, /v1/jobs/track)",
            ["kind", "model"],
            registry=r,
        )
        self.estimated_cost = Counter(
            "sorahook_estimated_cost_usd_total",
            "Estimated USD of the video jobs created (the model table's price x seconds)",
            ["model"],
            registry=r,
        )
        self.openai_retries = Counter(
            "sorahook_openai_retries_total",
            "Requests to OpenAI sent again after a transient failure",
            ["operation"],
            registry=r,
        )
        self.openai_errors = Counter(
            "sorahook_openai_errors_total",
            "Failed requests to OpenAI (each attempt), by error category",
            ["operation", "category"],
            registry=r,
        )
        self.delivery_attempt_duration = Histogram(
            "sorahook_delivery_attempt_duration_seconds",
            "Duration of one delivery attempt",
            buckets=_FAST,
            registry=r,
        )
        self.event_to_delivery = Histogram(
            "sorahook_event_to_delivery_seconds",
            "Time from an event's creation to its successful delivery",
            buckets=(*_FAST, 60.0, 300.0, 1800.0, 7200.0),
            registry=r,
        )
        self.openai_requests = Counter(
            "sorahook_openai_requests_total", "Requests to OpenAI", ["operation", "status"], registry=r
        )
        self.openai_request_duration = Histogram(
            "sorahook_openai_request_duration_seconds",
            "Duration of requests to OpenAI",
            ["operation"],
            buckets=_FAST,
            registry=r,
        )
        self.reconciliations = Counter(
            "sorahook_reconciliations_total",
            "Jobs the reconciler checked, by outcome",
            ["outcome"],
            registry=r,
        )
        self.reconcile_calls = Histogram(
            "sorahook_reconcile_pass_openai_calls",
            "OpenAI calls one reconciliation pass made",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 150, 200, 500),
            registry=r,
        )
        self.key_rotations = Counter(
            "sorahook_openai_key_rotations_total",
            "Moves to the next OPENAI_API_KEY after one was refused",
            ["reason"],
            registry=r,
        )
        self.archive_bytes = Counter(
            "sorahook_archive_bytes_total", "Bytes of finished assets copied to storage", registry=r
        )
        self.archive_failures = Counter(
            "sorahook_archive_failures_total",
            "Assets given up as archive_failed, by reason",
            ["reason"],
            registry=r,
        )
        self.archive_lag = Histogram(
            "sorahook_archive_lag_seconds",
            "Time from a video's completion to its asset being stored",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
            registry=r,
        )
        self.connections_refused = Counter(
            "sorahook_connections_refused_total",
            "Connections the server closed or refused: slow or oversized request heads, stalled bodies,"
            " too many open connections",
            ["reason"],
            registry=r,
        )
        for reason in CONNECTION_REFUSAL_REASONS:
            self.connections_refused.labels(reason=reason)
        for reason in ARCHIVE_FAILURE_REASONS:
            self.archive_failures.labels(reason=reason)
        for reason in KEY_ROTATION_REASONS:
            self.key_rotations.labels(reason=reason)
        # Closed label sets start at 0, so a first increment after a restart is visible to increase().
        self._delivered, self._dead = (self.deliveries.labels(outcome=o) for o in DELIVERY_RESULTS)
        for outcome in ATTEMPT_OUTCOMES:
            self.delivery_attempts.labels(outcome=outcome)
        for model in (*sorted(self.models), "other"):
            self.estimated_cost.labels(model=model)
            self.jobs_created.labels(kind="video", model=model)
        for kind in KINDS:
            self.jobs_created.labels(kind=kind, model="other")
        for category in ERROR_CATEGORIES:
            self.openai_errors.labels(operation="create_video", category=category)
        for reason in (
            "missing_headers",
            "invalid_signature",
            "timestamp_out_of_tolerance",
            "invalid_payload",
            "body_too_large",
        ):
            self.webhook_rejections.labels(reason=reason)
        for outcome in ("updated", "unchanged", "not_found", "error"):
            self.reconciliations.labels(outcome=outcome)
        self._job_counts: list[tuple[tuple[str, ...], float]] = []
        self._backlog = 0.0
        r.register(
            _Snapshot(
                "sorahook_jobs", "Jobs by kind and status", ["kind", "status"], lambda: self._job_counts
            )
        )
        self._subscriptions: list[tuple[tuple[str, ...], float]] = [(("enabled",), 0.0), (("disabled",), 0.0)]
        r.register(
            _Snapshot(
                "sorahook_subscriptions",
                "Subscriptions by state: enabled, or disabled (by PATCH, a 410, or failing for SORAHOOK_DISABLE_AFTER)",
                ["state"],
                lambda: self._subscriptions,
            )
        )
        r.register(
            _Snapshot(
                "sorahook_delivery_backlog",
                "Deliveries waiting to be sent",
                [],
                lambda: [((), self._backlog)],
            )
        )

    def set_job_counts(self, counts: list[tuple[str, str, int]]) -> None:
        self._job_counts = [((kind, status), float(n)) for kind, status, n in counts]

    def set_subscription_counts(self, enabled: int, disabled: int) -> None:
        self._subscriptions = [(("enabled",), float(enabled)), (("disabled",), float(disabled))]

    def set_backlog(self, backlog: int) -> None:
        self._backlog = float(backlog)

    def model_label(self, model: str | None) -> str:
        return model_label(model, self.models)

    def count_created(self, kind: str, model: str | None, estimated_cost_usd: float | None) -> None:
        """A job created through the API; a video's estimated cost is added to its model's total."""
        label = self.model_label(model) if kind == "video" else "other"
        self.jobs_created.labels(kind=kind, model=label).inc()
        if estimated_cost_usd:
            self.estimated_cost.labels(model=label).inc(estimated_cost_usd)

    def count_finished(self, status: str) -> None:
        """After an attempt: a delivery that ended (succeeded or dead) is counted once in deliveries_total."""
        if status == "succeeded":
            self._delivered.inc()
        elif status == "dead":
            self._dead.inc()

    @staticmethod
    def event_type_label(event_type: str) -> str:
        return event_type if event_type in _KNOWN_TYPES else "other"

    @staticmethod
    def status_label(status: int | None) -> str:
        """HTTP status as a closed set: "200", "429", "5xx"-style classes for the rest, "error" for none."""
        if status is None:
            return "error"
        if status in (200, 201, 400, 401, 403, 404, 409, 429, 500, 502, 503):
            return str(status)
        return f"{status // 100}xx"
