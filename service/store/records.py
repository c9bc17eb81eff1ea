"""Plain records the store hands out: jobs, events, subscriptions, deliveries (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from service.domain import Kind, Origin, Status, categorized

DeliveryStatus = Literal["pending", "succeeded", "failed", "dead"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "succeeded", "failed", "dead")


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key came back with a different request body than the one it was first used with."""

    def __init__(self, key: str, job_ids: list[str]) -> None:
        super().__init__(key)
        self.key = key
        self.job_ids = job_ids


@dataclass(frozen=True)
class Job:
    id: str
    kind: Kind
    resource_id: str | None
    status: Status
    progress: int
    origin: Origin
    request: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    callback_url: str | None
    metadata: dict[str, str]
    created_at: float
    updated_at: float
    completed_at: int | None
    sequence: int
    submit_attempts: int = 0
    estimated_cost_usd: float | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "job",
            "kind": self.kind,
            "resource_id": self.resource_id,
            "status": self.status,
            "progress": self.progress,
            "origin": self.origin,
            "request": self.request,
            "estimated_cost_usd": self.estimated_cost_usd,
            "result": self.result,
            "error": categorized(self.error),
            "callback_url": self.callback_url,
            "metadata": self.metadata,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "completed_at": self.completed_at,
            "sequence": self.sequence,
        }


@dataclass(slots=True)
class IncomingWebhook:
    """A verified webhook, parsed enough to route it; `body` is the raw text as received.

    Slotted rather than frozen: one is built per request, and a frozen 8-field dataclass costs ~1 us
    more to build. Nothing changes one after the receiver hands it to the store.
    """

    webhook_id: str
    timestamp: int
    event_id: str
    type: str
    resource_id: str
    created_at: int | None
    body: str
    data: dict[str, Any]


@dataclass(frozen=True)
class WebhookOutcome:
    status: Literal["accepted", "duplicate"]
    job_id: str | None = None


@dataclass(frozen=True)
class EventRecord:
    id: str
    direction: Literal["received", "emitted"]
    type: str
    job_id: str | None
    source: str
    created_at: float
    body: str
    webhook_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        import json

        try:
            payload: Any = json.loads(self.body)
        except ValueError:
            payload = self.body
        return {
            "id": self.id,
            "object": "job.event",
            "direction": self.direction,
            "type": self.type,
            "source": self.source,
            "created_at": int(self.created_at),
            "webhook_id": self.webhook_id,
            "payload": payload,
        }


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    event_types: list[str] | None
    description: str | None
    secret: str
    previous_secret: str | None
    previous_secret_until: float | None
    enabled: bool
    ordered: bool
    disabled_reason: str | None
    created_at: float
    updated_at: float
    last_success_at: float | None
    failing_since: float | None

    def to_api(self, *, with_secret: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "subscription",
            "url": self.url,
            "event_types": self.event_types,
            "description": self.description,
            "enabled": self.enabled,
            "ordered": self.ordered,
            "disabled_reason": self.disabled_reason,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
        }
        if with_secret:
            out["secret"] = self.secret
        return out


@dataclass(frozen=True)
class Attempt:
    attempted_at: float
    status_code: int | None
    latency_ms: float
    error: str | None
    response_body: str | None = None  # the first 1 KiB of the answer, when there was one

    def to_api(self) -> dict[str, Any]:
        return {
            "attempted_at": int(self.attempted_at),
            "status_code": self.status_code,
            "latency_ms": round(self.latency_ms, 2),
            "error": self.error,
            "response_body": self.response_body,
        }


@dataclass(frozen=True)
class Delivery:
    id: str
    event_id: str
    event_type: str
    subscription_id: str | None
    job_id: str | None
    url: str | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    last_status_code: int | None
    last_error: str | None
    delivered_at: float | None
    attempt_log: list[Attempt] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "delivery",
            "event_id": self.event_id,
            "event_type": self.event_type,
            "subscription_id": self.subscription_id,
            "job_id": self.job_id,
            "target": "subscription" if self.subscription_id else "callback_url",
            "url": self.url,
            "status": self.status,
            "attempt_count": self.attempts,
            "next_attempt_at": int(self.next_attempt_at) if self.next_attempt_at is not None else None,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "delivered_at": int(self.delivered_at) if self.delivered_at is not None else None,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "attempts": [a.to_api() for a in self.attempt_log],
        }


@dataclass(slots=True)  # not frozen: one per delivery attempt, and a frozen __init__ costs 5x
class ClaimedDelivery:
    """A delivery leased to a worker, with everything needed to send it."""

    id: str
    event_id: str
    event_type: str
    subscription_id: str | None
    job_id: str | None
    url: str
    body: str
    secrets: list[str]
    attempts: int
    event_created_at: float
    ordered: bool

    @property
    def cap_key(self) -> str:
        """What the per-subscription cap counts against: the subscription, or the callback URL."""
        return self.subscription_id or self.url


# -- archive


ArchiveStatus = Literal["pending", "stored", "archive_failed"]


@dataclass(frozen=True)
class Archive:
    """One asset (a job's variant) the archiver copies to storage; `key` and the digest once stored."""

    job_id: str
    variant: str
    status: ArchiveStatus
    attempts: int
    next_attempt_at: float | None
    created_at: float
    size: int | None
    sha256: str | None
    uri: str | None
    key: str | None
    content_type: str | None
    stored_at: float | None
    error: str | None


@dataclass(frozen=True)
class ClaimedArchive:
    """An archive row leased to the archiver, with what it needs from the job."""

    job_id: str
    variant: str
    resource_id: str | None
    attempts: int
    created_at: float
    expires_at: float | None


@dataclass(slots=True)  # not frozen: one per delivery attempt, and a frozen __init__ costs 5x
class DeliveryOutcome:
    """What a delivery attempt did, as the delivery worker reports it to the store."""

    delivery_id: str
    status_code: int | None
    error: str | None
    latency: float
    retry_after: float | None = None
    response_body: str | None = None  # the start of the answer; the store keeps a bounded prefix
