"""The deliverer's queue of claimed deliveries: a cap per key, round robin between keys, no lost wake-ups."""

from __future__ import annotations

import asyncio

import pytest

from service.dispatch import CappedQueue, QueueClosed

pytestmark = pytest.mark.anyio


async def test_a_key_at_its_cap_waits_while_other_keys_go_round_robin() -> None:
    q: CappedQueue[str] = CappedQueue(per_key=2)
    for i in range(4):
        q.put("slow", f"slow{i}")
    for i in range(3):
        q.put("a", f"a{i}")
        q.put("b", f"b{i}")
    order: list[str] = []
    for _ in range(8):
        key, item = await q.get()
        order.append(item)
        if key != "slow":
            q.done(key)  # "a" and "b" finish at once; "slow" never does
    # "slow" hands out two and stops; the others alternate, each in its own order.
    assert order[:3] == ["slow0", "a0", "b0"]
    assert [x for x in order if x.startswith("slow")] == ["slow0", "slow1"]
    assert [x for x in order if x.startswith("a")] == ["a0", "a1", "a2"]
    assert [x for x in order if x.startswith("b")] == ["b0", "b1", "b2"]
    assert len(q) == 2 and q.taken("slow") == 2
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()  # only "slow" items are left, and it is at its cap
    q.put("a", "a3")
    assert await asyncio.wait_for(waiter, 1) == ("a", "a3")
    q.done("a")
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.done("slow")
    assert await asyncio.wait_for(waiter, 1) == ("slow", "slow2")


async def test_every_idle_taker_is_woken_for_the_items_put() -> None:
    q: CappedQueue[int] = CappedQueue(per_key=8)
    got: list[int] = []

    async def taker() -> None:
        while True:
            key, item = await q.get()
            await asyncio.sleep(0.01)  # all takers busy at once
            got.append(item)
            q.done(key)

    takers = [asyncio.create_task(taker()) for _ in range(8)]
    await asyncio.sleep(0)
    for i in range(8):
        q.put("k", i)  # one key: each put has to reach a different idle taker
    await asyncio.sleep(0.015)
    assert sorted(got) == list(range(8))  # taken in parallel, not one after another
    for t in takers:
        t.cancel()
    await asyncio.gather(*takers, return_exceptions=True)


async def test_a_cancelled_taker_passes_its_wake_up_on() -> None:
    q: CappedQueue[str] = CappedQueue(per_key=1)
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put("k", "x")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == ("k", "x")


async def test_close_wakes_takers_and_returns_what_was_left() -> None:
    q: CappedQueue[str] = CappedQueue(per_key=1)
    q.put("k", "a")
    q.put("k", "b")
    assert await q.get() == ("k", "a")
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert q.close() == ["b"]
    with pytest.raises(QueueClosed):
        await waiter
    with pytest.raises(QueueClosed):
        q.put("k", "c")
