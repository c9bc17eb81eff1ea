"""The emulator's HTTP routes: OpenAI's Videos and Moderations API, and the control routes for tests.

``GET /v1/videos/{id}/content`` answers 400 ``video_not_ready`` before completion (and for failed videos),
400 ``invalid_value`` for an unknown variant, and **410** ``video_expired`` once ``expires_at`` has passed.
Deleting works in any state; a video deleted before its final state sends no webhook. Remixing needs a
completed source video (400 ``invalid_request`` otherwise). ``POST /v1/moderations`` (OpenAI's shape) flags
an input that holds any of ``moderation_flag_words``, under ``moderation_category`` alone. Control routes
(``/_control/...``) are never counted or faulted; with ``control_token`` set they need it as a bearer token.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.clock import Clock
from service.emulator.assets import CONTENT
from service.emulator.faults import Faults, KnobOutOfRange, error_response, fault_response
from service.emulator.model import (
    DEFAULT_MODEL,
    MODERATION_CATEGORIES,
    SECONDS,
    SIZES,
    ApiError,
    EmulatorConfig,
    Videos,
    record_bounded,
)

Endpoint = Callable[[Request], Awaitable[Response]]


def _route_path(request: Request) -> str:
    """The path relative to wherever this app is mounted."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class Routes:
    """The route handlers, over the emulator's videos and faults; ``calls`` records every API request."""

    def __init__(
        self,
        config: EmulatorConfig,
        videos: Videos,
        faults: Faults,
        clock: Clock,
        rng: random.Random,
        calls: list[tuple[str, str]],
    ) -> None:
        self.config, self.videos, self.faults = config, videos, faults
        self._clock, self._rng, self.calls = clock, rng, calls
        self._large_video: bytes | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/v1/videos", self._api(self._create), methods=["POST"]),
            Route("/v1/videos", self._api(self._list), methods=["GET"]),
            Route("/v1/videos/{video_id}", self._api(self._retrieve), methods=["GET"]),
            Route("/v1/videos/{video_id}", self._api(self._delete), methods=["DELETE"]),
            Route("/v1/videos/{video_id}/content", self._api(self._content), methods=["GET"]),
            Route("/v1/videos/{video_id}/remix", self._api(self._remix), methods=["POST"]),
            Route("/v1/moderations", self._api(self._moderate), methods=["POST"]),
            Route("/_control/faults", self._control(self._control_faults), methods=["POST"]),
            Route("/_control/calls", self._control(self._control_calls), methods=["GET"]),
        ]

    def _api(self, handler: Endpoint) -> Endpoint:
        """Wrap an API route: record the call, apply faults and the API key, render ``ApiError``."""

        async def endpoint(request: Request) -> Response:
            path = _route_path(request)
            record_bounded(self.calls, (request.method, path))
            fault = self.faults.take(path)
            if fault is not None:
                return fault_response(fault.status, code=fault.code, retry_after=fault.retry_after)
            if self.videos.chance(self.config.error_rate):
                status = self._rng.choice((429, 500, 503))
                return fault_response(status, retry_after=0 if status == 429 else None)
            if self.config.valid_keys:
                authorization = request.headers.get("authorization", "")
                if not authorization.startswith("Bearer "):
                    return error_response(
                        401,
                        "You didn't provide an API key. You need to provide your API key in an Authorization "
                        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    )
                given = authorization[7:].strip()
                if not any(secrets.compare_digest(given, key) for key in self.config.valid_keys):
                    return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
            try:
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc.status, exc.message, param=exc.param, code=exc.code)
            response.headers["x-request-id"] = f"req_{secrets.token_hex(16)}"
            return response

        return endpoint

    def _control(self, handler: Endpoint) -> Endpoint:
        """Wrap a control route: with ``control_token`` set, it needs ``Authorization: Bearer <token>``."""
        expected = self.config.control_token

        async def endpoint(request: Request) -> Response:
            if expected is not None:
                scheme, _, given = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not secrets.compare_digest(
                    given.strip().encode(), expected.encode()
                ):
                    return error_response(
                        401,
                        "The emulator's control routes need Authorization: Bearer <admin token>.",
                        code="invalid_api_key",
                        headers={"www-authenticate": "Bearer"},
                    )
            return await handler(request)

        return endpoint

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        """The request's fields from multipart/form-data, urlencoded form or JSON."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            async with request.form() as form:
                fields: dict[str, Any] = {}
                for key, value in form.multi_items():
                    fields[key] = "<file>" if isinstance(value, UploadFile) else value
                return fields
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
            # A lone surrogate ("\ud800") parses but could never be encoded into an answer.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly.)",
            ) from None
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return data

    @staticmethod
    def _prompt(fields: Mapping[str, Any]) -> str:
        prompt = fields.get("prompt")
        if prompt is None:
            raise ApiError(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(
                400, "Invalid 'prompt': must be a non-empty string.", param="prompt", code="invalid_value"
            )
        return prompt

    # --- routes ------------------------------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if key and key in self.videos.idempotency:
            record = self.videos.records[self.videos.idempotency[key]]
            return JSONResponse(self.videos.refresh(record, self._clock.now()))
        fields = await self._body(request)
        prompt = self._prompt(fields)
        model = fields.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model.strip():
            raise ApiError(
                400, "Invalid 'model': must be a non-empty string.", param="model", code="invalid_value"
            )
        seconds = fields.get("seconds", SECONDS[0])
        if isinstance(seconds, int) and not isinstance(seconds, bool):
            seconds = str(seconds)
        if seconds not in SECONDS:
            raise ApiError(
                400,
                f"Invalid value: {seconds!r}. Supported values are: '4', '8', and '12'.",
                param="seconds",
                code="invalid_value",
            )
        size = fields.get("size", SIZES[0])
        if size not in SIZES:
            raise ApiError(
                400,
                f"Invalid value: {size!r}. Supported values are: {', '.join(repr(s) for s in SIZES)}.",
                param="size",
                code="invalid_value",
            )
        video = self.videos.create(prompt=prompt, model=model, seconds=seconds, size=size, remixed_from=None)
        if key:
            self.videos.idempotency[key] = video["id"]
        return JSONResponse(video)

    async def _list(self, request: Request) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise ApiError(
                400,
                "Invalid 'limit': must be an integer between 1 and 100.",
                param="limit",
                code="invalid_value",
            )
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(
                400,
                f"Invalid value: {order!r}. Supported values are: 'asc' and 'desc'.",
                param="order",
                code="invalid_value",
            )
        page, has_more = self.videos.page(order, query.get("after"), limit, self._clock.now())
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": has_more,
            }
        )

    async def _retrieve(self, request: Request) -> Response:
        record = self.videos.live(request.path_params["video_id"])
        return JSONResponse(self.videos.refresh(record, self._clock.now()))

    async def _delete(self, request: Request) -> Response:
        record = self.videos.live(request.path_params["video_id"])
        self.videos.delete(record)
        return JSONResponse({"id": record.id, "object": "video.deleted", "deleted": True})

    async def _content(self, request: Request) -> Response:
        record = self.videos.live(request.path_params["video_id"])
        variant = request.query_params.get("variant", "video")
        if variant not in CONTENT:
            raise ApiError(
                400,
                f"Invalid value: {variant!r}. Supported values are: 'video', 'thumbnail', and 'spritesheet'.",
                param="variant",
                code="invalid_value",
            )
        now = self._clock.now()
        video = self.videos.refresh(record, now)
        if video["status"] != "completed":
            raise ApiError(
                400,
                f"Video is not ready yet; its status is {video['status']!r}.",
                code="video_not_ready",
            )
        if video["expires_at"] is not None and now >= video["expires_at"]:
            raise ApiError(410, "The assets for this video have expired.", code="video_expired")
        data, media_type, extension = self.asset(variant)
        disposition = f'attachment; filename="{record.id}.{extension}"'
        if self.config.content_delay > 0:
            headers = {"content-disposition": disposition, "content-length": str(len(data))}
            return StreamingResponse(self._slowly(data), media_type=media_type, headers=headers)
        return Response(data, media_type=media_type, headers={"content-disposition": disposition})

    def asset(self, variant: str) -> tuple[bytes, str, str]:
        """The bytes, content type and extension a download of `variant` serves (``content_size`` applied)."""
        data, media_type, extension = CONTENT[variant]
        size = self.config.content_size
        if variant == "video" and size is not None:
            if self._large_video is None or len(self._large_video) != size:
                self._large_video = (data * (size // len(data) + 1))[:size]
            data = self._large_video
        return data, media_type, extension

    async def _slowly(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65536):
            await asyncio.sleep(self.config.content_delay)
            yield data[start : start + 65536]

    async def _remix(self, request: Request) -> Response:
        source = self.videos.live(request.path_params["video_id"])
        fields = await self._body(request)
        prompt = self._prompt(fields)
        if self.videos.refresh(source, self._clock.now())["status"] != "completed":
            raise ApiError(
                400, "Only completed videos can be remixed.", param="video_id", code="invalid_request"
            )
        video = self.videos.create(
            prompt=prompt,
            model=source.model,
            seconds=source.seconds,
            size=source.size,
            remixed_from=source.id,
        )
        return JSONResponse(video)

    async def _moderate(self, request: Request) -> Response:
        fields = await self._body(request)
        raw = fields.get("input")
        inputs: list[Any] = raw if isinstance(raw, list) else [raw]
        texts = [item for item in inputs if isinstance(item, str)]
        if not inputs or len(texts) != len(inputs):
            raise ApiError(
                400,
                "Invalid 'input': must be a string or an array of strings.",
                param="input",
                code="invalid_value",
            )
        model = fields.get("model", "omni-moderation-latest")
        results = []
        for text in texts:
            flagged = any(word in text for word in self.config.moderation_flag_words)
            hit = self.config.moderation_category
            results.append(
                {
                    "flagged": flagged,
                    "categories": {name: flagged and name == hit for name in MODERATION_CATEGORIES},
                    "category_scores": {
                        name: 0.97 if (flagged and name == hit) else 0.0001 for name in MODERATION_CATEGORIES
                    },
                    "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
                }
            )
        return JSONResponse({"id": f"modr-{secrets.token_hex(12)}", "model": model, "results": results})

    async def _control_faults(self, request: Request) -> Response:
        """400 for a body that is not a fault; 422 for a fault whose values are out of bounds."""
        try:
            data = await request.json()
            status = data["status"]
            count = data.get("count", 1)
            retry_after = data.get("retry_after")
            code = data.get("code")
            path_prefix = data.get("path_prefix", "/v1/")
            if isinstance(status, bool) or isinstance(count, bool):
                raise ValueError("status and count must be integers")
            if not isinstance(status, int) or not isinstance(count, int):
                raise ValueError("status and count must be integers")
            if retry_after is not None and (
                isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
            ):
                raise ValueError("retry_after must be a number")
            if code is not None and not isinstance(code, str):
                raise ValueError("code must be a string")
            if not isinstance(path_prefix, str):
                raise ValueError("path_prefix must be a string")
            self.faults.inject(status, count, retry_after=retry_after, code=code, path_prefix=path_prefix)
        except KnobOutOfRange as exc:
            return error_response(422, f"Invalid fault: {exc}", code="out_of_range")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            return error_response(400, f"Invalid fault: {exc}")
        return JSONResponse({"queued": count, "pending": self.faults.pending})

    async def _control_calls(self, request: Request) -> Response:
        return JSONResponse({"calls": [list(call) for call in self.calls]})
