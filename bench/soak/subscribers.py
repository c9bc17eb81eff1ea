"""The soak's subscribers: one uvicorn process listening on a control port and one port per subscriber.

Each port answers as its role says (healthy, failing, flaky, hanging), checks every delivery's
signature with its subscription's secret as a Standard Webhooks receiver would (`service.signing`'s
`Verifier`), and records the `webhook-id` of every delivery and of every one it answered 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from starlette.types import Receive, Scope, Send

from bench.delivery import _bind, _respond, _uvicorn_config, _wait_for_port
from service.signing import Verifier

ROOT = Path(__file__).resolve().parents[2]
Role = Literal["healthy", "failing", "flaky", "hanging"]
ROLES = "healthy*7,failing,flaky,hanging"
FLAKY_RATE = 0.30
# Standard Webhooks' tolerance for a signature's timestamp. The service signs each attempt when it sends
# it, so even a late retry must pass.
SIGNATURE_TOLERANCE = 300
_RID_MARK = b'"resource_id":"'


def parse_roles(spec: str) -> list[Role]:
    """`healthy*7,failing,flaky,hanging` -> one role per subscriber."""
    out: list[Role] = []
    for part in spec.split(","):
        name, _, times = part.strip().partition("*")
        if name not in ("healthy", "failing", "flaky", "hanging"):
            raise argparse.ArgumentTypeError(f"unknown subscriber role {name!r}")
        out.extend([name] * int(times or 1))  # type: ignore[list-item]
    return out


def describe_roles(roles: Iterable[Role]) -> str:
    return ", ".join(f"{n} {role}" for role, n in Counter(roles).items())


@dataclass
class PortRecord:
    received: Counter[str] = field(default_factory=Counter)  # webhook-id -> requests
    ok: Counter[str] = field(default_factory=Counter)  # webhook-id -> requests answered 2xx
    first_ok: dict[str, float] = field(default_factory=dict)  # resource id -> first 2xx arrival (wall)
    bad_signature: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "ok": self.ok,
            "first_ok": self.first_ok,
            "bad_signature": self.bad_signature,
        }

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> PortRecord:
        return cls(Counter(r["received"]), Counter(r["ok"]), dict(r["first_ok"]), int(r["bad_signature"]))


def _signed(verifier: Verifier, headers: dict[bytes, bytes], body: bytes) -> bool:
    def header(name: bytes) -> str | None:
        value = headers.get(name)
        return None if value is None else value.decode("latin-1")

    verification = verifier.verify(
        body, header(b"webhook-id"), header(b"webhook-timestamp"), header(b"webhook-signature"), time.time()
    )
    return verification.verdict == "ok"


class SubscriberApp:
    """A raw ASGI app: per port, record and answer as the port's role says; a control port reports."""

    def __init__(self, control: int, roles: dict[int, Role], hang: float, seed: int) -> None:
        self.control, self.roles, self.hang = control, roles, hang
        self.records = {port: PortRecord() for port in roles}
        self.verifiers: dict[int, Verifier] = {}
        self.rng = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        port = scope["server"][1]
        if port == self.control:
            await self._control(scope["path"], body, send)
            return
        role, record = self.roles[port], self.records[port]
        headers: dict[bytes, bytes] = dict(scope["headers"])
        webhook_id = headers.get(b"webhook-id", b"").decode()
        record.received[webhook_id] += 1
        verifier = self.verifiers.get(port)
        if verifier is None or not _signed(verifier, headers, body):
            record.bad_signature += 1
        if role == "hanging":
            # Hold the request until the sender gives up (its timeout) or far past it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_disconnected(receive), self.hang)
            with contextlib.suppress(Exception):
                await _respond(send, 200, b"late", b"text/plain")
            return
        failing = role == "failing" or (role == "flaky" and self.rng.random() < FLAKY_RATE)
        if not failing:
            record.ok[webhook_id] += 1
            if role == "healthy":
                start = body.find(_RID_MARK)
                if start >= 0:
                    start += len(_RID_MARK)
                    rid = body[start : body.index(b'"', start)].decode()
                    record.first_ok.setdefault(rid, time.time())
        await _respond(send, 500 if failing else 200, b"no" if failing else b"ok", b"text/plain")

    async def _control(self, path: str, body: bytes, send: Any) -> None:
        if path == "/_soak/keys":
            for port, secret in json.loads(body).items():
                self.verifiers[int(port)] = Verifier([secret], SIGNATURE_TOLERANCE)
            await _respond(send, 200, b"{}")
        elif path == "/_soak/records":
            records = {str(port): r.to_json() for port, r in self.records.items()}
            await _respond(send, 200, json.dumps(records).encode())
        else:
            await _respond(send, 404, b"{}")


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def serve_subscribers(spec: str, hang: float, seed: int) -> None:
    """The subscriber process (`python -m bench.soak --serve-subscribers`): print the ports, then serve."""
    import uvicorn

    kinds = parse_roles(spec)
    sockets = [_bind() for _ in range(len(kinds) + 1)]
    ports = [s.getsockname()[1] for s in sockets]
    roles = dict(zip(ports[1:], kinds, strict=True))
    print(json.dumps({"control": ports[0], "roles": roles}), flush=True)
    app = SubscriberApp(ports[0], roles, hang, seed)
    uvicorn.Server(_uvicorn_config(app, lifespan="off")).run(sockets=sockets)


@dataclass(frozen=True)
class Subscribers:
    """The running subscriber process, as the soak sees it."""

    proc: subprocess.Popen[str]
    control: int
    roles: dict[int, Role]

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    def ports(self, *roles: Role) -> list[int]:
        return [port for port, role in self.roles.items() if role in roles]

    def label(self, port: int) -> str:
        role = self.roles[port]
        if role != "healthy":
            return role
        return f"healthy{self.ports('healthy').index(port) + 1}"

    async def set_secrets(self, session: aiohttp.ClientSession, secrets: dict[int, str]) -> None:
        """Each port's subscription secret, to verify its deliveries with."""
        keys = {str(port): secret for port, secret in secrets.items()}
        async with session.post(f"{self.control_url}/_soak/keys", json=keys) as response:
            response.raise_for_status()

    async def records(self, session: aiohttp.ClientSession) -> dict[int, PortRecord]:
        async with session.get(f"{self.control_url}/_soak/records") as response:
            payload = await response.json()
        return {int(port): PortRecord.from_json(r) for port, r in payload.items()}


def start_subscribers(spec: str, hang: float, seed: int) -> Subscribers:
    cmd = [
        sys.executable,
        "-m",
        "bench.soak",
        "--serve-subscribers",
        f"--subscribers={spec}",
        f"--hang={hang}",
        f"--seed={seed}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise RuntimeError(f"the subscribers exited with status {proc.returncode} before starting")
    info = json.loads(line)
    _wait_for_port(info["control"], proc)
    return Subscribers(proc, info["control"], {int(p): role for p, role in info["roles"].items()})
