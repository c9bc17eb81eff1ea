"""POST /webhooks/openai: verify, parse, store durably (dedupe, job change, outbox), then answer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from service.clock import Clock
from service.errors import error_response
from service.metrics import Metrics
from service.signing import Verifier
from service.store.records import IncomingWebhook
from service.store.sqlite import SqliteStore

log = logging.getLogger("sorahook.receiver")

_ACCEPTED = b'{"status":"accepted"}'
_DUPLICATE = b'{"status":"duplicate"}'


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Rejection:
    status: int
    code: str
    message: str


# The request headers the receiver reads, picked from the raw ASGI list in one pass (the first of each).
_WANTED = (b"content-length", b"webhook-id", b"webhook-timestamp", b"webhook-signature")


def webhook_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in raw:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Read the body, refusing (without reading it whole) anything longer than `limit` bytes."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
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
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_event(body: bytes) -> dict[str, Any] | None:
    """The envelope must be a JSON object with string `id`, `type` and `data.id`."""
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str) or not event["type"]:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        return None
    try:  # a lone surrogate (`"\\ud800"`) in an id cannot be stored as text
        for text in (event["id"], event["type"], data["id"]):
            text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return event


class Receiver:
    def __init__(
        self, *, store: SqliteStore, verifier: Verifier, clock: Clock, metrics: Metrics, max_body_bytes: int
    ) -> None:
        self.store = store
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

    async def handle(self, scope: Scope, receive: Receive) -> bytes | Rejection:
        """The 200 answer's body once the webhook is committed, or why it was refused."""
        if not self.accepting:
            return Rejection(503, "shutting_down", "sorahook is shutting down; retry shortly")
        headers = webhook_headers(scope["headers"])
        try:
            body = await read_limited(receive, headers.get(b"content-length"), self.max_body_bytes)
        except BodyTooLarge:
            return Rejection(
                413, "body_too_large", f"webhook bodies are limited to {self.max_body_bytes} bytes"
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
        event = parse_event(body)
        if event is None:
            return Rejection(
                400, "invalid_payload", "the body must be a JSON object with string id, type and data.id"
            )
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
            body=body.decode("utf-8"),
            data=event["data"],
        )
        outcome = await self.store.record_webhook(hook)
        self._counter(hook.type, outcome.status).inc()
        if outcome.status == "duplicate":
            return _DUPLICATE
        if log.isEnabledFor(logging.DEBUG):  # the extra dict is built per request otherwise
            log.debug(
                "webhook accepted",
                extra={"event_type": hook.type, "resource_id": hook.resource_id, "job_id": outcome.job_id},
            )
        return _ACCEPTED
