"""Measure reconciliation: the OpenAI calls and the wall time of one pass over a big silent backlog.

`python -m bench.reconcile` (part of `make bench`). N in-flight videos (10,000 by default) were
submitted through the real submitter to the emulator, then all finished at OpenAI while every webhook
was lost. One `Reconciler.run_once()` must bring every job to its final state, through the store's
shared path (event + outbox rows for one subscription per job).

- The list strategy is sorahook's: the newest stale video by id, then `GET /videos?order=desc&limit=100`
  pages over the span that holds the stale videos, with the default ceiling of 150 calls per pass.
- The naive strategy asks for each job by id (the same reconciler with listing off): N calls by
  definition. Its wall time is measured over a smaller backlog (1,000 by default) and extrapolated
  linearly to N, labelled as such; `--naive-full` measures it over all N instead.

Time is a `ManualClock` for the jobs and the emulator (the videos finish by moving it), so the only
real time measured is the pass itself: SQLite on a temp file, the OpenAI client and the emulator in the
same process through `httpx.ASGITransport` (no sockets: the wall time is a lower bound for a real
network, where the call count is what matters).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from service.clock import ManualClock
from service.emulator import Emulator, EmulatorConfig
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.reconciler import Reconciler
from service.store.sqlite import SqliteStore
from service.submitter import Submitter

DURATION = 300.0  # seconds of (manual) clock for a video to finish at the emulator
STALE_AFTER = 120.0
INTERVAL = 30.0
CREATE_CHUNK = 500
SUBMIT_BATCH = 250


class _Timed:
    """Wraps the emulator app to add up the time spent inside it (OpenAI's side of each call)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seconds = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.seconds += time.perf_counter() - started


@dataclass(frozen=True)
class PassResult:
    strategy: str
    jobs: int
    calls: int
    list_calls: int
    seconds: float
    emulator_seconds: float
    caught_up: int
    populate_seconds: float


async def _one_pass(workdir: Path, n: int, *, use_list: bool, max_calls: int) -> PassResult:
    clock = ManualClock()
    emulator = Emulator(EmulatorConfig(duration=DURATION, seed=1), clock=clock)
    metrics = Metrics()
    timed = _Timed(emulator.app)
    store = await SqliteStore.open(workdir / f"{'list' if use_list else 'naive'}-{n}.db", clock=clock)
    openai = OpenAIClient(
        base_url="http://emulator/v1",
        api_key=None,
        metrics=metrics,
        transport=httpx.ASGITransport(app=timed),
        max_retries=0,
    )
    try:
        started = time.perf_counter()
        await store.create_subscription(
            url="http://subscriber.invalid/hook",
            event_types=None,
            description="bench",
            secret="whsec_" + "A" * 32,
            ordered=False,
        )
        for first in range(0, n, CREATE_CHUNK):
            await asyncio.gather(
                *(
                    store.create_job(
                        request={"prompt": f"scene {i}", "model": "sora-2"},
                        callback_url=None,
                        metadata={},
                        idempotency_key=None,
                    )
                    for i in range(first, min(n, first + CREATE_CHUNK))
                )
            )
        # The real submitter (each batch sent concurrently), with no webhook URL: every video will
        # finish silently. Bigger batches than the service's 16 only to populate faster.
        submitter = Submitter(store=store, openai=openai, clock=clock, batch=SUBMIT_BATCH)
        while await submitter.run_once():
            pass
        populate_seconds = time.perf_counter() - started
        clock.advance(DURATION + STALE_AFTER + 1)
        reconciler = Reconciler(
            store=store,
            openai=openai,
            clock=clock,
            metrics=metrics,
            interval=INTERVAL,
            stale_after=STALE_AFTER,
            max_calls=max_calls,
            use_list=use_list,
        )
        before = len(emulator.calls)
        timed.seconds = 0.0
        started = time.perf_counter()
        report = await reconciler.run_once()
        seconds = time.perf_counter() - started
        api_calls = len(emulator.calls) - before
        assert api_calls == report.calls, (api_calls, report.calls)
        left = await store.stale_jobs(clock.now(), limit=n)
        return PassResult(
            strategy="list" if use_list else "naive",
            jobs=n,
            calls=report.calls,
            list_calls=report.list_calls,
            seconds=seconds,
            emulator_seconds=timed.seconds,
            caught_up=n - len(left),
            populate_seconds=populate_seconds,
        )
    finally:
        await openai.aclose()
        await store.aclose()
        await emulator.aclose()


async def _run(jobs: int, naive_jobs: int, max_calls: int) -> int:
    with tempfile.TemporaryDirectory(prefix="sorahook-bench-reconcile-") as tmp:
        workdir = Path(tmp)
        listed = await _one_pass(workdir, jobs, use_list=True, max_calls=max_calls)
        naive = await _one_pass(workdir, naive_jobs, use_list=False, max_calls=naive_jobs)
    scale = jobs / naive_jobs
    naive_label = "measured" if naive_jobs == jobs else f"extrapolated ×{scale:g} from {naive_jobs:,} jobs"
    print(
        f"{jobs:,} in-flight videos, all finished at OpenAI, every webhook lost "
        f"(populated through the submitter in {listed.populate_seconds:.1f} s)"
    )
    print()
    print(f"{'strategy':<30} {'OpenAI calls':>12} {'pass wall time':>15} {'in emulator':>12}   notes")
    print(
        f"{'list pages + by id (sorahook)':<30} {listed.calls:>12,} {listed.seconds:>13.2f} s"
        f" {listed.emulator_seconds:>10.2f} s   {listed.list_calls} list pages, "
        f"{listed.calls - listed.list_calls} by id; caught up {listed.caught_up:,}/{jobs:,}"
    )
    print(
        f"{'one retrieve per job (naive)':<30} {jobs:>12,} {naive.seconds * scale:>13.2f} s"
        f" {naive.emulator_seconds * scale:>10.2f} s   time {naive_label} "
        f"({naive.calls:,} calls caught up {naive.caught_up:,}/{naive_jobs:,})"
    )
    print()
    print(
        "wall time is in-process (no network); 'in emulator' is the part spent inside the emulator's handlers "
        "(OpenAI's side); the rest is sorahook's: the client, the state machine, events and outbox rows."
    )
    goal = 150
    ok = listed.calls <= goal and listed.caught_up == jobs
    print(
        f"goal: at most {goal} calls for the pass, every job caught up: {'met' if ok else 'NOT MET'} "
        f"({jobs / max(listed.calls, 1):.0f} jobs per call)"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="in-flight videos (default 10,000)")
    parser.add_argument(
        "--naive-jobs", type=int, default=1_000, help="backlog the naive pass is timed over (default 1,000)"
    )
    parser.add_argument("--naive-full", action="store_true", help="time the naive pass over all --jobs")
    parser.add_argument("--max-calls", type=int, default=150, help="the per-pass ceiling (default 150)")
    args = parser.parse_args()
    naive_jobs = args.jobs if args.naive_full else min(args.naive_jobs, args.jobs)
    status = asyncio.run(_run(args.jobs, naive_jobs, args.max_calls))
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
