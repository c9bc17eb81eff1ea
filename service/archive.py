"""The archiver: copies each completed video's assets to storage before OpenAI's download links expire.

Work lives in the store (`archives`, one row per job and variant, written in the transaction that completes
the video), so it survives restarts. One step claims due rows with a lease, streams each asset from OpenAI
into storage while hashing it (SHA-256 and size, checked against Content-Length), and records the result.

When to give up (the asset ends `archive_failed`, with the reason in `result.assets[variant].error`):

- `result.expires_at` has passed, or OpenAI answers 410: the links expired (`expired`);
- OpenAI answers 404: it does not know the video (`not_found`);
- another 4xx, `not_ready_attempts` times: a `video.completed` webhook can reach us a moment before the
  asset is served, so a 4xx is retried briefly before it counts as a refusal (`refused`);
- 429, 5xx, network, storage or length errors are retried with backoff until `max_attempts`
  (`retries_exhausted`) or until `expires_at`, whichever comes first.

`result.expires_at` is filled in by the refresher a moment after the completed webhook; until then the
archiver relies on OpenAI's own 410, so it never waits for the refresher.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from service.clock import Clock
from service.domain.retry import backoff
from service.errors import OpenAIError, PermanentOpenAIError
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.storage import Storage, StorageError
from service.store.protocol import Store
from service.store.records import ClaimedArchive
from service.workers import loop_forever, wait_for_signal

log = logging.getLogger("sorahook.archive")

EXTENSIONS = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/png": "png",
}
DEFAULT_EXTENSIONS = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpg"}


class IncompleteDownload(Exception):
    """The body ended before (or went past) the Content-Length OpenAI announced."""


def storage_key(job_id: str, variant: str, content_type: str | None) -> str:
    extension = EXTENSIONS.get(content_type or "") or DEFAULT_EXTENSIONS.get(variant, "bin")
    return f"{job_id}/{variant}.{extension}"


class Archiver:
    name = "archiver"

    def __init__(
        self,
        *,
        store: Store,
        openai: OpenAIClient,
        storage: Storage,
        clock: Clock,
        metrics: Metrics,
        concurrency: int = 4,
        lease: float = 900.0,
        max_attempts: int = 20,
        not_ready_attempts: int = 6,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        idle_wait: float = 5.0,
    ) -> None:
        self.store, self.openai, self.storage = store, openai, storage
        self.clock, self.metrics = clock, metrics
        self.concurrency, self.lease = concurrency, lease
        self.max_attempts, self.not_ready_attempts = max_attempts, not_ready_attempts
        self.backoff_base, self.backoff_cap, self.idle_wait = backoff_base, backoff_cap, idle_wait
        self._wake = asyncio.Event()
        self._active: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[str]] = set()

    def wake_on_completion(
        self, previous: Callable[[str, str, float], None] | None
    ) -> Callable[[str, str, float], None]:
        """A `store.on_job_finished` hook that also wakes this worker when a video completes."""

        def hook(kind: str, status: str, seconds: float) -> None:
            if previous is not None:
                previous(kind, status, seconds)
            if kind == "video" and status == "completed":
                self._wake.set()

        return hook

    # -- one step -----------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim what is due and archive it, waiting for every copy (tests and benchmarks)."""
        claimed = await self.store.claim_archives(self.concurrency, self.lease, self._active)
        if claimed:
            await asyncio.gather(*(self.archive(item) for item in claimed))
        return len(claimed)

    async def archive(self, item: ClaimedArchive) -> str:
        """Copy one asset; returns "stored", "retry" or "failed"."""
        if item.resource_id is None:
            return await self._fail(item, "not_found", "the job has no OpenAI video id")
        if item.expires_at is not None and self.clock.now() >= item.expires_at:
            return await self._fail(
                item, "expired", f"OpenAI's download links expired at {int(item.expires_at)} before the copy"
            )
        try:
            await self._copy(item, item.resource_id)
        except PermanentOpenAIError as exc:
            if exc.status == 410 or exc.code == "video_expired":
                return await self._fail(item, "expired", f"OpenAI no longer serves the asset: {exc.message}")
            if exc.status == 404:
                return await self._fail(item, "not_found", f"OpenAI does not know the video: {exc.message}")
            if item.attempts >= self.not_ready_attempts:
                return await self._fail(
                    item, "refused", f"OpenAI refused the download {item.attempts} times: {exc.message}"
                )
            return await self._retry(item, f"OpenAI answered {exc.status}: {exc.message}", cap=30.0)
        except (OpenAIError, StorageError, IncompleteDownload) as exc:
            message = exc.message if isinstance(exc, OpenAIError) else str(exc)
            if item.attempts >= self.max_attempts:
                return await self._fail(
                    item, "retries_exhausted", f"gave up after {item.attempts} attempts: {message}"
                )
            wait = exc.retry_after if isinstance(exc, OpenAIError) else None
            return await self._retry(item, message, at_least=wait)
        return "stored"

    async def _copy(self, item: ClaimedArchive, resource_id: str) -> None:
        async with self.openai.download_content(resource_id, item.variant) as response:
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
            expected: int | None = None
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding == "identity" and response.headers.get("content-length", "").isdigit():
                expected = int(response.headers["content-length"])
            key = storage_key(item.job_id, item.variant, content_type)
            digest = hashlib.sha256()
            size = 0
            async with self.storage.open_writer(key, content_type) as writer:
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
                    if expected is not None and size > expected:
                        raise IncompleteDownload(f"the body is longer than its Content-Length {expected}")
                    await writer.write(chunk)
                if expected is not None and size != expected:
                    raise IncompleteDownload(f"the body ended at {size} of {expected} bytes")
                await writer.commit()
        await self.store.archive_stored(
            item.job_id,
            item.variant,
            key=key,
            uri=self.storage.uri(key),
            size=size,
            sha256=digest.hexdigest(),
            content_type=content_type,
        )
        self.metrics.archive_bytes.inc(size)
        self.metrics.archive_lag.observe(max(0.0, self.clock.now() - item.created_at))
        log.info("asset archived", extra={"job_id": item.job_id, "variant": item.variant, "size": size})

    async def _retry(
        self, item: ClaimedArchive, message: str, *, cap: float | None = None, at_least: float | None = None
    ) -> str:
        delay = backoff(
            item.attempts - 1, base=self.backoff_base, cap=min(cap or self.backoff_cap, self.backoff_cap)
        )
        if at_least is not None:
            delay = max(delay, at_least)
        at = self.clock.now() + delay
        if item.expires_at is not None:
            at = min(at, item.expires_at)  # the next claim then gives up at once
        log.info(
            "archive will be retried",
            extra={
                "job_id": item.job_id,
                "variant": item.variant,
                "delay": round(delay, 2),
                "error": message,
            },
        )
        await self.store.archive_retry(item.job_id, item.variant, at, message)
        return "retry"

    async def _fail(self, item: ClaimedArchive, reason: str, message: str) -> str:
        log.warning(
            "archive failed", extra={"job_id": item.job_id, "variant": item.variant, "reason": reason}
        )
        await self.store.archive_failed(item.job_id, item.variant, message)
        self.metrics.archive_failures.labels(reason=reason).inc()
        return "failed"

    # -- the loop -----------------------------------------------------------------------------------

    def _start(self, item: ClaimedArchive) -> None:
        key = (item.job_id, item.variant)
        self._active.add(key)

        async def work() -> str:
            try:
                return await self.archive(item)
            finally:
                self._active.discard(key)
                self._wake.set()  # a slot is free: claim more

        task = asyncio.create_task(work(), name=f"sorahook-archive-{item.job_id}-{item.variant}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[str]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The row keeps its lease and is tried again when it runs out (or at the next start).
            log.error("archive task crashed", exc_info=task.exception())

    async def _step(self) -> None:
        free = self.concurrency - len(self._tasks)
        if free > 0:
            claimed = await self.store.claim_archives(free, self.lease, self._active)
            for item in claimed:
                self._start(item)
            if claimed and len(self._tasks) < self.concurrency:
                return
        next_at = await self.store.next_archive_at()
        wait = self.idle_wait if next_at is None else min(self.idle_wait, next_at - self.clock.now())
        if wait <= 0:
            wait = (
                self.idle_wait
            )  # due rows are all busy here or every slot is taken: a finished copy wakes us
        await wait_for_signal(self._wake, wait)

    async def run(self) -> None:
        try:
            await self.storage.prepare()
        except Exception:
            log.exception("could not clear unfinished archive files; going on")
        try:
            await loop_forever(self.name, self._step)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
