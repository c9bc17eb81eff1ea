"""`python -m bench.soak`: start the subscribers and the service, run the traffic, drain, audit, report."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

import bench.soak
from bench.delivery import _stop
from bench.soak.checks import Audit
from bench.soak.report import report
from bench.soak.sampler import Sampler
from bench.soak.server import (
    DELIVERY_TIMEOUT,
    RETRY_SCHEDULE,
    Api,
    Findings,
    Service,
    read_log,
    start_service,
    stop_service,
)
from bench.soak.subscribers import (
    FLAKY_RATE,
    ROLES,
    Subscribers,
    describe_roles,
    parse_roles,
    serve_subscribers,
    start_subscribers,
)
from bench.soak.traffic import Traffic


async def _soak(args: argparse.Namespace, service: Service, subs: Subscribers) -> bool:
    findings = Findings()
    rng = random.Random(args.seed)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        api = Api(session, service, findings)
        await api.until_ready()
        secret = (service.data_dir / "emulator_webhook_secret").read_text().strip()
        traffic = Traffic(api, findings, secret, rng, args.rate, args.job_rate)
        subscriptions = await api.subscribe((port, subs.label(port)) for port in subs.roles)
        await subs.set_secrets(session, {port: secret for port, (_, secret) in subscriptions.items()})
        sub_ids = {port: sub_id for port, (sub_id, _) in subscriptions.items()}
        audit = Audit(api, subs, sub_ids, traffic, findings, rng, args.concurrency)
        sampler = Sampler(api, subs, traffic, findings, args.interval)
        loop = asyncio.get_running_loop()
        sampler.started = loop.time()
        until = sampler.started + args.duration
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop_sampling))

        async def phase_clock() -> None:
            await asyncio.sleep(min(args.warmup, args.duration))
            sampler.phase = "traffic"

        clock = asyncio.create_task(phase_clock())
        await asyncio.gather(traffic.webhooks(until), traffic.submissions(until))
        await traffic.settle()
        traffic_s = loop.time() - sampler.started
        clock.cancel()
        db_sizes = service.db_sizes()
        sampler.phase = "drain"
        # The failing and hanging subscribers are left out: their deliveries end dead after the last
        # attempt of the schedule, or are still being retried (accounted for at the end).
        drain_s, open_ports, left_jobs = await audit.drain(subs.ports("healthy", "flaky"), args.drain)
        stop_sampling.set()
        await sampling
        healthy_open = [subs.label(p) for p in open_ports if subs.roles[p] == "healthy"]
        if healthy_open:
            findings.failures.append(
                f"after {drain_s:.0f} s of drain, healthy subscribers still had deliveries to try: "
                f"{', '.join(healthy_open)}"
            )
        others = [subs.label(p) for p in open_ports if subs.roles[p] != "healthy"]
        if others:
            findings.notes.append(f"still retrying after the drain: {', '.join(others)}")
        if left_jobs:
            findings.failures.append(f"{left_jobs} API jobs not terminal after {drain_s:.0f} s of drain")
        through_api = await audit.through_api(args.verify_seconds, args.timeline_sample)
        # Events emitted during the audit (archive outcomes, mostly) get a short while to reach the healthy.
        await audit.drain(subs.ports("healthy"), 15.0)
        drained_at = time.time()
        rss_drained = service.rss_kb()
        traffic.pool.close()
        exit_status = stop_service(service)
        records = await subs.records(session)  # the service is stopped: nothing more arrives
    db_final = service.db_sizes()
    db = audit.database(records, through_api["timeline"], drained_at)
    log_levels, log_errors = read_log(service.log)
    extra = {
        "traffic_s": traffic_s,
        "drain_s": drain_s,
        "db_sizes": db_sizes,
        "db_final": db_final,
        "rss_drained": rss_drained,
        "exit_status": exit_status,
        "log_levels": log_levels,
        "log_errors": log_errors,
    }
    return report(args, traffic, subs, sampler.samples, findings, through_api, db, records, extra)


def _run_soak(args: argparse.Namespace) -> bool:
    import uvloop

    tmp = Path(tempfile.mkdtemp(prefix="sorahook-soak-"))
    subs = start_subscribers(args.subscribers, hang=DELIVERY_TIMEOUT * 5, seed=args.seed)
    service: Service | None = None
    ok = False
    try:
        service = start_service(tmp, args.profile)
        print(
            f"soak: {args.duration:g} s ({args.warmup:g} s warm-up) at {args.rate:g} webhooks/s and "
            f"{args.job_rate:g} jobs/s against `sorahook serve --emulator` (pid {service.proc.pid}, "
            f"port {service.port}); subscribers: {describe_roles(subs.roles.values())} (flaky: "
            f"{FLAKY_RATE:.0%} 500); retry schedule {RETRY_SCHEDULE} s, delivery timeout "
            f"{DELIVERY_TIMEOUT:g} s; {os.cpu_count()} CPUs; data in {tmp}",
            flush=True,
        )
        ok = uvloop.run(_soak(args, service, subs))
    finally:
        if service is not None and service.proc.poll() is None:
            stop_service(service)
        _stop(subs.proc)
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"data dir and server log kept in {tmp}")
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=bench.soak.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic (180)")
    parser.add_argument("--rate", type=float, default=30.0, help="webhooks per second (30)")
    parser.add_argument("--job-rate", type=float, default=3.0, help="POST /v1/jobs per second (3)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the start RSS (30)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument("--drain", type=float, default=60.0, help="longest wait for the backlog (60)")
    parser.add_argument("--verify-seconds", type=float, default=90.0, help="budget to check jobs (90)")
    parser.add_argument("--timeline-sample", type=int, default=300, help="job timelines checked (300)")
    parser.add_argument("--concurrency", type=int, default=16, help="API calls in flight in the audit (16)")
    parser.add_argument(
        "--subscribers", default=ROLES, help=f"roles, one per subscriber ({ROLES}); at least one healthy"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the data dir even on PASS")
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, stats to this file")
    parser.add_argument("--serve-subscribers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hang", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_subscribers:
        serve_subscribers(args.subscribers, args.hang, args.seed)
        return
    try:
        roles = parse_roles(args.subscribers)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"--subscribers: {exc}")
    if "healthy" not in roles:
        parser.error("--subscribers: at least one must be healthy")
    if not _run_soak(args):
        sys.exit(1)


if __name__ == "__main__":
    main()
