"""Shared pieces of the /v1 API: bearer auth, JSON body parsing, pagination arguments."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from service import ssrf
from service.errors import ApiError

Endpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


class Late(Generic[T]):
    """A dependency the lifespan opens after the routes exist (the store, the OpenAI client, storage).

    A handler holds the Late it needs, not the object, and takes the object per request: before the
    lifespan has set it, the answer is a 503 `starting`, never an AttributeError.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value

    def get(self) -> T:
        if self._value is None:
            raise ApiError(503, "starting", f"sorahook is starting ({self.name} not open yet); retry shortly")
        return self._value


class UrlCheck:
    """The rule for every URL sorahook will call (callback_url, a subscription's url): http(s), at most 2048
    characters, and unless private targets are allowed, a host that resolves to public addresses only."""

    def __init__(self, resolver: ssrf.Resolver, *, allow_private: bool | ssrf.PrivateTargets) -> None:
        self.resolver = resolver
        self.allow_private = allow_private

    async def __call__(self, value: Any, param: str = "callback_url") -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ApiError(422, "invalid_field", f"{param} must be an http(s) URL", param=param)
        if len(value) > 2048:
            raise ApiError(422, "invalid_field", f"{param} must be at most 2048 characters", param=param)
        try:
            await ssrf.vet(value, self.resolver, allow_private=self.allow_private)
        except ssrf.UnsafeTarget as exc:
            raise ApiError(422, "invalid_url", f"{param}: {exc}", param=param) from None
        except OSError as exc:
            raise ApiError(
                422, "invalid_url", f"{param}: the host does not resolve ({exc})", param=param
            ) from None
        return value


def require_token(token: str, endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint: 401 with a JSON error unless `Authorization: Bearer <token>` (constant-time)."""
    expected = token.encode()

    async def guarded(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required (SORAHOOK_ADMIN_TOKEN)",
                headers={"www-authenticate": "Bearer"},  # RFC 6750: the scheme the client must use
            ).response()
        try:
            return await endpoint(request)
        except ApiError as err:
            return err.response()

    return guarded


async def json_object(request: Request, limit: int = 1_048_576) -> dict[str, Any]:
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "body_too_large", f"request bodies are limited to {limit} bytes")
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    if b"\\u" in body and not _is_utf8(value):
        raise ApiError(400, "invalid_json", "the request body must be UTF-8 JSON without lone surrogates")
    return value


def _is_utf8(value: Any) -> bool:
    """JSON may spell a lone surrogate (`"\\ud800"`) that no UTF-8 text, and so no stored value, can hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        return False
    return True


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
