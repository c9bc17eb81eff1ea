"""The store's named operations: what the receiver, the workers, the API and the console may ask of it.

Each protocol is one concern; `Store` is all of them, which is what a backend provides and what
`open_store` returns. Code outside `service/store/` depends on these protocols (and the records in
`service.store.records`), never on a backend's class, so a second backend is a new package beside
`sqlite/` that passes the contract suite in `tests/contract/`.

Every write is one transaction of the backend; nothing here says how it is batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from service.domain import Kind, Observation
from service.domain.quotas import NewJob, Quotas
from service.store.records import (
    Archive,
    Attempt,
    ClaimedArchive,
    ClaimedDelivery,
    Delivery,
    DeliveryOutcome,
    DeliveryStatus,
    EventRecord,
    IncomingWebhook,
    Job,
    Subscription,
    WebhookOutcome,
)


@dataclass
class Signals:
    """Set after a commit that gave a worker something to do, so workers need not poll tightly."""

    deliveries: asyncio.Event
    submissions: asyncio.Event
    refreshes: asyncio.Event
    inbox: asyncio.Event  # a webhook was acknowledged: the processor has work


class StoreUnavailable(Exception):
    """The database cannot be reached (or went away mid-transaction): nothing was written.

    The app answers it with 503 `store_unavailable`, so OpenAI retries a webhook instead of
    being told it was stored.
    """


if TYPE_CHECKING:
    from service.secretbox import SecretBox


class StoreOptions(TypedDict, total=False):
    """What a backend is opened with besides its location and clock (each backend's constructor holds the
    defaults): the delivery backoff, the secret that signs job callbacks, how long a subscription may fail
    before it is disabled, and the box that seals subscription secrets."""

    retry_schedule: tuple[float, ...]
    callback_secret: str | None
    disable_after: float
    box: SecretBox | None
    pool_size: int  # PostgreSQL: connections this process keeps open
    statement_timeout: float  # PostgreSQL: seconds before a statement is cancelled


class StoreLifecycle(Protocol):
    """Health, wake-ups and closing: what the app's lifespan and the workers' idle loops use."""

    signals: Signals
    # Called after a commit for each job that reached a terminal state: (kind, status, seconds).
    on_job_finished: Callable[[str, str, float], None] | None

    async def ping(self) -> bool:
        """True when the store answers a read and its writer is running."""

    async def aclose(self) -> None:
        """Finish the writes already accepted, then close."""

    async def hold_singleton(self, name: str) -> bool:
        """True while this process may run the one-at-a-time worker `name` (the reconciler, the pruner).

        Replicas on one database take turns: the holder keeps it until it dies, then another takes it.
        """


class InboxStore(Protocol):
    """Verified webhooks as they arrive, and the processor's way through them."""

    async def enqueue_webhook(self, hook: IncomingWebhook) -> WebhookOutcome:
        """Acknowledge a verified webhook: its dedupe key and inbox row, committed; nothing else.

        `duplicate` when its webhook id was seen before. `signals.inbox` is set after the commit.
        """

    async def process_inbox(self, limit: int) -> list[float]:
        """Apply up to `limit` of the oldest acknowledged webhooks, in received order, through the
        planner (job, timeline, outbox and archive rows in one transaction); their received times."""

    async def inbox_depth(self) -> int:
        """Webhooks acknowledged but not yet applied."""

    async def record_webhook(self, hook: IncomingWebhook) -> WebhookOutcome:
        """Acknowledge and apply a webhook in one transaction (for callers that need the job at once)."""

    async def count_received(self) -> int:
        """How many distinct webhooks have been recorded."""


class JobStore(Protocol):
    """Jobs: reads, tracking, the submitter's and refresher's claims, reconciliation, progress."""

    async def get_job(self, key: str) -> Job | None: ...

    async def list_jobs(
        self,
        *,
        status: str | None,
        kind: str | None,
        limit: int,
        after: str | None,
        before: str | None = None,
        order: str = "desc",
        metadata: tuple[str, str] | None = None,
    ) -> tuple[list[Job], bool]:
        """A page of jobs in id (creation) order, `desc` newest first; `after` and `before` are ids."""

    async def job_events(self, job_id: str) -> list[EventRecord]: ...

    async def track_job(
        self, *, kind: Kind, resource_id: str, callback_url: str | None, metadata: dict[str, str]
    ) -> tuple[Job, bool]:
        """Track a resource made elsewhere; (job, created). A new job is refreshed from OpenAI at once."""

    async def apply_observation(self, job_id: str, obs: Observation, source: str) -> Job | None:
        """The shared entry point for the submitter, the refresher, the reconciler and cancellation."""

    async def claim_submissions(self, limit: int, lease: float) -> list[Job]: ...

    async def submission_succeeded(self, job_id: str, obs: Observation) -> Job | None: ...

    async def submission_retry(self, job_id: str, at: float) -> None: ...

    async def next_submission_at(self) -> float | None: ...

    async def claim_refreshes(self, limit: int, lease: float) -> list[Job]: ...

    async def refresh_done(
        self, job_id: str, obs: Observation | None, source: str = "refresh"
    ) -> Job | None: ...

    async def refresh_retry(self, job_id: str, delay: float, max_attempts: int) -> None: ...

    async def defer_refreshes(self, job_ids: list[str], at: float) -> None: ...

    async def next_refresh_at(self) -> float | None: ...

    async def stale_jobs(self, older_than: float, limit: int) -> list[Job]:
        """Non-terminal jobs with a resource id, not updated since `older_than`, whose backoff has passed."""

    async def reconciled(
        self, results: list[tuple[str, Observation]], *, base_delay: float, cap: float
    ) -> list[tuple[str, str]]:
        """Apply what the reconciler learned, through the webhook's path; (job_id, outcome) per job applied."""

    async def expire_videos(self, limit: int = 500) -> list[Job]:
        """Announce `video.expired` once for each completed video whose `result.expires_at` has passed."""

    async def progress_candidates(self, limit: int = 1000) -> list[Job]:
        """Submitted videos not yet finished, oldest first (a scan of the small partial jobs_stale index)."""

    async def record_progress(self, learned: list[tuple[str, Observation]], step: int) -> list[Job]:
        """Apply polled video objects; emit `video.progress` for jobs whose progress moved `step` points."""


class JobRequestStore(Protocol):
    """Jobs made through the API: idempotent creation under quotas, and usage."""

    async def create_job(
        self,
        *,
        request: dict[str, Any],
        callback_url: str | None,
        metadata: dict[str, str],
        idempotency_key: str | None,
    ) -> tuple[Job, bool]:
        """One `pending` video job with no quota to check, through the API's own path (`create_api_jobs`)."""

    async def create_api_jobs(
        self,
        jobs: list[NewJob],
        *,
        quotas: Quotas,
        idempotency_key: str | None = None,
        batch: bool = False,
        request_hash: str | None = None,
    ) -> tuple[list[Job], bool]:
        """Store new `pending` video jobs, all or none, in one transaction with the quota checks."""

    async def usage(self, *, since: float | None, until: float | None, client_key: str) -> dict[str, Any]:
        """Estimated cost and job counts of the jobs created in [since, until), by model, status and client."""


class SubscriptionStore(Protocol):
    """Subscriptions: create, read, update, rotate secrets, test and replay."""

    async def create_subscription(
        self, *, url: str, event_types: list[str] | None, description: str | None, secret: str, ordered: bool
    ) -> Subscription: ...

    async def get_subscription(self, sub_id: str) -> Subscription | None: ...

    async def list_subscriptions(
        self, limit: int | None = None, after: str | None = None
    ) -> list[Subscription]:
        """Subscriptions oldest first (ids sort by creation), those after `after`, at most `limit`."""

    async def update_subscription(self, sub_id: str, changes: dict[str, Any]) -> Subscription | None: ...

    async def delete_subscription(self, sub_id: str) -> bool: ...

    async def rotate_secret(self, sub_id: str, new_secret: str, overlap: float) -> Subscription | None: ...

    async def enqueue_test(self, sub_id: str) -> str | None: ...

    async def replay(
        self, sub_id: str, since: float, chunk: int = 1000, *, until: float | None = None
    ) -> int | None:
        """Enqueue again, for this subscription, every emitted event since `since` that matches its filter."""


class DeliveryStore(Protocol):
    """The outbox: claim due deliveries, record attempts, list and retry."""

    async def claim_deliveries(
        self,
        limit: int,
        lease: float,
        busy: Iterable[str] = (),
        per_key: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries; `busy` keys are skipped, `room(key)` caps a key's take."""

    async def release_deliveries(self, delivery_ids: list[str]) -> None:
        """Give claimed-but-unsent deliveries back: due again now, no attempt counted."""

    async def record_attempts(self, outcomes: list[DeliveryOutcome]) -> list[tuple[str, DeliveryStatus]]: ...

    async def next_delivery_at(self) -> float | None: ...

    async def delivery_backlog(self) -> int: ...

    async def list_deliveries(
        self,
        *,
        subscription_id: str | None,
        job_id: str | None,
        status: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[Delivery], bool]: ...

    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    async def retry_delivery(self, delivery_id: str) -> str | None:
        """Make a dead or failed delivery due now on a fresh schedule; returns its previous status or None."""

    async def retry_dead_deliveries(
        self, *, subscription_id: str | None, since: float | None, chunk: int = 1000
    ) -> int:
        """Retry every dead delivery of a subscription and/or made since `since`; returns how many."""


class ArchiveStore(Protocol):
    """Archive work: which finished videos' assets to copy to storage, and how it went."""

    async def configure_archive(self, variants: tuple[str, ...]) -> None:
        """Archive these variants of every video that completes from now on (none: archiving is off)."""

    async def claim_archives(
        self, limit: int, lease: float, busy: Iterable[tuple[str, str]] = ()
    ) -> list[ClaimedArchive]:
        """Lease due archive rows (oldest due first); rows in `busy` (still being copied here) are skipped."""

    async def archive_retry(self, job_id: str, variant: str, at: float, error: str) -> None: ...

    async def archive_stored(
        self,
        job_id: str,
        variant: str,
        *,
        key: str,
        uri: str,
        size: int,
        sha256: str,
        content_type: str | None,
    ) -> Job | None:
        """Record a stored asset and merge it into `result.assets`; the last one emits `video.archived`."""

    async def archive_failed(self, job_id: str, variant: str, error: str) -> Job | None:
        """Give up on an asset: `result.assets[variant]` says `archive_failed` and why."""

    async def get_archive(self, job_id: str, variant: str) -> Archive | None: ...

    async def list_archives(self, job_id: str | None = None) -> list[Archive]: ...

    async def next_archive_at(self) -> float | None: ...


class RetentionStore(Protocol):
    """Deleting old history in small batches."""

    async def prune(self, older_than: float, batch: int = 500) -> int:
        """Delete one small batch of old history; jobs are kept. Returns how many rows went."""


class ConsoleStore(Protocol):
    """Counts for /metrics and the reads behind the operator console."""

    async def job_counts(self) -> list[tuple[str, str, int]]: ...

    async def subscription_counts(self) -> tuple[int, int]:
        """(enabled, disabled) subscriptions: few rows, counted at scrape time."""

    async def jobs_by_idempotency_key(self, key: str) -> list[Job]:
        """The job one POST /v1/jobs made under `key`, or every job of the batch made under it."""

    async def find_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        origin: str | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        metadata: tuple[str, str] | None = None,
        limit: int,
        after: str | None = None,
    ) -> tuple[list[Job], bool]:
        """list_jobs with the console's further filters: origin, a created range and one metadata key=value."""

    async def console_counts(self, since: float) -> dict[str, int]:
        """Webhooks received since `since` and deliveries waiting or dead: each an index range count."""

    async def subscription_attempts(self, sub_id: str, since: float, limit: int = 10_000) -> list[Attempt]:
        """The subscription's delivery attempts since `since`, newest first (for its success rate and latency)."""


class Store(
    StoreLifecycle,
    InboxStore,
    JobStore,
    JobRequestStore,
    SubscriptionStore,
    DeliveryStore,
    ArchiveStore,
    RetentionStore,
    ConsoleStore,
    Protocol,
):
    """Every operation: what a backend provides and `open_store` returns."""
