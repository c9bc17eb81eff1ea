"""Every /v1 route needs the bearer token; the receiver, metrics and health routes need none."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from service.app import create_app
from tests.support import auth, live_server, make_settings

pytestmark = pytest.mark.anyio

OPEN = {"/webhooks/openai", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}


async def test_every_v1_route_answers_401_without_the_right_token(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), start_workers=False)
    routes = [r for r in app.routes if isinstance(r, Route)]
    v1 = [r for r in routes if r.path.startswith("/v1/")]
    assert len(v1) >= 13
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        for route in v1:
            path = re.sub(r"\{[^}]+\}", "x_1", route.path)
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                for headers in (
                    {},
                    auth("wrong-token"),
                    {"authorization": "Basic dGVzdA=="},
                    {"authorization": "Bearer"},
                ):
                    response = await client.request(method, path, headers=headers, json={})
                    assert response.status_code == 401, (method, path, headers)
                    assert response.json()["error"]["code"] == "unauthorized"
                ok = await client.request(method, path, headers=auth(), json={})
                assert ok.status_code != 401, (method, path)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200
        assert {r.path for r in routes if not r.path.startswith("/v1/")} <= OPEN
