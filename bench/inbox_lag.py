"""Webhook -> applied lag: how long an acknowledged webhook waits in the inbox before its job follows.

Drives the store the way the receiver does (`enqueue_webhook`, one verified `video.completed` per
call, synchronous=FULL) with the processor running beside it in the same event loop, and prints the
lag from acknowledgement to applied, p50/p99/max:

- steady: `--rate` webhooks a second for `--seconds`, paced open-loop;
- burst: `--burst` webhooks offered at once, then the time until the inbox is empty.

    python -m bench.inbox_lag [--rate 1000] [--seconds 5] [--burst 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from service.clock import SystemClock
from service.processor import Processor
from service.store import open_store
from service.store.records import IncomingWebhook


def _hook(now: float) -> IncomingWebhook:
    video, event = f"video_{os.urandom(8).hex()}", f"evt_{os.urandom(8).hex()}"
    data = {"id": video}
    body = json.dumps(
        {"id": event, "object": "event", "created_at": int(now), "type": "video.completed", "data": data}
    )
    return IncomingWebhook(
        f"msg_{os.urandom(8).hex()}", int(now), event, "video.completed", video, int(now), body, data
    )


def _summary(name: str, lags: list[float]) -> str:
    ms = sorted(lag * 1000.0 for lag in lags)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: {len(ms):,} webhooks, lag p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"


async def measure(directory: Path, rate: float, seconds: float, burst: int) -> list[str]:
    clock = SystemClock()
    store = await open_store(f"sqlite:///{directory / 'lag.db'}", clock=clock)
    await store.configure_archive(("video", "thumbnail"))
    lags: list[float] = []
    processor = Processor(store=store, clock=clock, on_lag=lags.append)
    task = asyncio.create_task(processor.run())
    lines: list[str] = []
    try:
        pending: set[asyncio.Task[object]] = set()
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(store.enqueue_webhook(_hook(clock.now())))
            pending.add(t)
            t.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        await processor.idle()
        lines.append(_summary(f"steady {rate:,.0f}/s for {seconds:g} s", lags))
        lags.clear()
        began = time.monotonic()
        await asyncio.gather(*(store.enqueue_webhook(_hook(clock.now())) for _ in range(burst)))
        acked = time.monotonic() - began
        await processor.idle()
        drained = time.monotonic() - began
        lines.append(
            _summary(f"burst of {burst:,}", lags)
            + f"; acknowledged in {acked:.2f} s, applied in {drained:.2f} s"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.aclose()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inbox_lag", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for line in asyncio.run(measure(Path(tmp), args.rate, args.seconds, args.burst)):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
