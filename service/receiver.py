"""POST /webhooks/openai: verify, parse, commit to the inbox with its dedupe key, then answer.

The job change, timeline and outbox rows follow in the processor (service/processor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from service import ids
from service.clock import Clock
from service.errors import error_response
from service.metrics import Metrics
from service.recent import RecentCounts
from service.signing import Verifier
from service.store.protocol import InboxStore
from service.store.records import IncomingWebhook

log = logging.getLogger("sorahook.receiver")

_ACCEPTED = b'{"status":"accepted"}'
_DUPLICATE = b'{"status":"duplicate"}'


class BodyTooLarge(Exception):
    def __init__(self, *, ended: bool) -> None:
        super().__init__()
        self.ended = ended  # the client has sent its whole body (nothing left to drain)


class ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Rejection:
    status: int
    code: str
    message: str
    drain: bool = False  # the request body is still arriving: read it away before the response ends


# After a 413 the rest of an oversized body is read and thrown away (at most this much, and only while it
# keeps coming), so that a connection the server then closes is not closed with unread bytes: the kernel
# would answer those with a reset, which can reach the client before (and instead of) its 413.
DRAIN_LIMIT = 64 * 1024 * 1024
DRAIN_IDLE = 5.0  # seconds without a chunk
DRAIN_TOTAL = 30.0  # seconds in all: a trickling client does not hold the request open for long


# The request headers the receiver reads, picked from the raw ASGI list in one pass (the first of each).
_WANTED = (b"content-length", b"webhook-id", b"webhook-timestamp", b"webhook-signature")


def webhook_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in raw:
        if name in _WANTED and name not in found:
            # webhook-id is signed as UTF-8 text (Standard Webhooks); bytes that are not UTF-8 become lone
            # surrogates, which no id can hold (the verifier refuses them). The others are ASCII.
            found[name] = (
                value.decode("utf-8", "surrogateescape") if name == b"webhook-id" else value.decode("latin-1")
            )
    return found


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Read the body, refusing (without reading it whole) anything longer than `limit` bytes."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(ended=False)
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(ended=not message.get("more_body", False))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


MAX_DEPTH = 64  # nesting of arrays and objects in a stored event
_INT64 = 1 << 63
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # "\ud800".."\udfff": paired, or a lone one


class _NotANumber(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotANumber(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON, but no JSON encoder writes it back
        raise _NotANumber(f"{text[:32]} does not fit in a double")
    return value


# One decoder, built once: json.loads with keyword arguments builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def _utf8(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def drain(receive: Receive, limit: int, idle: float, total: float) -> None:
    """Read and discard the request body: until it ends, the client goes, `limit` bytes, `idle` seconds
    without a chunk or `total` seconds in all."""
    seen = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(total):
            while seen <= limit:
                async with asyncio.timeout(idle):
                    message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
                seen += len(message.get("body", b""))


def parse_event(text: str) -> dict[str, Any] | str:
    """The event if it is one sorahook can store and serve back, else what is wrong with it.

    A JSON object with `id`, `type` and `data.id` (each 1 to 256 printable characters), finite numbers
    only, `created_at` (when an integer) within 64 bits, at most 64 levels of nesting and no lone
    surrogate anywhere. The costly checks run only when a cheap scan says they might fail.
    """
    try:
        event = _DECODER.decode(text)
    except _NotANumber as exc:
        return f"the body holds a number JSON cannot carry: {exc}"
    except RecursionError:
        return f"the body nests deeper than {MAX_DEPTH} levels"
    except ValueError:
        return "the body is not valid JSON"
    if not isinstance(event, dict):
        return "the body must be a JSON object"
    data = event.get("data")
    for name, value in (("id", event.get("id")), ("type", event.get("type"))):
        if not isinstance(value, str) or not ids.wellformed(value):
            return f"{name} must be a string of 1 to {ids.MAX_ID_LENGTH} printable characters"
    if not isinstance(data, dict):
        return "data must be a JSON object"
    resource_id = data.get("id")
    if not isinstance(resource_id, str) or not ids.wellformed(resource_id):
        return f"data.id must be a string of 1 to {ids.MAX_ID_LENGTH} printable characters"
    created_at = event.get("created_at")
    if isinstance(created_at, int) and not -_INT64 <= created_at < _INT64:
        return "created_at must fit in 64 bits"
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_over(event, MAX_DEPTH):
        return f"the body nests deeper than {MAX_DEPTH} levels"
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _utf8(event):
        return "the body holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return event


class Receiver:
    def __init__(
        self,
        *,
        store: InboxStore,
        verifier: Verifier,
        clock: Clock,
        metrics: Metrics,
        max_body_bytes: int,
        rejections: RecentCounts | None = None,
    ) -> None:
        self.store = store
        self.rejections = rejections  # the last hour's refusals by code, for the console's overview
        self.verifier = verifier
        self.clock = clock
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.accepting = True
        self._counters: dict[tuple[str, str], Any] = {}

    def _counter(self, event_type: str, outcome: str) -> Any:
        """The labelled child counter, looked up once per (type, outcome) rather than on every request."""
        key = (self.metrics.event_type_label(event_type), outcome)  # a closed set: the cache stays small
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.webhooks_received.labels(type=key[0], outcome=outcome)
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A plain ASGI app: this is the hot path, so it skips Starlette's request and response objects."""
        try:
            body = await self.handle(scope, receive)
        except ClientGone:
            return
        if isinstance(body, Rejection):
            if body.status != 503:
                self.metrics.webhook_rejections.labels(reason=body.code).inc()
                if self.rejections is not None:
                    self.rejections.add(body.code, self.clock.now())
            if body.drain:
                await self._refuse_then_drain(scope, receive, send, body)
                return
            await error_response(body.status, body.code, body.message)(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _refuse_then_drain(
        self, scope: Scope, receive: Receive, send: Send, rejection: Rejection
    ) -> None:
        """The whole error response first (the client can act on it at once), then the rest of the body read
        away, and only then the end of the response, after which the server may close the connection."""
        response = error_response(rejection.status, rejection.code, rejection.message)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        # A client waiting on `Expect: 100-continue` has sent no body: reading now would invite it to.
        if not any(name == b"expect" for name, _ in scope["headers"]):
            await drain(receive, DRAIN_LIMIT, DRAIN_IDLE, DRAIN_TOTAL)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def handle(self, scope: Scope, receive: Receive) -> bytes | Rejection:
        """The 200 answer's body once the webhook is committed, or why it was refused."""
        if not self.accepting:
            return Rejection(503, "shutting_down", "sorahook is shutting down; retry shortly")
        headers = webhook_headers(scope["headers"])
        try:
            body = await read_limited(receive, headers.get(b"content-length"), self.max_body_bytes)
        except BodyTooLarge as exc:
            return Rejection(
                413,
                "body_too_large",
                f"webhook bodies are limited to {self.max_body_bytes} bytes",
                drain=not exc.ended,
            )
        msg_id = headers.get(b"webhook-id")
        timestamp = headers.get(b"webhook-timestamp")
        verification = self.verifier.verify(
            body, msg_id, timestamp, headers.get(b"webhook-signature"), self.clock.now()
        )
        if verification.verdict != "ok":
            status = 400 if verification.verdict == "missing_headers" else 401
            return Rejection(status, verification.verdict, verification.message)
        assert msg_id is not None and timestamp is not None
        text = body.decode("utf-8")  # the verifier has checked it is UTF-8
        event = parse_event(text)
        if isinstance(event, str):
            return Rejection(400, "invalid_payload", event)
        created_at = event.get("created_at")
        hook = IncomingWebhook(
            webhook_id=msg_id,
            timestamp=int(timestamp.strip()),
            event_id=event["id"],
            type=event["type"],
            resource_id=event["data"]["id"],
            created_at=created_at
            if isinstance(created_at, int) and not isinstance(created_at, bool)
            else None,
            body=text,
            data=event["data"],
        )
        outcome = await self.store.enqueue_webhook(hook)
        self._counter(hook.type, outcome.status).inc()
        if outcome.status == "duplicate":
            return _DUPLICATE
        if log.isEnabledFor(logging.DEBUG):  # the extra dict is built per request otherwise
            log.debug(
                "webhook accepted",
                extra={"event_type": hook.type, "resource_id": hook.resource_id},
            )
        return _ACCEPTED
