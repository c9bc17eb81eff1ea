"""Test support: settings on a tmp SQLite file, real uvicorn servers on loopback, signed webhooks."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from service.config import Settings, new_webhook_secret
from service.signing import Signer
from service.store.records import IncomingWebhook
from tests import postgres

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def live_server(app: ASGIApp, port: int = 0) -> AsyncIterator[str]:
    """Run `app` under uvicorn on a loopback port inside this event loop; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        await task


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        database_path=tmp_path / "sorahook.db",
        webhook_secrets=(new_webhook_secret(),),
        admin_token="test-admin-token",
        callback_secret=new_webhook_secret(),
        allow_private_targets=True,
        retry_schedule=(0.0, 0.05, 0.1),
        delivery_timeout=2.0,
        reconcile_interval=3600.0,
        reconcile_after=3600.0,
        log_format="console",
        secret_key=b"k" * 32,
    )
    if postgres.suite_on_postgres() and "database_path" not in overrides and "postgres_url" not in overrides:
        overrides["postgres_url"] = postgres.fresh_url()
    return replace(base, **overrides)


def signed_webhook(
    secret: str,
    event_type: str = "video.completed",
    resource_id: str | None = None,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    created_at: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    ts = int(time.time()) if timestamp is None else timestamp
    body = json.dumps(
        {
            "id": f"evt_{secrets.token_hex(8)}",
            "object": "event",
            "created_at": created_at or ts,
            "type": event_type,
            "data": {"id": resource_id or f"video_{secrets.token_hex(8)}"},
        }
    )
    headers = Signer().headers(webhook_id or f"wh_{secrets.token_hex(8)}", ts, body, [secret])
    return body.encode(), headers


def auth(token: str = "test-admin-token") -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async predicate until it returns something truthy (never a wall-clock assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def get_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """GET /v1/jobs/{id}, which must answer 200."""
    response = await client.get(f"/v1/jobs/{job_id}", headers=auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, *statuses: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The job once its status is one of `statuses`."""

    async def check() -> dict[str, Any] | None:
        job = await get_job(client, job_id)
        return job if job["status"] in statuses else None

    return dict(await wait_until(check, timeout=timeout))


def incoming_webhook(i: int, now: float) -> IncomingWebhook:
    """The i-th `video.completed` webhook for `video_{i}`, as the receiver hands it to the store."""
    data: dict[str, Any] = {"id": f"video_{i}"}
    body = {"id": f"evt_{i}", "object": "event", "type": "video.completed", "data": data}
    return IncomingWebhook(
        f"wh_{i}", int(now), f"evt_{i}", "video.completed", f"video_{i}", int(now), json.dumps(body), data
    )


class ServiceProcess:
    """`python -m service serve` as a real child process on a loopback port."""

    def __init__(
        self, tmp_path: Path, env: dict[str, str], port: int | None = None, emulator: bool = False
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        if postgres.suite_on_postgres() and "SORAHOOK_DATABASE_URL" not in env:
            self.env["SORAHOOK_DATABASE_URL"] = postgres.fresh_url()
        self.emulator = emulator
        self.log = tmp_path / f"service-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "service", "serve", "--port", str(self.port)]
        if self.emulator:
            args.append("--emulator")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"service did not become ready: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@asynccontextmanager
async def emulated_service(
    tmp_path: Path, *, emulator_options: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, Any, Settings]]:
    """The full service on a loopback port with the emulator mounted as OpenAI (like `serve --emulator`)."""
    from starlette.routing import Mount

    from service.app import create_app
    from service.emulator import Emulator, EmulatorConfig

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, openai_base_url=f"{base}/_emulator/v1", emulator=True, **overrides)
    options = {"duration": 0.3, **(emulator_options or {})}
    emulator = Emulator(
        EmulatorConfig(
            webhook_url=f"{base}/webhooks/openai", webhook_secret=settings.webhook_secrets[0], **options
        )
    )
    app = create_app(
        settings, extra_routes=[Mount("/_emulator", app=emulator.app)], background=[emulator.run]
    )
    try:
        async with live_server(app, port=port) as url:
            yield url, emulator, settings
    finally:
        await emulator.aclose()
