"""`sorahook listen`: a local subscriber that verifies and prints every event it is sent, like `stripe listen`.

It serves HTTP on 127.0.0.1; with `subscribe` it creates a subscription to itself through the admin API,
verifies each delivery with that subscription's secret, and deletes the subscription when it stops
(SIGINT or SIGTERM). Without `subscribe` it verifies with a secret it is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
from aiohttp import web

from service.config import ConfigError, check_webhook_secret, data_dir_of, is_header_safe
from service.signing import Verifier

DEFAULT_SERVICE_URL = "http://127.0.0.1:8000"
TOLERANCE = 300  # seconds of clock skew accepted, as the service itself accepts by default


@dataclass(frozen=True)
class ListenOptions:
    port: int = 9000
    subscribe: bool = False
    event_types: tuple[str, ...] = ()  # empty: every event type
    secret: str | None = None


class ListenError(Exception):
    """Listening could not start or finish cleanly; the message is one line for the terminal."""


def admin_token(env: Mapping[str, str]) -> str:
    """SORAHOOK_ADMIN_TOKEN, else the token the service generated and saved in its data directory."""
    token = env.get("SORAHOOK_ADMIN_TOKEN", "").strip()
    if token:
        if not is_header_safe(token):
            raise ConfigError("SORAHOOK_ADMIN_TOKEN must be printable ASCII (it is sent in an HTTP header)")
        return token
    path = (
        data_dir_of(env.get("SORAHOOK_DATABASE_URL", "").strip() or "sqlite:///data/sorahook.db")
        / "admin_token"
    )
    try:
        return path.read_text().strip()
    except OSError:
        raise ConfigError(
            f"SORAHOOK_ADMIN_TOKEN is not set and {path} cannot be read; set it to the service's admin token"
        ) from None


def service_url(env: Mapping[str, str]) -> str:
    """SORAHOOK_URL, checked: the admin API's http(s) base URL."""
    raw = env.get("SORAHOOK_URL", "").strip() or DEFAULT_SERVICE_URL
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"SORAHOOK_URL must be the service's http(s) URL, e.g. {DEFAULT_SERVICE_URL}, got {raw!r}"
        )
    return raw


def _clock(now: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now))


class Listener:
    """The HTTP endpoint: verifies each POST, prints one line for it, answers 200 or 401."""

    def __init__(self, out: TextIO, now: Callable[[], float] = time.time) -> None:
        self._out, self._now = out, now
        self._verifier: Verifier | None = None
        self._ready = asyncio.Event()
        self.received = 0

    def use_secret(self, secret: str) -> None:
        self._verifier = Verifier([secret], TOLERANCE)
        self._ready.set()

    def print(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self.handle)
        app.router.add_get("/{tail:.*}", self.info)
        return app

    async def info(self, request: web.Request) -> web.Response:
        return web.Response(text="sorahook listen: POST events here\n")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = self._now()
        headers = request.headers
        msg_id = headers.get("webhook-id")
        if self._verifier is None:
            # A delivery can arrive before the answer that carries the subscription's secret.
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=10)
            except TimeoutError:
                pass
        if self._verifier is None:
            return self._reject(now, msg_id, "not_ready", "no secret yet (the subscription is being created)")
        verification = self._verifier.verify(
            body, msg_id, headers.get("webhook-timestamp"), headers.get("webhook-signature"), now
        )
        if verification.verdict != "ok":
            return self._reject(now, msg_id, verification.verdict, verification.message)
        self.received += 1
        self.print(describe_event(body, now))
        return web.json_response({"received": True})

    def _reject(self, now: float, msg_id: str | None, code: str, message: str) -> web.Response:
        self.print(f"{_clock(now)}  REJECTED  {code}: {message}  (webhook-id {msg_id or '-'}) -> 401")
        return web.json_response({"error": {"code": code, "message": message}}, status=401)


def describe_event(body: bytes, now: float) -> str:
    """One line for a verified event: time, type, job id and status, "verified", event id."""
    try:
        event: Any = json.loads(body)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        return f"{_clock(now)}  (not a JSON event, {len(body)} bytes)  verified"
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    fields = [
        str(event.get("type") or "?").ljust(22),
        str(data.get("id") or "-"),
        str(data.get("status") or "-"),
        "verified",
        str(event.get("id") or ""),
    ]
    return f"{_clock(now)}  " + "  ".join(fields).rstrip()


class AdminApi:
    """The few admin API calls `listen --subscribe` makes."""

    def __init__(self, base_url: str, token: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self._base,
            headers={"authorization": f"Bearer {token}"},
            timeout=10.0,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ListenError(
                f"cannot reach sorahook at {self._base} ({type(exc).__name__}: {exc}); is `sorahook serve`"
                " running? (SORAHOOK_URL)"
            ) from None
        if response.status_code == 401:
            raise ListenError(f"{self._base} refused the admin token (SORAHOOK_ADMIN_TOKEN)")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not response.is_success:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            raise ListenError(
                f"{method} {path} answered {response.status_code}: {message or response.text[:200]}"
            )
        return dict(answer)

    async def subscribe(self, url: str, event_types: tuple[str, ...]) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "description": "sorahook listen"}
        if event_types:
            body["event_types"] = list(event_types)
        return await self._call("POST", "/v1/subscriptions", body)

    async def unsubscribe(self, sub_id: str) -> None:
        await self._call("DELETE", f"/v1/subscriptions/{sub_id}")


async def listen(
    options: ListenOptions,
    env: Mapping[str, str],
    out: TextIO,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve until `stop` is set (by default: until SIGINT or SIGTERM); return the exit status."""
    if options.secret is not None:
        check_webhook_secret("--secret", options.secret)
    elif not options.subscribe:
        raise ConfigError(
            "give --subscribe (subscribe through the admin API) or --secret whsec_… to verify with"
        )
    api: AdminApi | None = None
    if options.subscribe:
        api = AdminApi(service_url(env), admin_token(env))
    stop = stop or _stop_on_signals()
    listener = Listener(out)
    if options.secret is not None:
        listener.use_secret(options.secret)
    runner = web.AppRunner(listener.app(), access_log=None, handle_signals=False)
    await runner.setup()
    sub_id: str | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", options.port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on 127.0.0.1:{options.port}: {exc.strerror or exc}") from None
        url = f"http://127.0.0.1:{_bound_port(runner, options.port)}/"
        if api is not None:
            sub = await api.subscribe(url, options.event_types)
            sub_id = str(sub["id"])
            listener.use_secret(str(sub["secret"]))
            kinds = ", ".join(options.event_types) or "every event type"
            listener.print(
                f"Subscribed {sub_id} to {kinds}; listening on {url} (Ctrl-C deletes it and stops)"
            )
        else:
            listener.print(f"Listening on {url}, verifying with the given secret (Ctrl-C stops)")
        await stop.wait()
    finally:
        try:
            if api is not None and sub_id is not None:
                await api.unsubscribe(sub_id)
                listener.print(f"Deleted subscription {sub_id} ({listener.received} events received)")
        finally:
            if api is not None:
                await api.aclose()
            await runner.cleanup()
    return 0


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # no signal handlers here (Windows, not the main thread)
            pass
    return stop


def run(options: ListenOptions, out: TextIO, err: TextIO) -> int:
    """The `sorahook listen` command; a ListenError is one line on `err` and exit status 1."""
    try:
        return asyncio.run(listen(options, dict(os.environ), out))
    except ListenError as exc:
        print(f"sorahook listen: {exc}", file=err, flush=True)
        return 1


__all__ = [
    "AdminApi",
    "ListenError",
    "ListenOptions",
    "Listener",
    "admin_token",
    "describe_event",
    "listen",
    "run",
]
