"""The deliverer's queue of claimed deliveries: a cap per key, round robin between keys, no lost wake-ups."""

from __future__ import annotations

import asyncio

import pytest

from service.dispatch import AdaptiveLimits, CappedQueue, QueueClosed

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


async def test_slow_keys_share_a_capped_pool_and_the_others_keep_the_rest() -> None:
    q: CappedQueue[str] = CappedQueue(per_key=4, slow_cap=2)
    for n in range(5):
        q.set_slow(f"hang{n}", True)
        q.set_limit(f"hang{n}", 1)
        q.put(f"hang{n}", f"hang{n}-a")
        q.put(f"hang{n}", f"hang{n}-b")
    for i in range(6):
        q.put("ok", f"ok{i}")
    handed: list[str] = []
    for _ in range(6):
        _, item = await q.get()  # nothing is ever done: every taker holds its item
        handed.append(item)
    # Two slow items at most, one per slow key; the healthy key has its whole limit.
    assert [x for x in handed if x.startswith("hang")] == ["hang0-a", "hang1-a"]
    assert [x for x in handed if x.startswith("ok")] == ["ok0", "ok1", "ok2", "ok3"]
    assert q.slow_taken == 2
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()  # the pool is full and "ok" is at its limit
    q.done("ok")
    assert await asyncio.wait_for(waiter, 1) == ("ok", "ok4")
    # A slow key that answers again leaves the pool: its item counts for the normal share now.
    q.set_slow("hang0", False)
    assert q.slow_taken == 1
    key, item = await asyncio.wait_for(q.get(), 1)
    assert key.startswith("hang") and key != "hang0" and q.slow_taken == 2


async def test_a_lower_limit_holds_back_a_key_until_enough_are_done() -> None:
    q: CappedQueue[str] = CappedQueue(per_key=3)
    for i in range(4):
        q.put("k", f"k{i}")
    assert [(await q.get())[1] for _ in range(3)] == ["k0", "k1", "k2"]
    q.set_limit("k", 1)
    q.done("k")
    q.done("k")
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()  # one still out, and the limit is one now
    q.done("k")
    assert await asyncio.wait_for(waiter, 1) == ("k", "k3")


def test_adaptive_limits_start_at_one_climb_per_answer_and_drop_on_a_stall() -> None:
    limits = AdaptiveLimits(maximum=4)
    assert limits.limit("a") == 1 and limits.is_slow("a")  # new: proves itself first
    assert [limits.answered("a") for _ in range(5)] == [2, 3, 4, 4, 4]
    assert not limits.is_slow("a")
    assert limits.stalled("a") == 1 and limits.is_slow("a")
    assert limits.answered("a") == 2 and not limits.is_slow("a")
    limits.forget("a")
    assert limits.limit("a") == 1 and limits.is_slow("a") and len(limits) == 0
