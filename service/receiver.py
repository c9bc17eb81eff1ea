"""POST /webhooks/openai: verify, parse, store durably (dedupe, job change, outbox), then answer."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing (without reading it whole) anything longer than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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

    def _reject(self, status: int, reason: str, message: str) -> JSONResponse:
        self.metrics.webhook_rejections.labels(reason=reason).inc()
        return error_response(status, reason, message)

    async def __call__(self, request: Request) -> Response:
        if not self.accepting:
            return error_response(503, "shutting_down", "sorahook is shutting down; retry shortly")
        try:
            body = await read_limited(request, self.max_body_bytes)
        except BodyTooLarge:
            return self._reject(
                413, "body_too_large", f"webhook bodies are limited to {self.max_body_bytes} bytes"
            )
        headers = request.headers
        msg_id = headers.get("webhook-id")
        verification = self.verifier.verify(
            body, msg_id, headers.get("webhook-timestamp"), headers.get("webhook-signature"), self.clock.now()
        )
        if verification.verdict == "missing_headers":
            return self._reject(400, "missing_headers", verification.message)
        if verification.verdict != "ok":
            return self._reject(401, verification.verdict, verification.message)
        assert msg_id is not None
        event = parse_event(body)
        if event is None:
            return self._reject(
                400, "invalid_payload", "the body must be a JSON object with string id, type and data.id"
            )
        created_at = event.get("created_at")
        hook = IncomingWebhook(
            webhook_id=msg_id,
            timestamp=int(headers["webhook-timestamp"].strip()),
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
            return Response(_DUPLICATE, media_type="application/json")
        log.debug(
            "webhook accepted",
            extra={"event_type": hook.type, "resource_id": hook.resource_id, "job_id": outcome.job_id},
        )
        return Response(_ACCEPTED, media_type="application/json")
