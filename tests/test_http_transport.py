"""The aiohttp-backed httpx transport under the OpenAI client, against raw local HTTP servers."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from service.http_transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line.encode(), headers, body


def answer(status: str, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def client() -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []

    def make(base_url: str) -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(base_url=base_url, transport=AiohttpTransport(), timeout=2.0))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


@pytest.mark.anyio
async def test_the_request_arrives_as_httpx_built_it_and_the_connection_is_reused(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    seen: list[tuple[bytes, dict[str, str], bytes]] = []
    connections = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(answer("201 Created", b'{"ok":true}', "content-type: application/json", "x-a: 1"))
            await writer.drain()
        writer.close()

    async with raw_server(echo) as base:
        http = client(base)
        first = await http.post("/v1/videos?x=%2F", json={"prompt": "é"}, headers={"Idempotency-Key": "k1"})
        second = await http.get("/v1/videos/video_1", headers={"authorization": "Bearer sk-1"})

    assert first.status_code == 201 and first.json() == {"ok": True} and first.headers["x-a"] == "1"
    assert first.reason_phrase == "Created" and second.status_code == 201
    (line1, headers1, body1), (line2, headers2, body2) = seen
    assert line1 == b"POST /v1/videos?x=%2F HTTP/1.1"  # the query is sent as httpx encoded it
    assert json.loads(body1) == {"prompt": "é"} and headers1["content-type"] == "application/json"
    assert headers1["idempotency-key"] == "k1" and headers1["user-agent"].startswith("python-httpx")
    assert line2 == b"GET /v1/videos/video_1 HTTP/1.1" and body2 == b""
    assert headers2["authorization"] == "Bearer sk-1"
    assert connections == 1  # keep-alive


@pytest.mark.anyio
async def test_redirects_come_back_unfollowed_and_gzip_is_decoded_by_httpx(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        if line.startswith(b"GET /moved"):
            writer.write(answer("302 Found", b"", "location: http://169.254.169.254/"))
        else:
            packed = gzip.compress(b'{"id": "video_1"}')
            writer.write(answer("200 OK", packed, "content-encoding: gzip", "content-type: application/json"))
        await writer.drain()
        writer.close()

    async with raw_server(handler) as base:
        http = client(base)
        moved = await http.get("/moved")
        packed = await http.get("/packed")

    assert moved.status_code == 302 and moved.headers["location"] == "http://169.254.169.254/"
    assert packed.json() == {"id": "video_1"}


@pytest.mark.anyio
async def test_network_failures_become_the_httpx_errors_callers_retry_on(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        if line.startswith(b"GET /garbage"):
            writer.write(b"this is not HTTP\r\n\r\n")
        elif line.startswith(b"GET /cut"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nshort")
        elif line.startswith(b"GET /slow"):
            await asyncio.sleep(1.0)
        await writer.drain()
        writer.close()

    async with raw_server(handler) as base:
        http = client(base)
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/garbage")
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/cut")
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/slow", timeout=0.1)
    with pytest.raises(httpx.ConnectError):
        await http.get("/after-close")  # nothing listens there now


@pytest.mark.anyio
async def test_a_stream_closed_early_drops_its_connection_and_the_next_request_still_works(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    big = b"v" * 300_000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(answer("200 OK", big, "content-type: video/mp4"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async with raw_server(handler) as base:
        http = client(base)
        async with http.stream("GET", "/content") as response:
            async for chunk in response.aiter_bytes():
                assert chunk
                break
        whole = await http.get("/content")
    assert whole.content == big
