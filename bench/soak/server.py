"""The service under test: a `sorahook serve --emulator` process on a fresh data dir, and its API.

`Findings` gathers what goes wrong over the whole run (failed checks, notes, every 5xx answer); `Api`
is the service's HTTP API as the soak calls it, recording every 5xx there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.receiver import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "soak-token-1234"
RETRY_SCHEDULE = "0,1,2,4"
DELIVERY_TIMEOUT = 2.0


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)  # each a failed check: the run FAILs
    notes: list[str] = field(default_factory=list)  # worth saying, not a failure
    errors_5xx: list[str] = field(default_factory=list)  # every answer with a 5xx status


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.data_dir / "sorahook.db"

    def db_sizes(self) -> tuple[int, int]:
        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except OSError:
                return 0

        wal = size(self.database.with_name("sorahook.db-wal")) + size(
            self.database.with_name("sorahook.db-shm")
        )
        return size(self.database), wal

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, RssAnon) of the server process in kB; (0, 0) once it is gone."""
        fields: dict[str, int] = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as handle:
                for line in handle:
                    name, _, rest = line.partition(":")
                    if name in ("VmRSS", "RssAnon"):
                        fields[name] = int(rest.split()[0])
        except OSError:
            pass
        return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def start_service(tmp: Path, profile: Path | None = None) -> Service:
    data_dir = tmp / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORAHOOK_", "OPENAI_"))}
    env.update(
        {
            "SORAHOOK_DATABASE_URL": f"sqlite:///{data_dir / 'sorahook.db'}",
            "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "SORAHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
            "SORAHOOK_EMULATOR_DURATION": "2",
            "SORAHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE,
            "SORAHOOK_DELIVERY_TIMEOUT": f"{DELIVERY_TIMEOUT:g}",
            "SORAHOOK_LOG_LEVEL": "warning",
            "SORAHOOK_RECONCILE_INTERVAL": "5",
            "SORAHOOK_RECONCILE_AFTER": "10",
        }
    )
    log = tmp / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                *("-m", "service", "serve", "--port", str(port), "--emulator"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Service(proc, port, data_dir, log)


def stop_service(service: Service, timeout: float = 30.0) -> int:
    """SIGTERM (uvicorn's graceful stop); the exit status, or -9 if it had to be killed."""
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
    try:
        return service.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
        return -9


def read_log(log: Path) -> tuple[Counter[str], list[str]]:
    """The server's log lines by level (logger/level for warnings), and the lines at error or above."""
    levels: Counter[str] = Counter()
    errors: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            level, logger = str(record.get("level", "?")), str(record.get("logger", "?"))
        except ValueError:
            level, logger = "unparsed", "?"
        levels[f"{level} ({logger})" if level in ("warning", "info") else level] += 1
        if level in ("error", "critical") or line.startswith("Traceback"):
            errors.append(line)
    return levels, errors


class Api:
    """The service's HTTP API with the admin token; every 5xx answer goes into `findings`."""

    def __init__(self, session: aiohttp.ClientSession, service: Service, findings: Findings) -> None:
        self.session, self.service, self.findings = session, service, findings
        self.auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(
            method, self.service.url + path, json=body, headers={**self.auth, **(headers or {})}
        ) as response:
            raw = await response.read()
            status, got = response.status, dict(response.headers)
        if status >= 500:
            self.findings.errors_5xx.append(f"{method} {path} -> {status} {raw[:200]!r}")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return status, payload, got

    async def until_ready(self) -> None:
        service = self.service
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                raise RuntimeError(
                    f"the service exited with status {service.proc.returncode}: see {service.log}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"{service.url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the service did not become ready in 30 s: see {service.log}")

    async def subscribe(self, ports: Iterable[tuple[int, str]]) -> dict[int, tuple[str, str]]:
        """A subscription per (port, label): port -> (subscription id, its secret)."""
        out: dict[int, tuple[str, str]] = {}
        for port, label in ports:
            status, payload, _ = await self.call(
                "POST",
                "/v1/subscriptions",
                {"url": f"http://127.0.0.1:{port}/hook", "description": f"soak {label}"},
            )
            if status != 201:
                raise RuntimeError(f"subscription refused: {status} {payload}")
            out[port] = (payload["id"], payload["secret"])
        return out

    async def metrics(self) -> dict[str, float]:
        """The figures the interval lines show, from GET /metrics."""
        async with self.session.get(f"{self.service.url}/metrics") as response:
            text = await response.text()
            if response.status >= 500:
                self.findings.errors_5xx.append(f"GET /metrics -> {response.status}")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("sorahook_delivery_backlog "):
                out["backlog"] = float(line.split()[-1])
            elif line.startswith("sorahook_delivery_attempt_duration_seconds_count"):
                out["attempts"] = float(line.split()[-1])
            elif line.startswith("sorahook_deliveries_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[f"deliveries_{outcome}"] = float(line.split()[-1])
        return out
