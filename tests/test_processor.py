"""The processor: woken by the inbox commit, it applies webhooks; idle() waits for the inbox to drain."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from service.clock import ManualClock
from service.processor import Processor
from service.store import open_store
from tests.contract.support import webhook

pytestmark = pytest.mark.anyio


async def test_the_processor_applies_what_the_receiver_acknowledged_and_reports_the_lag(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    store = await open_store(f"sqlite:///{tmp_path / 'p.db'}", clock=clock)
    lags: list[float] = []
    processor = Processor(store=store, clock=clock, batch=4, poll=3600.0, on_lag=lags.append)
    task = asyncio.create_task(processor.run())
    try:
        for i in range(10):
            await store.enqueue_webhook(webhook(f"wh_{i}", "video.completed", f"video_{i}", clock.now()))
        await processor.idle()  # woken by the commits: the hour-long poll never comes into it
        assert await store.inbox_depth() == 0
        assert len(lags) == 10 and all(lag >= 0.0 for lag in lags)
        for i in range(10):
            job = await store.get_job(f"video_{i}")
            assert job is not None and job.status == "completed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.aclose()


async def test_run_once_applies_one_batch(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await open_store(f"sqlite:///{tmp_path / 'q.db'}", clock=clock)
    try:
        for i in range(5):
            await store.enqueue_webhook(webhook(f"wh_{i}", "video.completed", f"video_{i}", clock.now()))
        processor = Processor(store=store, clock=clock, batch=3)
        assert await processor.run_once() == 3
        assert await processor.run_once() == 2
        assert await processor.run_once() == 0
    finally:
        await store.aclose()


async def test_a_read_waits_for_the_webhooks_acknowledged_before_it(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await open_store(f"sqlite:///{tmp_path / 'r.db'}", clock=clock)
    processor = Processor(store=store, clock=clock)
    try:
        await store.enqueue_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
        read = asyncio.create_task(store.get_job("video_1"))
        await asyncio.sleep(0.01)
        assert not read.done()  # held until the processor applies the webhook
        await processor.run_once()
        job = await read
        assert job is not None and job.status == "completed"
    finally:
        await store.aclose()


async def test_a_webhook_that_cannot_be_applied_is_set_aside_and_the_rest_go_on(tmp_path: Path) -> None:
    """A stored inbox row that no longer parses (a disk or hand edit) is kept in inbox_failed; the
    webhooks before and after it are applied."""
    clock = ManualClock()
    path = tmp_path / "poison.db"
    store = await open_store(f"sqlite:///{path}", clock=clock)
    try:
        await store.enqueue_webhook(webhook("wh_1", "video.completed", "video_1", clock.now()))
        await store.enqueue_webhook(webhook("wh_2", "video.completed", "video_2", clock.now()))
        await store.enqueue_webhook(webhook("wh_3", "video.completed", "video_3", clock.now()))
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE inbox SET body = '{not json' WHERE webhook_id = 'wh_2'")
        assert await Processor(store=store, clock=clock).run_once() == 3
        assert await store.inbox_depth() == 0
        for resource in ("video_1", "video_3"):
            job = await store.get_job(resource)
            assert job is not None and job.status == "completed"
        assert await store.get_job("video_2") is None
        with sqlite3.connect(path) as raw:
            kept = raw.execute("SELECT webhook_id, body, error FROM inbox_failed").fetchall()
        assert [(w, b) for w, b, _ in kept] == [("wh_2", "{not json")] and "JSONDecodeError" in kept[0][2]
    finally:
        await store.aclose()
