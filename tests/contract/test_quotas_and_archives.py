"""Contract: API jobs under quotas, usage, archive work, and retention."""

from __future__ import annotations

import pytest

from service.clock import ManualClock
from service.domain.quotas import NewJob, QuotaExceeded, Quotas
from service.store.protocol import Store
from tests.contract.support import webhook

pytestmark = pytest.mark.anyio


def _new(client: str = "team-a", cost: float = 1.0) -> NewJob:
    return NewJob(
        {"model": "sora-2", "prompt": "p", "seconds": "4"}, None, {}, client=client, estimated_cost_usd=cost
    )


async def test_a_client_over_its_concurrent_quota_is_refused_with_a_retry_after(store: Store) -> None:
    quotas = Quotas(concurrent=2)
    await store.create_api_jobs([_new(), _new()], quotas=quotas)
    with pytest.raises(QuotaExceeded) as refused:
        await store.create_api_jobs([_new()], quotas=quotas)
    assert refused.value.param and refused.value.retry_after > 0
    others, _ = await store.create_api_jobs([_new(client="team-b")], quotas=quotas)  # per client
    assert len(others) == 1


async def test_a_batch_is_stored_all_or_none(store: Store) -> None:
    with pytest.raises(QuotaExceeded):
        await store.create_api_jobs([_new(), _new(), _new()], quotas=Quotas(per_hour=2), batch=True)
    page, _ = await store.list_jobs(status=None, kind=None, limit=10, after=None)
    assert page == []


async def test_usage_adds_up_the_estimated_cost_per_client(store: Store, clock: ManualClock) -> None:
    await store.create_api_jobs([_new(cost=1.5), _new(cost=2.0)], quotas=Quotas())
    usage = await store.usage(since=None, until=None, client_key="team-a")
    assert usage  # shape is the API's; the sum below is what a backend must get right
    assert abs(sum_costs(usage) - 3.5) < 1e-9


def sum_costs(usage: dict[str, object]) -> float:
    total = usage.get("total_estimated_cost_usd")
    assert isinstance(total, int | float), usage
    return float(total)


async def test_a_completed_video_is_archived_variant_by_variant(store: Store, clock: ManualClock) -> None:
    await store.configure_archive(("video", "thumbnail"))
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    claimed = await store.claim_archives(10, lease=30.0)
    assert sorted(c.variant for c in claimed) == ["thumbnail", "video"]
    job_id = claimed[0].job_id
    await store.archive_stored(
        job_id, "video", key="k/v", uri="file:///k/v", size=3, sha256="0" * 64, content_type="video/mp4"
    )
    stored = await store.get_archive(job_id, "video")
    assert stored is not None and stored.status == "stored" and stored.size == 3
    job = await store.archive_failed(job_id, "thumbnail", "gone")
    assert job is not None
    assert {a.variant: a.status for a in await store.list_archives(job_id)} == {
        "video": "stored",
        "thumbnail": "archive_failed",
    }


async def test_pruning_keeps_jobs(store: Store, clock: ManualClock) -> None:
    await store.record_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
    clock.advance(10 * 86400.0)
    while await store.prune(older_than=clock.now() - 86400.0, batch=100):
        pass
    assert await store.get_job("video_1") is not None
