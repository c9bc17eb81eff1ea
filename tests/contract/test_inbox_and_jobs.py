"""Contract: webhooks are recorded once, and every source moves a job through the same state machine."""

from __future__ import annotations

import pytest

from service.clock import ManualClock
from service.domain import Observation
from service.store.protocol import Store
from tests.contract.support import webhook

pytestmark = pytest.mark.anyio


async def test_a_webhook_is_recorded_once_and_a_duplicate_is_answered_as_such(
    store: Store, clock: ManualClock
) -> None:
    first = await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    again = await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    assert first.status == "accepted" and first.job_id is not None
    assert again.status == "duplicate"
    assert await store.count_received() == 1


async def test_a_webhook_about_an_unknown_resource_makes_a_job_in_its_state(
    store: Store, clock: ManualClock
) -> None:
    outcome = await store.record_webhook(webhook("wh_1", "video.failed", "video_9", clock.now()))
    job = await store.get_job("video_9")  # by resource id as well as by job id
    assert job is not None and job.id == outcome.job_id
    assert job.status == "failed" and job.origin == "webhook"
    events = await store.job_events(job.id)
    assert [e.direction for e in events].count("received") == 1
    assert any(e.direction == "emitted" and e.type == "video.failed" for e in events)


async def test_a_terminal_job_does_not_move_back(store: Store, clock: ManualClock) -> None:
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    job = await store.get_job("video_1")
    assert job is not None
    after = await store.apply_observation(job.id, Observation(status="in_progress", progress=10), "refresh")
    assert after is not None and after.status == "completed"


async def test_a_created_job_is_pending_and_claimed_for_submission_once(store: Store) -> None:
    job, created = await store.create_job(
        request={"model": "sora-2", "prompt": "a cat"},
        callback_url=None,
        metadata={"team": "a"},
        idempotency_key="key-1",
    )
    again, created_again = await store.create_job(
        request={"model": "sora-2", "prompt": "a cat"},
        callback_url=None,
        metadata={"team": "a"},
        idempotency_key="key-1",
    )
    assert created and not created_again and again.id == job.id
    assert job.status == "pending"
    claimed = await store.claim_submissions(10, lease=30.0)
    assert [j.id for j in claimed] == [job.id]
    assert await store.claim_submissions(10, lease=30.0) == []  # leased
    moved = await store.submission_succeeded(job.id, Observation(status="queued", resource_id="video_7"))
    assert moved is not None and moved.status == "queued" and moved.resource_id == "video_7"
    page, more = await store.list_jobs(
        status="queued", kind=None, limit=10, after=None, metadata=("team", "a")
    )
    assert [j.id for j in page] == [job.id] and not more


async def test_tracking_a_resource_twice_gives_the_same_job(store: Store) -> None:
    job, created = await store.track_job(kind="video", resource_id="video_5", callback_url=None, metadata={})
    again, created_again = await store.track_job(
        kind="video", resource_id="video_5", callback_url=None, metadata={}
    )
    assert created and not created_again and again.id == job.id
