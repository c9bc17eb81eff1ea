"""Contract: subscriptions, the outbox a job's events fill, claims, attempts and their retry policy."""

from __future__ import annotations

import pytest

from service.clock import ManualClock
from service.domain import Observation
from service.store.protocol import Store
from service.store.records import DeliveryOutcome
from tests.contract.conftest import RETRY_SCHEDULE
from tests.contract.support import webhook

pytestmark = pytest.mark.anyio

SECRET = "whsec_AAAA"


async def _subscribe(store: Store, *, ordered: bool = False, types: list[str] | None = None) -> str:
    sub = await store.create_subscription(
        url="http://127.0.0.1:9/hook", event_types=types, description="d", secret=SECRET, ordered=ordered
    )
    return sub.id


async def test_a_subscription_is_created_read_updated_rotated_and_deleted(store: Store) -> None:
    sub_id = await _subscribe(store)
    sub = await store.get_subscription(sub_id)
    assert sub is not None and sub.secret == SECRET and sub.enabled
    updated = await store.update_subscription(sub_id, {"description": "e"})
    assert updated is not None and updated.description == "e"
    rotated = await store.rotate_secret(sub_id, "whsec_BBBB", overlap=60.0)
    assert rotated is not None and rotated.secret == "whsec_BBBB" and rotated.previous_secret == SECRET
    assert [s.id for s in await store.list_subscriptions()] == [sub_id]
    assert await store.delete_subscription(sub_id)
    assert await store.get_subscription(sub_id) is None


async def test_an_event_is_delivered_to_matching_subscriptions_only(store: Store, clock: ManualClock) -> None:
    wanted = await _subscribe(store, types=["video.completed"])
    await _subscribe(store, types=["video.failed"])
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    claimed = await store.claim_deliveries(10, lease=30.0)
    assert [(c.subscription_id, c.event_type) for c in claimed] == [(wanted, "video.completed")]
    assert SECRET in claimed[0].secrets
    assert await store.claim_deliveries(10, lease=30.0) == []  # leased to us


async def test_a_success_is_final_and_a_failure_is_retried_on_the_schedule_until_dead(
    store: Store, clock: ManualClock
) -> None:
    await _subscribe(store)
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    await store.record_webhook(webhook("wh_2", "video.completed", "video_2", clock.now()))
    first, second = await store.claim_deliveries(10, lease=30.0)
    results = dict(
        await store.record_attempts(
            [DeliveryOutcome(first.id, 200, None, 0.01), DeliveryOutcome(second.id, 500, None, 0.01)]
        )
    )
    assert results == {first.id: "succeeded", second.id: "failed"}
    for _ in RETRY_SCHEDULE[1:]:
        assert await store.claim_deliveries(10, lease=30.0) == []  # not due yet
        next_at = await store.next_delivery_at()
        assert next_at is not None
        clock.advance(next_at - clock.now())
        (again,) = await store.claim_deliveries(10, lease=30.0)
        assert again.id == second.id
        last = dict(await store.record_attempts([DeliveryOutcome(second.id, 500, None, 0.01)]))
    assert last[second.id] == "dead"
    delivery = await store.get_delivery(second.id)
    assert delivery is not None and delivery.attempts == len(RETRY_SCHEDULE)
    assert await store.retry_delivery(second.id) == "dead"
    assert [c.id for c in await store.claim_deliveries(10, lease=30.0)] == [second.id]


async def test_410_gone_disables_the_subscription_and_kills_its_deliveries(
    store: Store, clock: ManualClock
) -> None:
    sub_id = await _subscribe(store)
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    await store.record_webhook(webhook("wh_2", "video.completed", "video_2", clock.now()))
    first, _second = await store.claim_deliveries(1, lease=30.0) + [None]  # type: ignore[list-item]
    assert first is not None
    assert dict(await store.record_attempts([DeliveryOutcome(first.id, 410, None, 0.01)])) == {
        first.id: "dead"
    }
    sub = await store.get_subscription(sub_id)
    assert sub is not None and not sub.enabled
    assert await store.claim_deliveries(10, lease=30.0) == []
    assert await store.delivery_backlog() == 0


async def test_an_ordered_subscription_gets_one_job_s_events_one_at_a_time(
    store: Store, clock: ManualClock
) -> None:
    await _subscribe(store, ordered=True)
    job, _ = await store.track_job(kind="video", resource_id="video_1", callback_url=None, metadata={})
    await store.apply_observation(job.id, Observation(status="in_progress", progress=5), "refresh")
    await store.record_webhook(webhook("wh_2", "video.completed", "video_1", clock.now()))
    (head,) = await store.claim_deliveries(10, lease=30.0)  # the second waits behind the first
    assert head.ordered and head.job_id == job.id and head.event_type != "video.completed"
    await store.record_attempts([DeliveryOutcome(head.id, 200, None, 0.01)])
    (tail,) = await store.claim_deliveries(10, lease=30.0)
    assert tail.event_type == "video.completed"


async def test_released_deliveries_are_due_again_without_an_attempt(store: Store, clock: ManualClock) -> None:
    await _subscribe(store)
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    (claimed,) = await store.claim_deliveries(10, lease=30.0)
    await store.release_deliveries([claimed.id])
    (again,) = await store.claim_deliveries(10, lease=30.0)
    assert again.id == claimed.id and again.attempts == 0
