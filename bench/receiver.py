"""Benchmark POST /webhooks/openai against a bare Starlette endpoint under the same uvicorn and the same load.

Four servers run in their own processes with identical uvicorn settings (uvloop, httptools, one worker,
no access log), pinned to core 0: the full sorahook app on a fresh SQLite file (under the protocol
`sorahook serve` runs, httptools with the client limits of service/server.py); a bare Starlette app
whose one route reads the body and answers 204; and, for scale, the naive receiver the issue describes
(standardwebhooks' own `verify`, then one INSERT and one COMMIT per request, same WAL and
synchronous=FULL); and sorahook as it runs for users ("workers"): the same app with its workers on,
the refresher and the archiver talking to a local OpenAI stub in its own process on loopback (the stub
counts the calls). A load generator (`bench.loadgen`) runs in another process pinned to core 1. Rounds
alternate bare, naive, full, workers, bare ... so drift hits all alike; each
round measures closed-loop maximum throughput and open-loop latency at a fixed offered rate. Every
request is a distinct signed `video.completed` webhook, so every one takes the receiver's whole path:
verify, dedupe insert, event row, new job, state change, group commit. After the run the full server is
stopped and its SQLite file must hold exactly one received webhook and one job per 200 it answered.

With workers on, two more figures: webhook -> processed lag, from outside (probe webhooks sent beside the
open-loop load; processed = the job row for the probe's video is in the SQLite file with its status,
read-only from this process every 2 ms), and OpenAI calls per 1,000 webhooks (the stub's count once the
workers went idle: metadata reads, retrieves and list pages, apart from the archiver's downloads).

    python -m bench.receiver [--rounds 3] [--duration 5] [--connections 64] [--rate 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.loadgen import PATH, SECRET_ENV, pin_to_cpu, process_cpu_seconds

Kind = Literal["bare", "naive", "full", "workers"]
KINDS: tuple[Kind, ...] = ("bare", "naive", "full", "workers")
PROBE_RATE = 25.0  # probe webhooks per second for the lag, beside the open-loop load
PROBE_POLL = 0.002  # seconds between reads of the SQLite file while probes are outstanding
ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = '{"status":"accepted"}'
SERVER_CPU, GENERATOR_CPU = 0, 1
# Closed-loop requests are built before the clock starts; this many per second of the phase is far
# beyond what one uvicorn worker serves, so the generator never runs dry.
MAX_RATE = 25_000
THROUGHPUT_GOAL, P99_GOAL_MS = 0.50, 10.0


# --- the two servers (run in a child process: `python -m bench.receiver --serve full|bare`) ------------


def bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def sink(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    return Starlette(routes=[Route(PATH, sink, methods=["POST"])])


def naive_app(database: Path, secret: str) -> Any:
    """Verify with the library, then one INSERT and one COMMIT per request (a lock keeps commits apart)."""
    import asyncio
    import contextlib
    from collections.abc import AsyncIterator

    import aiosqlite
    from standardwebhooks import Webhook, WebhookVerificationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    hook = Webhook(secret)
    lock = asyncio.Lock()
    state: dict[str, aiosqlite.Connection] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conn = await aiosqlite.connect(str(database), isolation_level=None)
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS webhooks (webhook_id TEXT PRIMARY KEY, type TEXT, body TEXT)"
        )
        state["conn"] = conn
        yield
        await conn.close()

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            event = hook.verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError):
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        async with lock:
            conn = state["conn"]
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(
                "INSERT OR IGNORE INTO webhooks VALUES (?, ?, ?)",
                (request.headers["webhook-id"], event["type"], body.decode()),
            )
            await conn.execute("COMMIT")
        return Response(ACCEPTED, media_type="application/json")

    return Starlette(routes=[Route(PATH, receive, methods=["POST"])], lifespan=lifespan)


def full_app(database: Path, secret: str, openai_url: str | None, stats: dict[str, Any]) -> Any:
    """sorahook; with `openai_url` (the stub's), its workers run against it as they would against OpenAI."""
    from service.app import Runtime, create_app
    from service.config import Settings, new_webhook_secret
    from service.logs import configure_logging

    def on_ready(rt: Runtime) -> None:
        stats["runtime"] = rt

    settings = Settings(
        database_path=database,
        webhook_secrets=(secret,),
        admin_token="bench-token-123",
        callback_secret=new_webhook_secret(),
        log_format="console",
        log_level="warning",
        openai_api_keys=("bench-openai-key",),
        openai_base_url=f"{openai_url}/v1" if openai_url else "http://127.0.0.1:9/v1",
    )
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings, start_workers=openai_url is not None, on_ready=on_ready)


def stub_app() -> Any:
    """A stand-in OpenAI for the workers: every video exists and is completed; it counts the calls.

    The load generator names videos `video_<run><7-digit sequence>` in the order it sends their webhooks,
    so the stub lists them as if OpenAI had made them in that order (videos of one length finish in the
    order they were made): `GET /v1/videos?order=desc&after=<id>` pages down the sequence from that id.
    """
    from collections import Counter

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    calls: Counter[str] = Counter()
    created = int(time.time()) - 60

    def video(video_id: str) -> dict[str, Any]:
        now = int(time.time())
        return {
            "id": video_id,
            "object": "video",
            "model": "sora-2",
            "status": "completed",
            "progress": 100,
            "created_at": created,
            "completed_at": now,
            "expires_at": now + 86400,
            "seconds": "4",
            "size": "720x1280",
        }

    async def retrieve(request: Request) -> Response:
        calls["retrieve"] += 1
        return JSONResponse(video(request.path_params["video_id"]))

    async def listing(request: Request) -> Response:
        calls["list"] += 1
        limit = min(100, int(request.query_params.get("limit", "20")))
        after = request.query_params.get("after") or ""
        stem, digits = after[:-7], after[-7:]
        page: list[dict[str, Any]] = []
        if after.startswith("video_") and digits.isdigit():
            start = int(digits)
            page = [video(f"{stem}{n:07d}") for n in range(start - 1, max(-1, start - 1 - limit), -1)]
        has_more = bool(page) and page[-1]["id"][-7:] != "0000000"
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": has_more,
            }
        )

    async def content(request: Request) -> Response:
        calls["content"] += 1
        return Response(b"\x00" * 4096, media_type="video/mp4")

    async def counted(request: Request) -> Response:
        return JSONResponse(dict(calls))

    return Starlette(
        routes=[
            Route("/v1/videos", listing, methods=["GET"]),
            Route("/v1/videos/{video_id}", retrieve, methods=["GET"]),
            Route("/v1/videos/{video_id}/content", content, methods=["GET"]),
            Route("/_calls", counted, methods=["GET"]),
        ]
    )


def serve(
    kind: Kind | Literal["stub"],
    port: int,
    database: Path | None,
    openai_url: str | None,
    profile: Path | None,
) -> None:
    import uvicorn

    stats: dict[str, Any] = {}
    if kind != "stub":
        pin_to_cpu(SERVER_CPU)
    if kind in ("full", "workers"):
        assert database is not None, "--serve full needs --db"
        app = full_app(database, os.environ[SECRET_ENV], openai_url if kind == "workers" else None, stats)
    elif kind == "stub":
        app = stub_app()
    elif kind == "naive":
        assert database is not None, "--serve naive needs --db"
        app = naive_app(database, os.environ[SECRET_ENV])
    else:
        app = bare_app()
    http: Any = "httptools"
    if kind in (
        "full",
        "workers",
    ):  # the protocol `sorahook serve` runs: uvicorn's httptools plus the client limits
        from service.server import Refusals, ServerLimits, limited_protocol, refusal_counter

        refusals = Refusals(refusal_counter(app.state.runtime.metrics.connections_refused))
        http = limited_protocol(ServerLimits(), refusals)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=http,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        workers=1,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGTERM once it has shut down gracefully; let that land here, so we can report.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if profile is not None:
        import cProfile

        with cProfile.Profile() as prof:
            server.run()
        prof.dump_stats(profile)
    else:
        server.run()
    rt = stats.get("runtime")
    if rt is not None:  # how well the writer grouped commits
        print(json.dumps({"commits": rt.store.commits, "committed_ops": rt.store.committed_ops}), flush=True)


# --- orchestration --------------------------------------------------------------------------------------


@dataclass
class Server:
    kind: Kind | Literal["stub"]
    proc: subprocess.Popen[str]
    port: int
    database: Path | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    kind: Kind | Literal["stub"], tmp: Path, env: dict[str, str], openai_url: str | None = None
) -> Server:
    port = free_port()
    database = tmp / kind / "sorahook.db" if kind not in ("bare", "stub") else None
    cmd = [sys.executable, "-m", "bench.receiver", "--serve", kind, "--port", str(port)]
    if database is not None:
        database.parent.mkdir()
        cmd += ["--db", str(database)]
    if openai_url is not None:
        cmd += ["--openai-url", openai_url]
    if os.environ.get("BENCH_PROFILE_DIR"):
        cmd += ["--profile", str(Path(os.environ["BENCH_PROFILE_DIR"]) / f"{kind}.prof")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the {kind} server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Server(kind, proc, port, database)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"bench: the {kind} server did not listen on port {port} within 30 s")


def stop_server(server: Server) -> dict[str, Any]:
    """SIGTERM (uvicorn's graceful stop: the store commits and closes); return what the server printed."""
    if server.proc.poll() is None:
        server.proc.terminate()
    try:
        out, _ = server.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        out, _ = server.proc.communicate()
    for line in reversed((out or "").splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return {}


def wait_until_idle(servers: list[Server], limit: float = 60.0) -> float:
    """Wait until no server is busy (the full one's workers catch up after a phase); return the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = [process_cpu_seconds(s.proc.pid) or 0.0 for s in servers]
        time.sleep(0.25)
        after = [process_cpu_seconds(s.proc.pid) or 0.0 for s in servers]
        if all(b - a < 0.05 * 0.25 for a, b in zip(before, after, strict=True)):
            break
    return time.monotonic() - started


def run_load(server: Server, mode: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    duration = args.duration if mode == "closed" else args.open_duration
    warmup = args.warmup if mode == "closed" else 0.5
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        f"--port={server.port}",
        f"--mode={mode}",
        f"--connections={args.connections}",
        f"--duration={duration}",
        f"--warmup={warmup}",
        f"--rate={args.rate}",
        f"--capacity={int(MAX_RATE * (duration + warmup))}",
        f"--server-pid={server.proc.pid}",
        f"--cpu={GENERATOR_CPU}",
    ]
    if server.kind != "bare":
        cmd += ["--expect-status=200", f"--expect-body={ACCEPTED}"]
    else:
        cmd += ["--expect-status=204", "--expect-body="]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=duration + warmup + 120
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"bench: the load generator failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def count_rows(database: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {
            table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("received_webhooks", "jobs", "events")
        }
    finally:
        conn.close()


# --- reporting ------------------------------------------------------------------------------------------


def _cpu(value: float | None) -> str:
    return "   -" if value is None else f"{value * 100:>3.0f}%"


def _us_per_request(phase: dict[str, Any]) -> float:
    """Server CPU per answered request: unlike req/s, barely moved by other processes taking the core."""
    return float(phase["server_cpu"] or 0.0) / max(float(phase["throughput"]), 1e-9) * 1e6


def _row(label: str, closed: dict[str, Any], opened: dict[str, Any]) -> str:
    return (
        f"{label:<10}{closed['throughput']:>9,.0f}{closed['p50_ms']:>8.2f}{closed['p99_ms']:>8.2f}"
        f"{closed['us_per_req']:>7.0f}"
        f"  {_cpu(closed['server_cpu'])} {_cpu(closed['gen_cpu'])} {_cpu(closed['other_cpu'])}"
        f" |{opened['throughput']:>8,.0f}{opened['p50_ms']:>8.2f}{opened['p99_ms']:>8.2f}"
        f"{opened['max_ms']:>8.1f}  {_cpu(opened['server_cpu'])}"
    )


def _median(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s[key] is not None]
    return statistics.median(values) if values else None


def report(
    results: dict[Kind, list[tuple[dict[str, Any], dict[str, Any]]]], args: argparse.Namespace
) -> None:
    print(
        f"\n{' ':<10}{'closed loop, ' + str(args.connections) + ' connections':<50}"
        f" | open loop, {args.rate:,.0f} req/s offered"
    )
    print(
        f"{'run':<10}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'us/req':>7}  {'srv':>4} {'gen':>4} {'oth':>4}"
        f" |{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}  {'srv':>4}"
    )
    for r in range(args.rounds):
        for kind in KINDS:
            closed, opened = results[kind][r]
            print(_row(f"{r + 1} {kind}", closed, opened))
    print("-" * 98)
    for kind in KINDS:
        closed_runs = [c for c, _ in results[kind]]
        open_runs = [o for _, o in results[kind]]
        print(
            _row(
                f"median {kind}",
                {k: _median(closed_runs, k) for k in _COLUMNS},
                {k: _median(open_runs, k) for k in _COLUMNS},
            )
        )
    print(
        "srv, gen, oth: CPU used by the server, the load generator and every other process on the machine"
        " (100% = one core);\nus/req: server CPU per request; open-loop latency counts from the scheduled start"
    )


def _median_of(
    results: dict[Kind, list[tuple[dict[str, Any], dict[str, Any]]]],
    kind: Kind,
    pick: Callable[[tuple[dict[str, Any], dict[str, Any]]], float],
) -> float:
    """The median over the rounds of one figure of one server's (closed, open) pairs."""
    return statistics.median(pick(pair) for pair in results[kind])


_COLUMNS = ("throughput", "p50_ms", "p99_ms", "max_ms", "us_per_req", "server_cpu", "gen_cpu", "other_cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.receiver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bare, naive, full (default 3)")
    parser.add_argument("--duration", type=float, default=4.0, help="closed-loop measured seconds (4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="closed-loop warm-up seconds (1)")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections (64)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered req/s (1000)")
    parser.add_argument("--open-duration", type=float, default=4.0, help="open-loop measured seconds (4)")
    parser.add_argument("--serve", choices=(*KINDS, "stub"), help=argparse.SUPPRESS)
    parser.add_argument("--openai-url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.db, args.openai_url, args.profile)
        return 0
    return run(args)


def run(args: argparse.Namespace) -> int:
    from service.config import new_webhook_secret

    env = {**os.environ, SECRET_ENV: new_webhook_secret()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cores = os.cpu_count() or 1
    print(
        f"receiver bench: {cores} CPUs, servers on core {SERVER_CPU}, generator on core {GENERATOR_CPU};"
        f" uvicorn uvloop+httptools, 1 worker; {args.rounds} rounds of bare/naive/full,"
        f" {args.warmup:g}+{args.duration:g} s closed loop and {args.open_duration:g} s open loop each"
    )
    if cores < 2:
        print("warning: one CPU, so the generator and the server share it; figures are pessimistic")
    results: dict[Kind, list[tuple[dict[str, Any], dict[str, Any]]]] = {kind: [] for kind in KINDS}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sorahook-bench-") as tmp:
        servers: dict[Kind, Server] = {}
        stats: dict[str, Any] = {}
        stub: Server | None = None
        lags: list[float] = []
        probes = 0
        try:
            stub = start_server("stub", Path(tmp), env)
            stub_url = f"http://127.0.0.1:{stub.port}"
            for kind in KINDS:
                servers[kind] = start_server(kind, Path(tmp), env, stub_url if kind == "workers" else None)
            for r in range(args.rounds):
                for kind in KINDS:
                    waited = wait_until_idle(list(servers.values()))
                    closed = run_load(servers[kind], "closed", args, env)
                    waited += wait_until_idle(list(servers.values()))
                    if kind == "workers":
                        with Probe(servers[kind], env[SECRET_ENV]) as probe:
                            opened = run_load(servers[kind], "open", args, env)
                        lags.extend(probe.lags)
                        probes += probe.sent
                    else:
                        opened = run_load(servers[kind], "open", args, env)
                    for phase in (closed, opened):
                        phase["us_per_req"] = _us_per_request(phase)
                    results[kind].append((closed, opened))
                    print(
                        f"  round {r + 1}/{args.rounds} {kind}: {closed['throughput']:,.0f} req/s,"
                        f" p99 at {args.rate:,.0f} req/s {opened['p99_ms']:.2f} ms"
                        + (f" (waited {waited:.0f} s for the servers to go idle)" if waited > 2 else ""),
                        flush=True,
                    )
            wait_until_idle(list(servers.values()))
            calls = stub_calls(stub)
        finally:
            for server in servers.values():
                if server.kind == "full":
                    stats = stop_server(server)
                else:
                    stop_server(server)
            if stub is not None:
                stop_server(stub)
        database = servers["full"].database
        assert database is not None
        rows = count_rows(database)
        assert servers["workers"].database is not None
        rows.update({f"workers_{k}": v for k, v in count_rows(servers["workers"].database).items()})
        rows["probes"] = probes
        naive_db = servers["naive"].database
        assert naive_db is not None
        with contextlib.closing(sqlite3.connect(f"file:{naive_db}?mode=ro", uri=True)) as conn:
            rows["naive"] = int(conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0])
    floor = store_floor(args, env)
    report(results, args)
    ok = check(results, rows, stats)
    summarize(results, args, time.monotonic() - started, floor)
    summarize_workers(results, args, lags, calls, rows["workers_received_webhooks"])
    return 0 if ok else 1


def store_floor(args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """The store's CPU per webhook without HTTP, on the server's core (see bench.store_floor)."""
    cmd = [sys.executable, "-m", "bench.store_floor", f"--batch={args.connections}", f"--cpu={SERVER_CPU}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"bench: bench.store_floor failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check(
    results: dict[Kind, list[tuple[dict[str, Any], dict[str, Any]]]],
    rows: dict[str, int],
    stats: dict[str, Any],
) -> bool:
    """Every request answered as expected, and every 200 left one webhook and one job in the file."""
    ok = True
    for kind in KINDS:
        phases = [phase for pair in results[kind] for phase in pair]
        sent = sum(p["sent"] for p in phases)
        expected = sum(p["expected"] for p in phases)
        errors = sum(p["errors"] for p in phases)
        others = sum(p["answered"] - p["expected"] for p in phases)
        want = "204" if kind == "bare" else "200 accepted"
        print(
            f"{kind}: {sent:,} sent, {expected:,} answered {want}, {others} other answers, "
            f"{errors} without an answer"
        )
        if others or errors or expected != sent:
            ok = False
            for p in phases:
                for line in p["unexpected"]:
                    print(f"  unexpected answer: {line}")
        if kind == "naive":
            stored = rows["naive"] == expected
            print(
                f"naive: its SQLite file holds {rows['naive']:,} webhooks: {'OK' if stored else 'MISMATCH'}"
            )
            ok = ok and stored
        if kind in ("full", "workers"):
            # The workers' file also holds the lag probes' webhooks and jobs.
            prefix, probes = ("", 0) if kind == "full" else ("workers_", rows["probes"])
            held, jobs = rows[f"{prefix}received_webhooks"], rows[f"{prefix}jobs"]
            same = held == jobs == expected + probes
            print(
                f"{kind}: the SQLite file holds {held:,} received webhooks and {jobs:,} jobs"
                f" ({rows[f'{prefix}events']:,} events) for {expected:,} accepted and {probes} probes:"
                f" {'OK' if same else 'MISMATCH'}"
            )
            ok = ok and same
    if stats.get("commits"):
        print(
            f"full: {stats['committed_ops']:,} store writes in {stats['commits']:,} commits"
            f" ({stats['committed_ops'] / stats['commits']:.1f} per commit, synchronous=FULL)"
        )
    return ok


def summarize(
    results: dict[Kind, list[tuple[dict[str, Any], dict[str, Any]]]],
    args: argparse.Namespace,
    took: float,
    floor: dict[str, float],
) -> None:
    def med(kind: Kind, pick: Callable[[tuple[dict[str, Any], dict[str, Any]]], float]) -> float:
        return _median_of(results, kind, pick)

    bare = med("bare", lambda p: p[0]["throughput"])
    full = med("full", lambda p: p[0]["throughput"])
    gen_cpu = med("bare", lambda p: p[0]["gen_cpu"])
    srv_cpu = med("bare", lambda p: p[0]["server_cpu"] or 0.0)
    p50 = med("full", lambda p: p[1]["p50_ms"])
    p99 = med("full", lambda p: p[1]["p99_ms"])
    achieved = med("full", lambda p: p[1]["throughput"])
    if gen_cpu > 0.9 and srv_cpu < 0.9:
        verdict = "the GENERATOR is the limit, so bare is understated and the ratio flattered"
    elif srv_cpu >= 0.85:
        verdict = "the server is the limit, as it should be"
    else:
        verdict = "neither is saturated: other processes took the CPU (see below)"
    print(
        f"generator: drove bare to {bare:,.0f} req/s ({bare / full:.1f}x the receiver's {full:,.0f}) using"
        f" {gen_cpu * 100:.0f}% of its core while the bare server used {srv_cpu * 100:.0f}% of its own:"
        f" {verdict}"
    )
    phases = [phase for kind in KINDS for pair in results[kind] for phase in pair]
    other = statistics.median(p["other_cpu"] or 0.0 for p in phases)
    if other > 0.15:
        print(
            f"warning: other processes used {other * 100:.0f}% of a core (median) while we measured;"
            " with 2 cores that takes from the server or the generator: rerun on a quiet machine"
        )
    naive = med("naive", lambda p: p[0]["throughput"])
    print(
        f"naive receiver (one commit per request): {naive:,.0f} req/s, {naive / bare:.2f} of bare;"
        f" sorahook's receiver does {full / naive:.1f}x the naive one's throughput"
    )
    bare_us = med("bare", lambda p: p[0]["us_per_req"])
    full_us = med("full", lambda p: p[0]["us_per_req"])
    print(
        f"server CPU per request (closed loop): bare {bare_us:.0f} us, full {full_us:.0f} us, so by CPU cost"
        f" alone the receiver reaches {bare_us / full_us:.2f} of bare (a figure other load barely moves)"
    )
    store_us, sql_us = floor["store_us"], floor["sql_us"]
    print(
        f"the store without HTTP (batches of {floor['batch']:.0f}, synchronous=FULL, the server's core):"
        f" its write path {store_us:.0f} us per webhook, that path's SQL replayed alone {sql_us:.0f} us"
    )
    full_cpu = med("full", lambda p: p[0]["server_cpu"] or 0.0)
    budget_us = full_cpu / (THROUGHPUT_GOAL * bare) * 1e6
    print(
        f"budget: a ratio of {THROUGHPUT_GOAL:.2f} is {THROUGHPUT_GOAL * bare:,.0f} req/s, {budget_us:.0f} us per"
        f" webhook at the {full_cpu * 100:.0f}% of its core the full server gets; bare's {bare_us:.0f} us + the"
        f" SQL alone {sql_us:.0f} us leave {budget_us - bare_us - sql_us:.0f} us for verifying, parsing, the"
        f" store's Python and the JSON answer. sorahook: {full_us:.0f} us = bare {bare_us:.0f} + store"
        f" {store_us:.0f} + {full_us - bare_us - store_us:.0f} (the rest)"
    )
    print(f"took {took:.0f} s")
    ratio = full / bare
    print(
        f"receiver/bare throughput ratio: {ratio:.2f} (goal >= {THROUGHPUT_GOAL:.2f}); "
        f"p99 at {args.rate:,.0f} rps: {p99:.1f} ms (goal < {P99_GOAL_MS:g} ms); "
        f"p50 {p50:.2f} ms, achieved {achieved:,.0f} req/s"
    )


# --- with workers on: the lag from outside, and the OpenAI calls ------------------------------------------


class Probe:
    """Probe webhooks beside the load, each timed from its send until its job row is in the SQLite file.

    Two threads of this process: one sends `PROBE_RATE` signed webhooks a second on a keep-alive
    connection (its own video ids), one reads the file read-only every `PROBE_POLL` seconds for the jobs
    of the probes still outstanding. Measured from outside the server, so it holds whatever the receiver
    does inside (one transaction, or an inbox and a processor).
    """

    def __init__(self, server: Server, secret: str) -> None:
        assert server.database is not None
        self.server, self.secret, self.database = server, secret, server.database
        self.sent = 0
        self.lags: list[float] = []
        self._outstanding: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._watch)]

    def __enter__(self) -> Probe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._threads[0].join()
        deadline = time.monotonic() + 30
        while self._outstanding and time.monotonic() < deadline:
            time.sleep(0.01)
        self._threads[1].join()

    def _send(self) -> None:
        import http.client

        from service.signing import Signer

        signer, run = Signer(), secrets.token_hex(4)
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        n, start = 0, time.monotonic()
        while not self._stop.is_set():
            video_id = f"video_probe{run}{n:05d}"
            now = int(time.time())
            body = (
                f'{{"id":"evt_probe{run}{n:05d}","object":"event","created_at":{now},'
                f'"type":"video.completed","data":{{"id":"{video_id}"}}}}'
            )
            msg_id = f"msg_probe{run}{n:05d}"
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": signer.sign(msg_id, now, body, self.secret),
            }
            with self._lock:
                self._outstanding[video_id] = time.time()
            conn.request("POST", PATH, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                with self._lock:
                    del self._outstanding[video_id]
            else:
                self.sent += 1
            n += 1
            time.sleep(max(0.0, start + n / PROBE_RATE - time.monotonic()))
        conn.close()

    def _watch(self) -> None:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5.0)
        try:
            while not (self._stop.is_set() and not self._outstanding):
                with self._lock:
                    waiting = dict(self._outstanding)
                if waiting:
                    marks = ",".join("?" * len(waiting))
                    seen = conn.execute(
                        f"SELECT resource_id FROM jobs WHERE resource_id IN ({marks}) AND status = 'completed'",
                        list(waiting),
                    ).fetchall()
                    now = time.time()
                    with self._lock:
                        for (video_id,) in seen:
                            self.lags.append(now - self._outstanding.pop(video_id))
                time.sleep(PROBE_POLL)
        finally:
            conn.close()


def stub_calls(stub: Server | None) -> dict[str, int]:
    import urllib.request

    if stub is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{stub.port}/_calls", timeout=10) as answer:
        counted: dict[str, int] = json.loads(answer.read())
    return counted


def summarize_workers(
    results: dict[Kind, list[tuple[dict[str, Any], dict[str, Any]]]],
    args: argparse.Namespace,
    lags: list[float],
    calls: dict[str, int],
    webhooks: int,
) -> None:
    bare = _median_of(results, "bare", lambda p: p[0]["throughput"])
    workers = _median_of(results, "workers", lambda p: p[0]["throughput"])
    p99 = _median_of(results, "workers", lambda p: p[1]["p99_ms"])
    print(
        f"with workers on (refresher and archiver against a local OpenAI stub): {workers:,.0f} req/s,"
        f" {workers / bare:.2f} of bare (goal >= {THROUGHPUT_GOAL:.2f}); p99 at {args.rate:,.0f} req/s"
        f" {p99:.1f} ms (goal < {P99_GOAL_MS:g} ms)"
    )
    if lags:
        ordered = sorted(lags)
        p50_lag = ordered[len(ordered) // 2] * 1e3
        p99_lag = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
        print(
            f"webhook -> processed lag at {args.rate:,.0f} webhooks/s offered ({len(lags)} probes, job row"
            f" read every {PROBE_POLL * 1e3:.0f} ms): p50 {p50_lag:.1f} ms, p99 {p99_lag:.1f} ms"
        )
    metadata = calls.get("retrieve", 0) + calls.get("list", 0)
    per_1000 = metadata / max(webhooks, 1) * 1000
    print(
        f"OpenAI calls per 1,000 webhooks: {per_1000:.1f} ({calls.get('retrieve', 0):,} retrieves and"
        f" {calls.get('list', 0):,} list pages for {webhooks:,} webhooks); the archiver's downloads"
        f" besides: {calls.get('content', 0):,}"
    )


if __name__ == "__main__":
    sys.exit(main())
