"""The soak's interval lines: every `--interval` s, the server's memory, database and CPU, and the traffic.

A line shows the server's RSS (VmRSS, and its anonymous part), database + WAL size, webhook throughput
and latency p50/p99 over the interval (open loop: from each webhook's scheduled time), deliveries
succeeded/s and attempts/s, the delivery backlog (`sorahook_delivery_backlog`, which counts the failing
and hanging subscribers' retries too), and the CPU of the server, the subscribers and this generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp

from bench.delivery import _percentile
from bench.loadgen import process_cpu_seconds
from bench.soak.server import Api, Findings
from bench.soak.subscribers import Subscribers
from bench.soak.traffic import Traffic


@dataclass
class Sample:
    t: float
    phase: str
    rss_kb: int
    anon_kb: int
    db_bytes: int
    wal_bytes: int
    sent_rate: float
    accepted_rate: float
    p50_ms: float
    p99_ms: float
    jobs_rate: float
    delivered_rate: float
    attempt_rate: float
    backlog: float
    cpu: float
    subs_cpu: float
    own_cpu: float


HEADER = (
    f"{'t s':>5} {'phase':<8}{'sent/s':>7}{'ok/s':>6}{'p50 ms':>8}{'p99 ms':>8}{'jobs/s':>7}"
    f"{'dlv/s':>7}{'att/s':>7}{'backlog':>8}{'RSS MB':>8}{'anon':>7}{'db MB':>7}{'wal MB':>7}"
    f"{'cpu':>5}{'subs':>5}{'gen':>5}"
)


def line(sample: Sample) -> str:
    return (
        f"{sample.t:>5.0f} {sample.phase:<8}{sample.sent_rate:>7.0f}{sample.accepted_rate:>6.0f}"
        f"{sample.p50_ms:>8.1f}{sample.p99_ms:>8.1f}{sample.jobs_rate:>7.1f}"
        f"{sample.delivered_rate:>7.0f}{sample.attempt_rate:>7.0f}{sample.backlog:>8.0f}"
        f"{sample.rss_kb / 1024:>8.1f}{sample.anon_kb / 1024:>7.1f}"
        f"{sample.db_bytes / 1e6:>7.1f}{sample.wal_bytes / 1e6:>7.1f}{sample.cpu * 100:>4.0f}%"
        f"{sample.subs_cpu * 100:>4.0f}%{sample.own_cpu * 100:>4.0f}%"
    )


class Sampler:
    """Prints a line per interval until stopped; `phase` is set by the run (warm-up, traffic, drain)."""

    def __init__(
        self, api: Api, subs: Subscribers, traffic: Traffic, findings: Findings, interval: float
    ) -> None:
        self.api, self.subs, self.traffic, self.findings = api, subs, traffic, findings
        self.interval = interval
        self.phase = "warm-up"
        self.started = 0.0  # the event loop's time at the start of the traffic
        self.samples: list[Sample] = []

    async def run(self, stop: asyncio.Event) -> None:
        service = self.api.service
        loop = asyncio.get_running_loop()
        last_t = loop.time()
        last_cpu = process_cpu_seconds(service.proc.pid) or 0.0
        last_subs = process_cpu_seconds(self.subs.proc.pid) or 0.0
        last_own = time.process_time()
        first = await self.api.metrics()
        last_delivered, last_attempts = first.get("deliveries_succeeded", 0.0), first.get("attempts", 0.0)
        print(HEADER, flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            now = loop.time()
            dt = max(now - last_t, 1e-6)
            window = self.traffic.take_window()
            cpu = process_cpu_seconds(service.proc.pid) or last_cpu
            subs_cpu = process_cpu_seconds(self.subs.proc.pid) or last_subs
            own_cpu = time.process_time()
            try:
                m = await self.api.metrics()
            except aiohttp.ClientError as exc:
                self.findings.failures.append(f"GET /metrics failed: {exc}")
                m = {}
            delivered = m.get("deliveries_succeeded", last_delivered)
            attempts = m.get("attempts", last_attempts)
            rss, anon = service.rss_kb()
            db, wal = service.db_sizes()
            sample = Sample(
                t=now - self.started,
                phase=self.phase,
                rss_kb=rss,
                anon_kb=anon,
                db_bytes=db,
                wal_bytes=wal,
                sent_rate=window.sent / dt,
                accepted_rate=window.accepted / dt,
                p50_ms=_percentile(window.latencies, 50) * 1e3,
                p99_ms=_percentile(window.latencies, 99) * 1e3,
                jobs_rate=window.jobs / dt,
                delivered_rate=(delivered - last_delivered) / dt,
                attempt_rate=(attempts - last_attempts) / dt,
                backlog=m.get("backlog", float("nan")),
                cpu=(cpu - last_cpu) / dt,
                subs_cpu=(subs_cpu - last_subs) / dt,
                own_cpu=(own_cpu - last_own) / dt,
            )
            self.samples.append(sample)
            last_t, last_cpu, last_delivered = now, cpu, delivered
            last_subs, last_own, last_attempts = subs_cpu, own_cpu, attempts
            print(line(sample), flush=True)
