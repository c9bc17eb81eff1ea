"""Contract: the receiver's inbox holds acknowledged webhooks until the processor applies them, in order."""

from __future__ import annotations

import pytest

from service.clock import ManualClock
from service.store.protocol import Store
from tests.contract.conftest import Backend
from tests.contract.support import webhook

pytestmark = pytest.mark.anyio


async def test_an_acknowledged_webhook_changes_nothing_until_it_is_processed(
    store: Store, clock: ManualClock
) -> None:
    first = await store.enqueue_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    again = await store.enqueue_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    assert first.status == "accepted" and again.status == "duplicate"
    assert await store.inbox_depth() == 1
    assert store.signals.inbox.is_set()
    clock.advance(0.25)
    assert await store.process_inbox(10) == [clock.now() - 0.25]
    assert await store.inbox_depth() == 0
    job = await store.get_job("video_1")
    assert job is not None and job.status == "completed"
    assert await store.process_inbox(10) == []


async def test_webhooks_apply_in_received_order_per_resource(store: Store, clock: ManualClock) -> None:
    await store.create_subscription(
        url="http://127.0.0.1:9/h", event_types=None, description=None, secret="whsec_AAAA", ordered=True
    )
    await store.enqueue_webhook(webhook("wh_1", "video.failed", "video_1", clock.now()))
    await store.enqueue_webhook(webhook("wh_2", "video.completed", "video_1", clock.now()))  # too late
    await store.enqueue_webhook(webhook("wh_3", "video.completed", "video_2", clock.now()))
    assert len(await store.process_inbox(2)) == 2  # a batch smaller than the backlog
    assert len(await store.process_inbox(2)) == 1
    one, two = await store.get_job("video_1"), await store.get_job("video_2")
    assert one is not None and one.status == "failed"  # the first webhook won; a terminal job stays
    assert two is not None and two.status == "completed"
    received = [e.webhook_id for e in await store.job_events(one.id) if e.direction == "received"]
    assert received == ["wh_1", "wh_2"]


async def test_unprocessed_webhooks_survive_a_restart(backend: Backend, clock: ManualClock) -> None:
    store = await backend.open(clock)
    try:
        await store.enqueue_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    finally:
        await store.aclose()  # as a crash would leave it: acknowledged, not applied
    store = await backend.open(clock)
    try:
        assert await store.inbox_depth() == 1
        assert (
            await store.enqueue_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
        ).status == ("duplicate")
        assert len(await store.process_inbox(10)) == 1
        job = await store.get_job("video_1")
        assert job is not None and job.status == "completed"
    finally:
        await store.aclose()
