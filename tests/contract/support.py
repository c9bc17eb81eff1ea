"""Small builders shared by the contract tests: webhooks as the receiver hands them to a store."""

from __future__ import annotations

import json
from typing import Any

from service.store.records import IncomingWebhook


def webhook(webhook_id: str, event_type: str, resource_id: str, now: float) -> IncomingWebhook:
    """A verified OpenAI webhook about `resource_id`, as the receiver builds it."""
    data: dict[str, Any] = {"id": resource_id}
    body = {"id": f"evt_{webhook_id}", "object": "event", "type": event_type, "data": data}
    return IncomingWebhook(
        webhook_id, int(now), f"evt_{webhook_id}", event_type, resource_id, int(now), json.dumps(body), data
    )
