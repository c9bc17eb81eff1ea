"""The OpenAI Videos API emulator: OpenAI's shapes and errors, a clock-driven lifecycle, signed webhooks.

Choices where OpenAI is silent or the emulator has to pick:

- A video is ``queued`` for the first 10% of ``duration``, then ``in_progress`` with ``progress`` rising
  linearly from 0 to 99, and at ``duration`` it is ``completed`` (progress 100, ``completed_at``,
  ``expires_at = completed_at + asset_ttl``) or ``failed`` (``completed_at`` set, ``expires_at`` null,
  progress stays 99, ``error = {"code": "video_generation_failed", ...}``). The state is computed from the
  clock on every read, so ``GET`` and the ticker always agree.
- ``GET /v1/videos/{id}/content`` answers 400 ``video_not_ready`` before completion (and for failed
  videos), 400 ``invalid_value`` for an unknown variant, and **410** ``video_expired`` once ``expires_at``
  has passed.
- Deleting works in any state; a video deleted before its final state sends no webhook.
- Remixing needs a completed source video (400 ``invalid_request`` otherwise).
- ``POST /v1/moderations`` (OpenAI's shape) flags an input that holds any of ``moderation_flag_words``, under
  ``moderation_category`` alone; every other input comes back unflagged.
- A webhook POST that fails (connection error, timeout or non-2xx) is retried on later ``run_once`` calls
  after 1, 5, 15 and 30 seconds of clock time, with the same ``webhook-id`` and a fresh signature, then
  given up. Retries never crash the ticker.
- Request faults apply in this order: queued faults from ``inject_fault`` (FIFO), then ``error_rate``,
  then the API key check. Control routes (``/_control/...``) are never counted or faulted; with
  ``control_token`` set (``serve --emulator`` sets the admin token) they need it as a bearer token.
- Every knob is bounded (``MAX_*`` below): a fault rule is one counter whatever its ``count``, and the
  ``calls`` / ``webhooks_sent`` records keep the latest ``MAX_RECORDED`` entries.
- The app's own lifespan starts the ticker (standalone ``sorahook emulator``). A parent app that mounts
  this one must run ``Emulator.run()`` itself, since Starlette does not run a mounted app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.clock import Clock, SystemClock
from service.emulator.assets import CONTENT

log = logging.getLogger(__name__)

SECONDS = ("4", "8", "12")
SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
DEFAULT_MODEL = "sora-2"
QUEUED_SHARE = 0.1
WEBHOOK_RETRY_DELAYS = (1.0, 5.0, 15.0, 30.0)
WEBHOOK_TIMEOUT = 10.0
# Bounds on every knob, so no request (or setting) can make the emulator hold unbounded memory or time.
MAX_FAULT_COUNT = 1_000_000  # requests one fault rule answers (a counter: O(1) memory whatever the count)
MAX_FAULT_RULES = 1_000  # fault rules queued at once
MAX_RETRY_AFTER = 3600.0  # seconds
MAX_DURATION = 30 * 86_400.0  # seconds from creation to a video's final state
MAX_ASSET_TTL = 30 * 86_400.0
MAX_CONTENT_SIZE = 1 << 30  # bytes of the `video` asset
MAX_CONTENT_DELAY = 3600.0  # seconds per 64 KiB chunk
MAX_TEXT = 256  # characters of a fault's code or path prefix
MAX_RECORDED = 10_000  # entries kept in `calls` and `webhooks_sent` (the oldest half goes beyond it)

Endpoint = Callable[[Request], Awaitable[Response]]

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
class _Record:
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


@dataclass
class _Delivery:
    webhook_id: str
    event_type: str
    video_id: str
    body: bytes
    next_at: float
    attempts: int = 0
    in_flight: bool = False


@dataclass
class _Fault:
    """One rule: answer the next `remaining` requests under `path_prefix` with `status`."""

    status: int
    retry_after: float | None
    code: str | None
    path_prefix: str
    remaining: int


class KnobOutOfRange(ValueError):
    """A control value outside its bounds (the control route answers 422)."""


def _record(entries: list[Any], entry: Any) -> None:
    """Append, keeping the newest MAX_RECORDED entries (the oldest half goes at once: O(1) amortised)."""
    if len(entries) >= MAX_RECORDED:
        del entries[: MAX_RECORDED // 2]
    entries.append(entry)


class _ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error envelope."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _fault_response(
    status: int, *, code: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = (
            str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
        )
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    if status == 429:
        code = code or "rate_limit_exceeded"
        type_ = "insufficient_quota" if code == "insufficient_quota" else "requests"
        message = (
            "You exceeded your current quota, please check your plan and billing details."
            if code == "insufficient_quota"
            else "Rate limit reached for requests. Please try again later."
        )
    elif status >= 500:
        code = code or "server_error"
        type_ = "server_error"
        message = (
            "The engine is currently overloaded, please try again later."
            if status == 503
            else "The server had an error while processing your request. Sorry about that!"
        )
    elif status == 401:
        code = code or "invalid_api_key"
        type_ = "invalid_request_error"
        message = "Incorrect API key provided."
    else:
        type_ = "invalid_request_error"
        message = f"Injected fault: HTTP {status}."
    return error_response(status, message, type_=type_, code=code, headers=headers)


def _route_path(request: Request) -> str:
    """The path relative to wherever this app is mounted."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class Emulator:
    """An in-memory OpenAI Videos API with knobs for failures, lost and duplicated webhooks and errors."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        clock: Clock | None = None,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._rng = random.Random(config.seed)
        self._seq = itertools.count(1)
        self._records: dict[str, _Record] = {}
        self._idempotency: dict[str, str] = {}
        self._faults: list[_Fault] = []
        self._outbox: list[_Delivery] = []
        self._signer = Webhook(config.webhook_secret) if config.webhook_secret else None
        self._http = httpx.AsyncClient(
            transport=webhook_transport, timeout=WEBHOOK_TIMEOUT, follow_redirects=False
        )
        self.calls: list[tuple[str, str]] = []
        self._large_video: bytes | None = None
        self.videos: dict[str, dict[str, Any]] = {}
        self.webhooks_sent: list[dict[str, Any]] = []
        self.webhooks_dropped: list[str] = []  # ids of videos whose webhook the drop_rate swallowed
        self.app = Starlette(
            routes=[
                Route("/v1/videos", self._api(self._create), methods=["POST"]),
                Route("/v1/videos", self._api(self._list), methods=["GET"]),
                Route("/v1/videos/{video_id}", self._api(self._retrieve), methods=["GET"]),
                Route("/v1/videos/{video_id}", self._api(self._delete), methods=["DELETE"]),
                Route("/v1/videos/{video_id}/content", self._api(self._content), methods=["GET"]),
                Route("/v1/videos/{video_id}/remix", self._api(self._remix), methods=["POST"]),
                Route("/v1/moderations", self._api(self._moderate), methods=["POST"]),
                Route("/_control/faults", self._control(self._control_faults), methods=["POST"]),
                Route("/_control/calls", self._control(self._control_calls), methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # --- public controls ---------------------------------------------------------------------------------

    def inject_fault(
        self,
        status: int,
        count: int = 1,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        path_prefix: str = "/v1/",
    ) -> None:
        """Answer the next ``count`` API requests under ``path_prefix`` with ``status`` (FIFO).

        Raises KnobOutOfRange for a value outside its bounds (one rule costs the same whatever ``count``).
        """
        if not 400 <= status <= 599:
            raise KnobOutOfRange(f"status must be an HTTP error status (400 to 599), got {status!r}")
        if not 1 <= count <= MAX_FAULT_COUNT:
            raise KnobOutOfRange(f"count must be between 1 and {MAX_FAULT_COUNT}, got {count!r}")
        if retry_after is not None and not 0 <= retry_after <= MAX_RETRY_AFTER:
            raise KnobOutOfRange(
                f"retry_after must be between 0 and {MAX_RETRY_AFTER:g}, got {retry_after!r}"
            )
        if code is not None and not 0 < len(code) <= MAX_TEXT:
            raise KnobOutOfRange(f"code must be 1 to {MAX_TEXT} characters")
        if not path_prefix.startswith("/") or len(path_prefix) > MAX_TEXT:
            raise KnobOutOfRange(f"path_prefix must start with / and be at most {MAX_TEXT} characters")
        if len(self._faults) >= MAX_FAULT_RULES:
            raise KnobOutOfRange(f"at most {MAX_FAULT_RULES} fault rules may be queued at once")
        self._faults.append(_Fault(status, retry_after, code, path_prefix, count))

    @property
    def pending_faults(self) -> int:
        """Requests the queued fault rules will still answer."""
        return sum(fault.remaining for fault in self._faults)

    async def run_once(self) -> None:
        """Move every video along the clock, schedule final-state webhooks and send the due ones."""
        now = self._clock.now()
        for record in list(self._records.values()):
            if record.deleted or record.announced:
                continue
            video = self._refresh(record, now)
            if video["status"] in ("completed", "failed"):
                record.announced = True
                self._schedule_webhook(record, video)
        due = [d for d in self._outbox if not d.in_flight and d.next_at <= now]
        for delivery in due:
            delivery.in_flight = True  # claimed before any await, so concurrent ticks never send it twice
        await asyncio.gather(*(self._attempt(delivery) for delivery in due))

    async def run(self, interval: float = 0.05) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("emulator tick failed")
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        await self._http.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.aclose()

    # --- lifecycle -----------------------------------------------------------------------------------------

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _refresh(self, record: _Record, now: float) -> dict[str, Any]:
        """Compute the video object at ``now`` and store it in ``videos``."""
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
        self.videos[record.id] = video
        return video

    def _live(self, video_id: str) -> _Record:
        record = self._records.get(video_id)
        if record is None or record.deleted:
            raise _ApiError(404, f"Video with id '{video_id}' not found.", param="video_id", code="not_found")
        return record

    def _new_video(
        self, *, prompt: str, model: str, seconds: str, size: str, remixed_from: str | None
    ) -> dict[str, Any]:
        if "[moderation]" in prompt:
            raise _ApiError(
                400,
                "Your request was blocked by our moderation system.",
                param="prompt",
                code="moderation_blocked",
            )
        record = _Record(
            id=f"video_{secrets.token_hex(24)}",
            seq=next(self._seq),
            created=self._clock.now(),
            model=model,
            prompt=prompt,
            seconds=seconds,
            size=size,
            remixed_from=remixed_from,
            fails="[fail]" in prompt or self._chance(self.config.failure_rate),
        )
        self._records[record.id] = record
        return self._refresh(record, record.created)

    # --- webhooks ------------------------------------------------------------------------------------------

    def _schedule_webhook(self, record: _Record, video: dict[str, Any]) -> None:
        if not self.config.webhook_url:
            return
        if self._chance(self.config.drop_rate):
            self.webhooks_dropped.append(record.id)
            log.info("emulator dropped the webhook for %s", record.id)
            return
        event_type = f"video.{video['status']}"
        event = {
            "id": f"evt_{secrets.token_hex(16)}",
            "object": "event",
            "created_at": int(self._clock.now()),
            "type": event_type,
            "data": {"id": record.id},
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        webhook_id = f"wh_{secrets.token_hex(16)}"
        copies = 2 if self._chance(self.config.duplicate_rate) else 1
        now = self._clock.now()
        self._outbox.extend(_Delivery(webhook_id, event_type, record.id, body, now) for _ in range(copies))

    async def _attempt(self, delivery: _Delivery) -> None:
        url = self.config.webhook_url
        assert url is not None
        timestamp = int(self._clock.now())
        headers = {
            "content-type": "application/json",
            "user-agent": "OpenAI/sorahook-emulator",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._signer is not None:
            when = datetime.fromtimestamp(timestamp, tz=UTC)
            headers["webhook-signature"] = self._signer.sign(
                delivery.webhook_id, when, delivery.body.decode()
            )
        status: int | None = None
        try:
            response = await self._http.post(url, content=delivery.body, headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            log.info("emulator webhook %s to %s failed: %r", delivery.webhook_id, url, exc)
        except Exception:
            log.exception("emulator webhook %s to %s failed", delivery.webhook_id, url)
        delivery.attempts += 1
        delivery.in_flight = False
        _record(
            self.webhooks_sent,
            {
                "webhook_id": delivery.webhook_id,
                "type": delivery.event_type,
                "video_id": delivery.video_id,
                "status_code": status,
            },
        )
        if status is not None and 200 <= status < 300:
            self._outbox.remove(delivery)
        elif delivery.attempts > len(WEBHOOK_RETRY_DELAYS):
            log.warning(
                "emulator gave up on webhook %s after %d attempts", delivery.webhook_id, delivery.attempts
            )
            self._outbox.remove(delivery)
        else:
            delivery.next_at = self._clock.now() + WEBHOOK_RETRY_DELAYS[delivery.attempts - 1]

    # --- request plumbing ------------------------------------------------------------------------------------

    def _api(self, handler: Endpoint) -> Endpoint:
        """Wrap an API route: record the call, apply faults and the API key, render ``_ApiError``."""

        async def endpoint(request: Request) -> Response:
            path = _route_path(request)
            _record(self.calls, (request.method, path))
            fault = self._take_fault(path)
            if fault is not None:
                return _fault_response(fault.status, code=fault.code, retry_after=fault.retry_after)
            if self._chance(self.config.error_rate):
                status = self._rng.choice((429, 500, 503))
                return _fault_response(status, retry_after=0 if status == 429 else None)
            if self.config.valid_keys:
                authorization = request.headers.get("authorization", "")
                if not authorization.startswith("Bearer "):
                    return error_response(
                        401,
                        "You didn't provide an API key. You need to provide your API key in an Authorization "
                        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    )
                given = authorization[7:].strip()
                if not any(secrets.compare_digest(given, key) for key in self.config.valid_keys):
                    return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
            try:
                response = await handler(request)
            except _ApiError as exc:
                response = error_response(exc.status, exc.message, param=exc.param, code=exc.code)
            response.headers["x-request-id"] = f"req_{secrets.token_hex(16)}"
            return response

        return endpoint

    def _take_fault(self, path: str) -> _Fault | None:
        for index, fault in enumerate(self._faults):
            if path.startswith(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[index]
                return fault
        return None

    def _control(self, handler: Endpoint) -> Endpoint:
        """Wrap a control route: with ``control_token`` set, it needs ``Authorization: Bearer <token>``."""
        expected = self.config.control_token

        async def endpoint(request: Request) -> Response:
            if expected is not None:
                scheme, _, given = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not secrets.compare_digest(
                    given.strip().encode(), expected.encode()
                ):
                    return error_response(
                        401,
                        "The emulator's control routes need Authorization: Bearer <admin token>.",
                        code="invalid_api_key",
                        headers={"www-authenticate": "Bearer"},
                    )
            return await handler(request)

        return endpoint

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        """The request's fields from multipart/form-data, urlencoded form or JSON."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            async with request.form() as form:
                fields: dict[str, Any] = {}
                for key, value in form.multi_items():
                    fields[key] = "<file>" if isinstance(value, UploadFile) else value
                return fields
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
            # A lone surrogate ("\ud800") parses but could never be encoded into an answer.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            raise _ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly.)",
            ) from None
        if not isinstance(data, dict):
            raise _ApiError(400, "The request body must be a JSON object.")
        return data

    @staticmethod
    def _prompt(fields: Mapping[str, Any]) -> str:
        prompt = fields.get("prompt")
        if prompt is None:
            raise _ApiError(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(
                400, "Invalid 'prompt': must be a non-empty string.", param="prompt", code="invalid_value"
            )
        return prompt

    # --- routes ------------------------------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if key and key in self._idempotency:
            record = self._records[self._idempotency[key]]
            return JSONResponse(self._refresh(record, self._clock.now()))
        fields = await self._body(request)
        prompt = self._prompt(fields)
        model = fields.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model.strip():
            raise _ApiError(
                400, "Invalid 'model': must be a non-empty string.", param="model", code="invalid_value"
            )
        seconds = fields.get("seconds", SECONDS[0])
        if isinstance(seconds, int) and not isinstance(seconds, bool):
            seconds = str(seconds)
        if seconds not in SECONDS:
            raise _ApiError(
                400,
                f"Invalid value: {seconds!r}. Supported values are: '4', '8', and '12'.",
                param="seconds",
                code="invalid_value",
            )
        size = fields.get("size", SIZES[0])
        if size not in SIZES:
            raise _ApiError(
                400,
                f"Invalid value: {size!r}. Supported values are: {', '.join(repr(s) for s in SIZES)}.",
                param="size",
                code="invalid_value",
            )
        video = self._new_video(prompt=prompt, model=model, seconds=seconds, size=size, remixed_from=None)
        if key:
            self._idempotency[key] = video["id"]
        return JSONResponse(video)

    async def _list(self, request: Request) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise _ApiError(
                400,
                "Invalid 'limit': must be an integer between 1 and 100.",
                param="limit",
                code="invalid_value",
            )
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _ApiError(
                400,
                f"Invalid value: {order!r}. Supported values are: 'asc' and 'desc'.",
                param="order",
                code="invalid_value",
            )
        records = sorted(
            (r for r in self._records.values() if not r.deleted),
            key=lambda r: (int(r.created), r.seq),
            reverse=order == "desc",
        )
        after = query.get("after")
        if after:
            cursor = self._records.get(after)
            if cursor is None:
                raise _ApiError(
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
        now = self._clock.now()
        page = [self._refresh(r, now) for r in records[:limit]]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(records) > limit,
            }
        )

    async def _retrieve(self, request: Request) -> Response:
        record = self._live(request.path_params["video_id"])
        return JSONResponse(self._refresh(record, self._clock.now()))

    async def _delete(self, request: Request) -> Response:
        record = self._live(request.path_params["video_id"])
        record.deleted = True
        self.videos.pop(record.id, None)
        return JSONResponse({"id": record.id, "object": "video.deleted", "deleted": True})

    async def _content(self, request: Request) -> Response:
        record = self._live(request.path_params["video_id"])
        variant = request.query_params.get("variant", "video")
        if variant not in CONTENT:
            raise _ApiError(
                400,
                f"Invalid value: {variant!r}. Supported values are: 'video', 'thumbnail', and 'spritesheet'.",
                param="variant",
                code="invalid_value",
            )
        now = self._clock.now()
        video = self._refresh(record, now)
        if video["status"] != "completed":
            raise _ApiError(
                400,
                f"Video is not ready yet; its status is {video['status']!r}.",
                code="video_not_ready",
            )
        if video["expires_at"] is not None and now >= video["expires_at"]:
            raise _ApiError(410, "The assets for this video have expired.", code="video_expired")
        data, media_type, extension = self.asset(variant)
        disposition = f'attachment; filename="{record.id}.{extension}"'
        if self.config.content_delay > 0:
            headers = {"content-disposition": disposition, "content-length": str(len(data))}
            return StreamingResponse(self._slowly(data), media_type=media_type, headers=headers)
        return Response(data, media_type=media_type, headers={"content-disposition": disposition})

    def asset(self, variant: str) -> tuple[bytes, str, str]:
        """The bytes, content type and extension a download of `variant` serves (``content_size`` applied)."""
        data, media_type, extension = CONTENT[variant]
        size = self.config.content_size
        if variant == "video" and size is not None:
            if self._large_video is None or len(self._large_video) != size:
                self._large_video = (data * (size // len(data) + 1))[:size]
            data = self._large_video
        return data, media_type, extension

    async def _slowly(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65536):
            await asyncio.sleep(self.config.content_delay)
            yield data[start : start + 65536]

    async def _remix(self, request: Request) -> Response:
        source = self._live(request.path_params["video_id"])
        fields = await self._body(request)
        prompt = self._prompt(fields)
        if self._refresh(source, self._clock.now())["status"] != "completed":
            raise _ApiError(
                400, "Only completed videos can be remixed.", param="video_id", code="invalid_request"
            )
        video = self._new_video(
            prompt=prompt,
            model=source.model,
            seconds=source.seconds,
            size=source.size,
            remixed_from=source.id,
        )
        return JSONResponse(video)

    async def _moderate(self, request: Request) -> Response:
        fields = await self._body(request)
        raw = fields.get("input")
        inputs: list[Any] = raw if isinstance(raw, list) else [raw]
        texts = [item for item in inputs if isinstance(item, str)]
        if not inputs or len(texts) != len(inputs):
            raise _ApiError(
                400,
                "Invalid 'input': must be a string or an array of strings.",
                param="input",
                code="invalid_value",
            )
        model = fields.get("model", "omni-moderation-latest")
        results = []
        for text in texts:
            flagged = any(word in text for word in self.config.moderation_flag_words)
            hit = self.config.moderation_category
            results.append(
                {
                    "flagged": flagged,
                    "categories": {name: flagged and name == hit for name in MODERATION_CATEGORIES},
                    "category_scores": {
                        name: 0.97 if (flagged and name == hit) else 0.0001 for name in MODERATION_CATEGORIES
                    },
                    "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
                }
            )
        return JSONResponse({"id": f"modr-{secrets.token_hex(12)}", "model": model, "results": results})

    # --- control routes -----------------------------------------------------------------------------------------

    async def _control_faults(self, request: Request) -> Response:
        """400 for a body that is not a fault; 422 for a fault whose values are out of bounds."""
        try:
            data = await request.json()
            status = data["status"]
            count = data.get("count", 1)
            retry_after = data.get("retry_after")
            code = data.get("code")
            path_prefix = data.get("path_prefix", "/v1/")
            if isinstance(status, bool) or isinstance(count, bool):
                raise ValueError("status and count must be integers")
            if not isinstance(status, int) or not isinstance(count, int):
                raise ValueError("status and count must be integers")
            if retry_after is not None and (
                isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
            ):
                raise ValueError("retry_after must be a number")
            if code is not None and not isinstance(code, str):
                raise ValueError("code must be a string")
            if not isinstance(path_prefix, str):
                raise ValueError("path_prefix must be a string")
            self.inject_fault(status, count, retry_after=retry_after, code=code, path_prefix=path_prefix)
        except KnobOutOfRange as exc:
            return error_response(422, f"Invalid fault: {exc}", code="out_of_range")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            return error_response(400, f"Invalid fault: {exc}")
        return JSONResponse({"queued": count, "pending": self.pending_faults})

    async def _control_calls(self, request: Request) -> Response:
        return JSONResponse({"calls": [list(call) for call in self.calls]})
