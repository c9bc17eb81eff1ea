"""GET /v1/usage: estimated cost and job counts over a time range, by model, status and client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic_core import ErrorDetails
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.common import Late
from service.api.schemas import UsageQuery, query
from service.errors import ApiError

if TYPE_CHECKING:
    from service.store.protocol import Store


class UsageApi:
    def __init__(self, *, store: Late[Store], quota_key: str) -> None:
        self.store = store
        self.quota_key = quota_key

    async def get(self, request: Request) -> Response:
        params = request.query_params

        def message(error: ErrorDetails) -> str:
            name = str(error["loc"][0])
            return f"{name} must be a Unix time in whole seconds, got {params.get(name)!r}"

        args = query(UsageQuery, params, message)
        since, until = args.since, args.until
        if since is not None and until is not None and until < since:
            raise ApiError(422, "invalid_parameter", "until must not be before since", param="until")
        totals = await self.store.get().usage(since=since, until=until, client_key=self.quota_key)
        return JSONResponse({"object": "usage", "since": since, "until": until, **totals})
