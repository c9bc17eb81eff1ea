"""A real local HTTP subscriber for tests: records every delivery and answers as each path is told to."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Subscriber:
    """Per path: a queue of scripted answers (status, headers) used in order, then `default` forever."""

    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    defaults: dict[str, int] = field(default_factory=dict)
    hanging: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.scripts[path] = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        body = await request.body()
        self.received.append(Received(path, dict(request.headers), body))
        self.arrived.set()
        if path in self.hanging:
            await self.release.wait()
        queue = self.scripts.get(path)
        if queue:
            status, headers = queue.pop(0)
            return Response(status_code=status, headers=headers)
        return Response(status_code=self.defaults.get(path, 200))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{rest:path}", self.handle, methods=["POST"])])
