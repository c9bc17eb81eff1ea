"""The emulator's webhook sender: signed final-state webhooks, retried like OpenAI retries them.

A webhook POST that fails (connection error, timeout or non-2xx) is retried on later ticks (``send_due``)
after 1, 5, 15 and 30 seconds of clock time, with the same ``webhook-id`` and a fresh signature, then
given up. ``drop_rate`` swallows a share of webhooks; ``duplicate_rate`` sends a share twice (same id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from service.clock import Clock
from service.emulator.model import EmulatorConfig, VideoRecord, record_bounded

log = logging.getLogger(__name__)

WEBHOOK_RETRY_DELAYS = (1.0, 5.0, 15.0, 30.0)
WEBHOOK_TIMEOUT = 10.0


@dataclass
class PendingWebhook:
    webhook_id: str
    event_type: str
    video_id: str
    body: bytes
    next_at: float
    attempts: int = 0
    in_flight: bool = False


class WebhookSender:
    """Holds the webhooks to send (the emulator's outbox) and sends the due ones."""

    def __init__(
        self,
        config: EmulatorConfig,
        clock: Clock,
        chance: Callable[[float], bool],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config, self._clock, self._chance = config, clock, chance
        self._outbox: list[PendingWebhook] = []
        self._signer = Webhook(config.webhook_secret) if config.webhook_secret else None
        self._http = httpx.AsyncClient(transport=transport, timeout=WEBHOOK_TIMEOUT, follow_redirects=False)
        self.sent: list[dict[str, Any]] = []
        self.dropped: list[str] = []  # ids of videos whose webhook the drop_rate swallowed

    def schedule(self, record: VideoRecord, video: dict[str, Any]) -> None:
        if not self.config.webhook_url:
            return
        if self._chance(self.config.drop_rate):
            self.dropped.append(record.id)
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
        self._outbox.extend(
            PendingWebhook(webhook_id, event_type, record.id, body, now) for _ in range(copies)
        )

    async def send_due(self, now: float) -> None:
        """Send every webhook due at ``now`` and not already being sent."""
        due = [d for d in self._outbox if not d.in_flight and d.next_at <= now]
        for delivery in due:
            delivery.in_flight = True  # claimed before any await, so concurrent ticks never send it twice
        await asyncio.gather(*(self._attempt(delivery) for delivery in due))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _attempt(self, delivery: PendingWebhook) -> None:
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
        record_bounded(
            self.sent,
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
