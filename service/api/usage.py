"""GET /v1/usage: estimated cost and job counts over a time range, by model, status and client."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.common import Late
from service.errors import ApiError

if TYPE_CHECKING:
    from service.store.sqlite import SqliteStore

MAX_TIME = 2**53  # JSON's exact-integer range: well past any real Unix time


def time_arg(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and 0 <= value <= MAX_TIME and value == int(value)):
        raise ApiError(
            422, "invalid_parameter", f"{name} must be a Unix time in whole seconds, got {raw!r}", param=name
        )
    return int(value)


class UsageApi:
    def __init__(self, *, store: Late[SqliteStore], quota_key: str) -> None:
        self.store = store
        self.quota_key = quota_key

    async def get(self, request: Request) -> Response:
        since, until = time_arg(request, "since"), time_arg(request, "until")
        if since is not None and until is not None and until < since:
            raise ApiError(422, "invalid_parameter", "until must not be before since", param="until")
        totals = await self.store.get().usage(since=since, until=until, client_key=self.quota_key)
        return JSONResponse({"object": "usage", "since": since, "until": until, **totals})
