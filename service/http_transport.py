"""An httpx transport that sends through aiohttp, for the OpenAI client.

httpx's own transport (httpcore) costs several times aiohttp's CPU per request and slows down as
concurrency grows (bench/http_clients.py measures both). The OpenAI client keeps httpx's API (its
requests, responses, exceptions and test transports) and sends through this transport by default.

What httpx does above the transport is unchanged: base URL, default headers, timeouts (passed here in
the request's extensions), redirects (not followed), proxies from the environment (httpx mounts its own
transport for those), and content decoding (aiohttp hands the body over as it came, compressed or not).
aiohttp's errors become the httpx errors httpx's own transport raises, so callers retry the same cases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpTransport"]

_CHUNK = 64 * 1024
# Hop-by-hop and framing headers: aiohttp writes its own from the body it is given.
_DROP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Pooled keep-alive connections through one aiohttp session, created on first use (it binds the loop)."""

    def __init__(self, *, max_connections: int = 100, keepalive_timeout: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=self._keepalive_timeout
                ),
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies, if any
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _DROP
        ]
        body = await request.aread()
        try:
            response = await self._client().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=body if body or request.method not in ("GET", "HEAD", "DELETE") else None,
                allow_redirects=False,
                timeout=timeout,
            )
        except BaseException as exc:
            raise _as_httpx(exc, request, connecting=True) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _Body(httpx.AsyncByteStream):
    """The response body as httpx reads it; closing before the end drops the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except BaseException as exc:
            raise _as_httpx(exc, self._request, connecting=False) from exc

    async def aclose(self) -> None:
        # release() keeps the connection when the body was read to the end and closes it otherwise.
        self._response.release()


def _as_httpx(exc: BaseException, request: httpx.Request, *, connecting: bool) -> BaseException:
    """The httpx error httpx's own transport raises in the same situation; anything else unchanged."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # a response aiohttp could not parse
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        if connecting:
            return httpx.ConnectError(message, request=request)
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.TransportError(message, request=request)
    return exc
