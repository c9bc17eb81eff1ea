"""The OpenAI HTTP client: the Videos API and the retrieve calls sorahook needs, with retries and typed errors.

Choices, most of them taken from the official SDK (``openai/_base_client.py``):

- ``create_video`` is sent as ``multipart/form-data`` with the fields ``prompt``, ``model``, ``seconds`` and
  ``size`` (the last two left out when ``None`` so the server's defaults apply), as ``videos.create`` does.
  ``remix_video`` sends JSON ``{"prompt"}``; ``download_content`` asks for ``Accept: application/binary``.
- Every POST carries an ``Idempotency-Key``: the caller's when given, else a fresh one per call, and the same
  key on every retry of that call, so a retried create never makes a second video.
- Retried (up to ``max_retries`` times after the first attempt): 408, 429 (but not ``insufficient_quota``),
  5xx, timeouts, connection and remote-protocol errors. Everything else is a ``PermanentOpenAIError``.
- The wait before a retry is the server's ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP
  date), else exponential backoff with full jitter: ``min(backoff_cap, backoff_base * 2**n) * random()``.
  A server-given wait longer than ``retry_after_cap`` is not slept through here: the call fails at once with
  a ``TransientOpenAIError`` whose ``retry_after`` is the server's value, for the caller's durable
  scheduling to honour (the SDK likewise stops retrying past its two-minute limit).
- Every HTTP attempt is counted in ``openai_requests{operation, status}`` and timed in
  ``openai_request_duration{operation}``; a streamed download is timed to its response headers. A failed
  attempt is counted in ``openai_errors{operation, category}`` (service.domain.error_category), each retry
  in ``openai_retries{operation}``.
- With several API keys, a 401 or an ``insufficient_quota`` 429 moves the client to the next key (for this
  call, retried at once, and for every later one), at most once per key per call; each move is counted in
  ``openai_key_rotations{reason}`` and logged with the keys' last 4 characters only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from service import ids
from service.domain import error_category
from service.domain.retry import backoff
from service.errors import OpenAIError, PermanentOpenAIError, TransientOpenAIError
from service.http_transport import AiohttpTransport
from service.metrics import Metrics
from service.retry_after import parse_retry_after

log = logging.getLogger(__name__)

Operation = Literal[
    "create_video",
    "retrieve_video",
    "list_videos",
    "delete_video",
    "remix_video",
    "download_content",
    "retrieve_batch",
    "retrieve_response",
    "retrieve_fine_tuning_job",
    "moderate",
]

# kind -> (operation, path prefix) for retrieve(); the kinds sorahook tracks.
_RETRIEVE: dict[str, tuple[Operation, str]] = {
    "video": ("retrieve_video", "videos"),
    "batch": ("retrieve_batch", "batches"),
    "response": ("retrieve_response", "responses"),
    "fine_tuning_job": ("retrieve_fine_tuning_job", "fine_tuning/jobs"),
}

# Failures on the way that a second attempt may not meet. UnsupportedProtocol and LocalProtocolError are
# mistakes on our side (a bad base URL, a bad header), so they are not retried.
_RETRYABLE_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    httpx.DecodingError,
)

E = TypeVar("E", bound=OpenAIError)

_ERROR_BODY_LIMIT = 64 * 1024  # an error body is read this far at most, even from a streamed download
_MESSAGE_LIMIT = 300  # a non-JSON error body becomes a message of at most this many characters


class _Retry(Exception):
    """One attempt failed in a way worth another try (internal to the retry loop)."""

    def __init__(self, error: TransientOpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


class _ForceMultipart(dict[str, Any]):
    """An empty ``files`` mapping that is truthy, so httpx sends multipart/form-data (the SDK's trick)."""

    def __bool__(self) -> bool:
        return True


class OpenAIClient:
    """Talks to OpenAI, an OpenAI-compatible provider or the emulator at ``base_url``."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        metrics: Metrics,
        api_keys: Sequence[str] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_after_cap: float = 60.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries!r}")
        headers = {"accept": "application/json", "user-agent": "sorahook"}
        # Several keys: a 401 or an insufficient_quota 429 on one moves every later call to the next.
        self._keys: list[str] = [k for k in api_keys if k] or ([api_key] if api_key else [])
        self._key_index = 0
        # httpx joins "videos" onto a base URL ending in "/", keeping its path ("/v1/", "/_emulator/v1/").
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout),
            # aiohttp underneath: httpx's own transport cost ~3x the CPU per call (bench/http_clients.py).
            transport=transport if transport is not None else AiohttpTransport(),
            follow_redirects=False,
        )
        self._metrics = metrics
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        self._retry_after_cap = retry_after_cap

    # --- the API -------------------------------------------------------------------------------------------

    async def create_video(
        self,
        *,
        prompt: str,
        model: str,
        seconds: str | None,
        size: str | None,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        fields = {"prompt": prompt, "model": model}
        if seconds is not None:
            fields["seconds"] = seconds
        if size is not None:
            fields["size"] = size
        return await self._json(
            "create_video",
            "POST",
            "videos",
            data=fields,
            files=_ForceMultipart(),
            headers={"idempotency-key": idempotency_key or _new_idempotency_key()},
        )

    async def retrieve_video(self, video_id: str) -> dict[str, Any]:
        return await self._json("retrieve_video", "GET", f"videos/{_segment(video_id, 'video_id')}")

    async def list_videos(
        self, *, after: str | None = None, limit: int = 100, order: Literal["asc", "desc"] = "desc"
    ) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit, "order": order}
        if after is not None:
            params["after"] = after
        return await self._json("list_videos", "GET", "videos", params=params)

    async def delete_video(self, video_id: str) -> dict[str, Any]:
        return await self._json("delete_video", "DELETE", f"videos/{_segment(video_id, 'video_id')}")

    async def remix_video(self, video_id: str, prompt: str) -> dict[str, Any]:
        return await self._json(
            "remix_video",
            "POST",
            f"videos/{_segment(video_id, 'video_id')}/remix",
            json={"prompt": prompt},
            headers={"idempotency-key": _new_idempotency_key()},
        )

    def download_content(
        self, video_id: str, variant: str = "video"
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """The asset as a streamed response: ``async with client.download_content(id) as r: r.aiter_bytes()``.

        Errors before the body starts are retried or raised as typed errors; a transport failure while the
        body is read raises ``TransientOpenAIError`` (it is not retried, the caller has seen bytes).
        """
        return self._download(f"videos/{_segment(video_id, 'video_id')}/content", variant)

    async def moderate(self, text: str, model: str = "omni-moderation-latest") -> dict[str, Any]:
        """``POST /moderations`` for one text: OpenAI's ``{"id", "model", "results": [{"flagged", ...}]}``."""
        return await self._json("moderate", "POST", "moderations", json={"input": text, "model": model})

    async def retrieve(self, kind: str, resource_id: str) -> dict[str, Any]:
        """GET one tracked resource: ``kind`` is ``video``, ``batch``, ``response`` or ``fine_tuning_job``."""
        try:
            operation, prefix = _RETRIEVE[kind]
        except KeyError:
            raise ValueError(f"unknown resource kind {kind!r}; expected one of {sorted(_RETRIEVE)}") from None
        return await self._json(operation, "GET", f"{prefix}/{_segment(resource_id, 'id')}")

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- requests and retries ------------------------------------------------------------------------------

    async def _json(self, operation: Operation, method: str, path: str, **request: Any) -> dict[str, Any]:
        response = await self._send(operation, method, path, stream=False, **request)
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            # A 2xx that is not a JSON object: a proxy's page or a wrong base URL. Not retried here, since a
            # create may have taken effect; the caller's own retry (same idempotency key) is the safe path.
            raise TransientOpenAIError(
                f"OpenAI answered {response.status_code} with a body that is not a JSON object: "
                f"{_short_text(response.content)!r}",
                status=response.status_code,
                code="invalid_response",
            )
        return body

    @contextlib.asynccontextmanager
    async def _download(self, path: str, variant: str) -> AsyncIterator[httpx.Response]:
        response = await self._send(
            "download_content",
            "GET",
            path,
            stream=True,
            params={"variant": variant},
            headers={"accept": "application/binary"},
        )
        try:
            yield response
        except _RETRYABLE_EXCEPTIONS as exc:
            raise TransientOpenAIError(
                f"the download of {path} broke off: {exc!r}", code=_exception_code(exc)
            ) from exc
        finally:
            await response.aclose()

    async def _send(
        self, operation: Operation, method: str, path: str, *, stream: bool, **request: Any
    ) -> httpx.Response:
        """Send with retries; a 2xx response comes back read (``stream=False``) or unread and open."""
        attempt = 0
        refused: set[int] = set()  # key indexes refused during this call
        while True:
            key_index = self._key_index
            try:
                return await self._attempt(operation, method, path, stream=stream, key=key_index, **request)
            except PermanentOpenAIError as refusal:
                reason = _rotation_reason(refusal)
                if reason is None or len(self._keys) < 2:
                    raise
                refused.add(key_index)
                if self._key_index == key_index:  # a concurrent call may have moved on already
                    self._rotate(key_index, reason)
                if self._key_index in refused:
                    raise  # every key was tried for this call
            except _Retry as retry:
                error = retry.error
                if attempt >= self._max_retries:
                    raise error from retry.__cause__
                if error.retry_after is not None and error.retry_after > self._retry_after_cap:
                    log.warning(
                        "openai %s: server asks to wait %.1fs, more than %.1fs; giving up for now",
                        operation,
                        error.retry_after,
                        self._retry_after_cap,
                    )
                    raise error from retry.__cause__
                delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                log.info(
                    "openai %s failed (%s %s), retry %d/%d in %.2fs",
                    operation,
                    error.status,
                    error.code,
                    attempt + 1,
                    self._max_retries,
                    delay,
                )
                attempt += 1
                self._metrics.openai_retries.labels(operation=operation).inc()
                await self._sleep(delay)

    def _rotate(self, index: int, reason: str) -> None:
        self._key_index = (index + 1) % len(self._keys)
        self._metrics.key_rotations.labels(reason=reason).inc()
        log.warning(
            "OpenAI refused the API key ending %s (%s); moving to the key ending %s",
            _key_tail(self._keys[index]),
            reason,
            _key_tail(self._keys[self._key_index]),
        )

    async def _attempt(
        self, operation: Operation, method: str, path: str, *, stream: bool, key: int = 0, **request: Any
    ) -> httpx.Response:
        """One HTTP attempt, counted and timed; raises ``_Retry`` or a ``PermanentOpenAIError`` on failure."""
        if self._keys:
            request["headers"] = {**request.get("headers", {}), "authorization": f"Bearer {self._keys[key]}"}
        started = time.perf_counter()
        status: int | None = None
        try:
            try:
                # A fresh request per attempt: a multipart or JSON body is rebuilt rather than replayed.
                response = await self._http.send(
                    self._http.build_request(method, path, **request), stream=True
                )
            except _RETRYABLE_EXCEPTIONS as exc:
                raise _Retry(self._count_error(operation, _transport_error(operation, exc))) from exc
            except httpx.RequestError as exc:
                raise self._count_error(
                    operation,
                    PermanentOpenAIError(
                        f"could not send {method} {path}: {exc!r}", code=_exception_code(exc)
                    ),
                ) from exc
            status = response.status_code
            if response.is_success:
                if stream:
                    return response
                try:
                    await response.aread()
                except _RETRYABLE_EXCEPTIONS as exc:
                    status = None  # no usable answer: counted as an error
                    raise _Retry(self._count_error(operation, _transport_error(operation, exc))) from exc
                finally:
                    await response.aclose()
                return response
            try:
                body = await _read_capped(response)
            except _RETRYABLE_EXCEPTIONS:
                body = b""  # the status alone still says what happened
            finally:
                await response.aclose()
            error = self._count_error(operation, _error_from_response(response, body))
            log.debug("openai %s answered %d: %s", operation, status, error.message)
            if isinstance(error, TransientOpenAIError):
                raise _Retry(error)
            raise error
        finally:
            self._metrics.openai_requests.labels(
                operation=operation, status=Metrics.status_label(status)
            ).inc()
            self._metrics.openai_request_duration.labels(operation=operation).observe(
                time.perf_counter() - started
            )

    def _count_error(self, operation: Operation, error: E) -> E:
        """Count one failed attempt in openai_errors{operation, category}; hand the error back."""
        category = error_category(error.status, error.code or error.type)
        self._metrics.openai_errors.labels(operation=operation, category=category).inc()
        return error

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: attempt 0 waits up to ``backoff_base``."""
        return backoff(attempt, base=self._backoff_base, cap=self._backoff_cap, jitter=(0.0, 1.0))


# --- helpers -----------------------------------------------------------------------------------------------


def _key_tail(key: str) -> str:
    """The last 4 characters of a key: enough to tell keys apart in logs, never enough to use one."""
    return "…" + key[-4:] if len(key) > 8 else "…"


def _rotation_reason(error: OpenAIError) -> str | None:
    """Why this refusal means "try the next key": a bad key, or a key whose account ran out of quota."""
    if error.status == 401:
        return "unauthorized"
    if error.status == 429 and "insufficient_quota" in (error.code, error.type):
        return "insufficient_quota"
    return None


def _new_idempotency_key() -> str:
    return f"sorahook-{uuid.uuid4()}"


def _segment(value: str, param: str) -> str:
    """One path segment, escaped so an id can never reach another route ("/", "?", "..").

    An id that is not well-formed (empty, "..", control characters, longer than 256) is refused before any
    request, as a 404: OpenAI cannot know it, and every worker treats that as final rather than retrying.
    """
    if not ids.wellformed(value):
        shown = value if len(value) <= 64 else f"{value[:64]}… ({len(value)} characters)"
        raise PermanentOpenAIError(
            f"Invalid '{param}': {shown!r} is not a well-formed id.",
            status=404,
            code="invalid_value",
            param=param,
        )
    return quote(value, safe="")


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _ERROR_BODY_LIMIT:
            break
    return b"".join(chunks)[:_ERROR_BODY_LIMIT]


def _short_text(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _error_from_response(response: httpx.Response, body: bytes) -> OpenAIError:
    """OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` as a typed error."""
    status = response.status_code
    message: str | None = None
    code = type_ = param = None
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = None
    envelope = data.get("error") if isinstance(data, dict) else None
    if isinstance(envelope, dict):
        message = _optional_str(envelope.get("message"))
        code = _optional_str(envelope.get("code"))
        type_ = _optional_str(envelope.get("type"))
        param = _optional_str(envelope.get("param"))
    elif isinstance(envelope, str):  # some compatible providers answer {"error": "..."}
        message = envelope
    elif isinstance(data, dict) and isinstance(data.get("message") or data.get("detail"), str):
        message = data.get("message") or data.get("detail")
    if not message:
        text = _short_text(body)
        message = text or f"HTTP {status} {response.reason_phrase}".rstrip()
    retry_after = _retry_after(response.headers)
    quota = "insufficient_quota" in (code, type_)
    transient = status == 408 or status >= 500 or (status == 429 and not quota)
    cls = TransientOpenAIError if transient else PermanentOpenAIError
    return cls(message, status=status, code=code, type=type_, param=param, retry_after=retry_after)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's wait in seconds: ``retry-after-ms``, else ``Retry-After`` as seconds or an HTTP date."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            millis = float(value)
        except ValueError:
            millis = -1.0
        if math.isfinite(millis) and millis >= 0:
            return millis / 1000.0
    return parse_retry_after(headers.get("retry-after"))


def _exception_code(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connection_error"
    return "network_error"


def _transport_error(operation: Operation, exc: Exception) -> TransientOpenAIError:
    return TransientOpenAIError(f"openai {operation}: {exc!r}", code=_exception_code(exc))
