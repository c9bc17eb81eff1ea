"""The emulator's videos: its configuration, and each video's lifecycle computed from the clock.

A video is ``queued`` for the first 10% of ``duration``, then ``in_progress`` with ``progress`` rising
linearly from 0 to 99, and at ``duration`` it is ``completed`` (progress 100, ``completed_at``,
``expires_at = completed_at + asset_ttl``) or ``failed`` (``completed_at`` set, ``expires_at`` null,
progress stays 99, ``error = {"code": "video_generation_failed", ...}``). The state is computed from the
clock on every read, so ``GET`` and the ticker always agree.
"""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import dataclass
from typing import Any

from service.clock import Clock

SECONDS = ("4", "8", "12")
SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
DEFAULT_MODEL = "sora-2"
QUEUED_SHARE = 0.1
# Bounds on every knob, so no request (or setting) can make the emulator hold unbounded memory or time.
MAX_DURATION = 30 * 86_400.0  # seconds from creation to a video's final state
MAX_ASSET_TTL = 30 * 86_400.0
MAX_CONTENT_SIZE = 1 << 30  # bytes of the `video` asset
MAX_CONTENT_DELAY = 3600.0  # seconds per 64 KiB chunk
MAX_RECORDED = 10_000  # entries kept in `calls` and `webhooks_sent` (the oldest half goes beyond it)

# OpenAI's moderation categories (omni-moderation-latest), in the order its objects list them.
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


@dataclass(frozen=True)
class EmulatorConfig:
    webhook_url: str | None = None  # where signed webhooks go; None = send none
    webhook_secret: str | None = None  # whsec_...
    duration: float = 10.0  # seconds from creation to final state
    failure_rate: float = 0.0  # 0..1 share of videos that end failed
    drop_rate: float = 0.0  # 0..1 share of webhooks never sent
    duplicate_rate: float = 0.0  # 0..1 share of webhooks sent twice (same webhook-id)
    error_rate: float = 0.0  # 0..1 share of API requests answered 429 or 500/503 (random)
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <api_key>"
    api_keys: tuple[str, ...] = ()  # more valid keys (with api_key, any of them is accepted)
    moderation_flag_words: tuple[str, ...] = ("[flag]",)  # POST /v1/moderations flags inputs holding one
    moderation_category: str = "violence"  # the category a flagged input is flagged under
    seed: int | None = None  # random.Random seed
    asset_ttl: float = 3600.0  # expires_at = completed_at + asset_ttl
    content_size: int | None = None  # when set, the `video` asset is this many bytes (large downloads)
    content_delay: float = 0.0  # seconds paused before each 64 KiB chunk of a download (slow downloads)
    control_token: str | None = None  # when set, /_control/... need "Authorization: Bearer <control_token>"

    def __post_init__(self) -> None:
        for name in ("failure_rate", "drop_rate", "duplicate_rate", "error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name, most in (
            ("duration", MAX_DURATION),
            ("asset_ttl", MAX_ASSET_TTL),
            ("content_delay", MAX_CONTENT_DELAY),
        ):
            value = getattr(self, name)
            if not 0 <= value <= most:  # NaN fails this too
                raise ValueError(f"{name} must be between 0 and {most:g} seconds, got {value!r}")
        if self.content_size is not None and not 1 <= self.content_size <= MAX_CONTENT_SIZE:
            raise ValueError(
                f"content_size must be between 1 and {MAX_CONTENT_SIZE}, got {self.content_size!r}"
            )
        if self.moderation_category not in MODERATION_CATEGORIES:
            raise ValueError(f"moderation_category must be one of {MODERATION_CATEGORIES}")

    @property
    def valid_keys(self) -> tuple[str, ...]:
        return (*self.api_keys, *((self.api_key,) if self.api_key is not None else ()))


@dataclass
class VideoRecord:
    """What the emulator knows about a video beyond its public object."""

    id: str
    seq: int
    created: float
    model: str
    prompt: str
    seconds: str
    size: str
    remixed_from: str | None
    fails: bool
    deleted: bool = False
    announced: bool = False  # its final-state webhook has been scheduled (or dropped)


def record_bounded(entries: list[Any], entry: Any) -> None:
    """Append, keeping the newest MAX_RECORDED entries (the oldest half goes at once: O(1) amortised)."""
    if len(entries) >= MAX_RECORDED:
        del entries[: MAX_RECORDED // 2]
    entries.append(entry)


class ApiError(Exception):
    """An error the API answers in OpenAI's envelope (status, message, param, code)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class Videos:
    """Every video the emulator made, and the public object of each as of a time."""

    def __init__(self, config: EmulatorConfig, clock: Clock, rng: random.Random) -> None:
        self.config, self._clock, self._rng = config, clock, rng
        self._seq = itertools.count(1)
        self.records: dict[str, VideoRecord] = {}
        self.idempotency: dict[str, str] = {}
        self.objects: dict[str, dict[str, Any]] = {}  # the latest object computed for each live video

    def chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def refresh(self, record: VideoRecord, now: float) -> dict[str, Any]:
        """Compute the video object at ``now`` and keep it in ``objects``."""
        duration = self.config.duration
        elapsed = now - record.created
        completed_at: int | None = None
        expires_at: int | None = None
        error: dict[str, str] | None = None
        if elapsed >= duration:
            completed_at = int(record.created + duration)
            if record.fails:
                status, progress = "failed", 99
                error = {
                    "code": "video_generation_failed",
                    "message": "Video generation failed. Please try again.",
                }
            else:
                status, progress = "completed", 100
                expires_at = int(completed_at + self.config.asset_ttl)
        elif elapsed < duration * QUEUED_SHARE:
            status, progress = "queued", 0
        else:
            share = (elapsed - duration * QUEUED_SHARE) / (duration * (1 - QUEUED_SHARE))
            status, progress = "in_progress", max(0, min(99, int(99 * share)))
        video: dict[str, Any] = {
            "id": record.id,
            "object": "video",
            "model": record.model,
            "status": status,
            "progress": progress,
            "created_at": int(record.created),
            "completed_at": completed_at,
            "expires_at": expires_at,
            "prompt": record.prompt,
            "seconds": record.seconds,
            "size": record.size,
            "remixed_from_video_id": record.remixed_from,
            "error": error,
        }
        self.objects[record.id] = video
        return video

    def live(self, video_id: str) -> VideoRecord:
        record = self.records.get(video_id)
        if record is None or record.deleted:
            raise ApiError(404, f"Video with id '{video_id}' not found.", param="video_id", code="not_found")
        return record

    def create(
        self, *, prompt: str, model: str, seconds: str, size: str, remixed_from: str | None
    ) -> dict[str, Any]:
        if "[moderation]" in prompt:
            raise ApiError(
                400,
                "Your request was blocked by our moderation system.",
                param="prompt",
                code="moderation_blocked",
            )
        record = VideoRecord(
            id=f"video_{secrets.token_hex(24)}",
            seq=next(self._seq),
            created=self._clock.now(),
            model=model,
            prompt=prompt,
            seconds=seconds,
            size=size,
            remixed_from=remixed_from,
            fails="[fail]" in prompt or self.chance(self.config.failure_rate),
        )
        self.records[record.id] = record
        return self.refresh(record, record.created)

    def delete(self, record: VideoRecord) -> None:
        record.deleted = True
        self.objects.pop(record.id, None)

    def newly_final(self, now: float) -> list[tuple[VideoRecord, dict[str, Any]]]:
        """Videos that reached their final state since the last call, each marked announced."""
        final = []
        for record in list(self.records.values()):
            if record.deleted or record.announced:
                continue
            video = self.refresh(record, now)
            if video["status"] in ("completed", "failed"):
                record.announced = True
                final.append((record, video))
        return final

    def page(
        self, order: str, after: str | None, limit: int, now: float
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of live videos by creation (``order``), after the video ``after``; and whether more follow."""
        records = sorted(
            (r for r in self.records.values() if not r.deleted),
            key=lambda r: (int(r.created), r.seq),
            reverse=order == "desc",
        )
        if after:
            cursor = self.records.get(after)
            if cursor is None:
                raise ApiError(
                    400, f"Invalid 'after': no video with id {after!r}.", param="after", code="invalid_value"
                )
            cursor_key = (int(cursor.created), cursor.seq)
            records = [
                r
                for r in records
                if (
                    (int(r.created), r.seq) > cursor_key
                    if order == "asc"
                    else (int(r.created), r.seq) < cursor_key
                )
            ]
        return [self.refresh(r, now) for r in records[:limit]], len(records) > limit
