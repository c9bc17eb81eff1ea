"""The delivery sender against real local subscriber servers: statuses, redirects, timeouts, SSRF, pinning."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from service.sender import MAX_RESPONSE_BYTES, Sender, SendResult, parse_retry_after
from service.ssrf import ResolveError, StaticResolver

BODY = b'{"id":"evt_1","object":"event","type":"video.completed","data":{}}'
HEADERS = {"webhook-id": "evt_1", "webhook-timestamp": "1760000000", "webhook-signature": "v1,abc="}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Subscriber:
    """A real HTTP server on an ephemeral port that records what reaches it."""

    port: int
    hits: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [request.path for request in self.hits]


@pytest.fixture
async def subscriber() -> AsyncIterator[Subscriber]:
    sub = Subscriber(port=0)

    async def record(request: web.Request) -> None:
        sub.hits.append(request)
        sub.bodies.append(await request.read())
        sub.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        sub.arrived.set()

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="thanks")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=302, headers={"Location": "/moved"})

    async def busy(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=429, headers={"Retry-After": "7"})

    async def unavailable_until(request: web.Request) -> web.Response:
        await record(request)
        when = email.utils.formatdate(time.time() + 120, usegmt=True)
        return web.Response(status=503, headers={"Retry-After": when})

    async def hang(request: web.Request) -> web.Response:
        await record(request)
        await sub.release.wait()
        return web.Response(text="too late")

    async def huge(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        while not sub.release.is_set():
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/redirect", redirect)
    app.router.add_route("*", "/moved", ok)
    app.router.add_post("/busy", busy)
    app.router.add_post("/unavailable", unavailable_until)
    app.router.add_post("/hang", hang)
    app.router.add_post("/huge", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sub.port = runner.addresses[0][1]
    try:
        yield sub
    finally:
        sub.release.set()
        await runner.cleanup()


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    s = Sender(resolver=StaticResolver({}), allow_private=True)
    try:
        yield s
    finally:
        await s.aclose()


class CountingResolver:
    """Answers from a script of address lists, one per call, and counts the calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class HangingResolver:
    async def resolve(self, host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        raise ResolveError("unreachable")


# --- responses ---


@pytest.mark.anyio
async def test_a_200_is_reported_with_the_body_and_headers_delivered(
    subscriber: Subscriber, sender: Sender
) -> None:
    result = await sender.send(subscriber.url("/ok"), HEADERS, BODY, timeout=5)
    assert (result.status_code, result.error, result.unsafe, result.retry_after) == (200, None, False, None)
    assert result.latency > 0
    assert subscriber.bodies == [BODY]
    request = subscriber.hits[0]
    assert request.headers["webhook-id"] == "evt_1"
    assert request.headers["webhook-signature"] == "v1,abc="
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == f"127.0.0.1:{subscriber.port}"


@pytest.mark.anyio
async def test_caller_headers_override_the_defaults_whatever_their_case(
    subscriber: Subscriber, sender: Sender
) -> None:
    headers = {**HEADERS, "user-agent": "sorahook-test/1", "content-type": "application/json; charset=utf-8"}
    assert (await sender.send(subscriber.url("/ok"), headers, BODY, timeout=5)).status_code == 200
    received = subscriber.hits[0].headers
    assert received.getall("User-Agent") == ["sorahook-test/1"]
    assert received.getall("Content-Type") == ["application/json; charset=utf-8"]


@pytest.mark.anyio
async def test_a_redirect_is_not_followed(subscriber: Subscriber, sender: Sender) -> None:
    result = await sender.send(subscriber.url("/redirect"), HEADERS, BODY, timeout=5)
    assert result.status_code == 302
    assert subscriber.paths() == ["/redirect"]


@pytest.mark.anyio
async def test_retry_after_in_seconds_is_reported(subscriber: Subscriber, sender: Sender) -> None:
    result = await sender.send(subscriber.url("/busy"), HEADERS, BODY, timeout=5)
    assert (result.status_code, result.retry_after) == (429, 7.0)


@pytest.mark.anyio
async def test_retry_after_as_an_http_date_becomes_seconds_from_now(
    subscriber: Subscriber, sender: Sender
) -> None:
    result = await sender.send(subscriber.url("/unavailable"), HEADERS, BODY, timeout=5)
    assert result.status_code == 503
    assert result.retry_after is not None and 100 < result.retry_after <= 120


def test_parse_retry_after_reads_seconds_and_dates() -> None:
    now = 1_760_000_000.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None


@pytest.mark.anyio
async def test_a_hanging_subscriber_times_out(subscriber: Subscriber, sender: Sender) -> None:
    result = await sender.send(subscriber.url("/hang"), HEADERS, BODY, timeout=0.2)
    assert result.status_code is None
    assert result.error == "timeout after 0.2s"
    assert subscriber.paths() == ["/hang"]


@pytest.mark.anyio
async def test_a_hanging_dns_lookup_counts_against_the_timeout() -> None:
    s = Sender(resolver=HangingResolver(), allow_private=True)
    try:
        result = await s.send("http://slow-dns.example/", HEADERS, BODY, timeout=0.2)
    finally:
        await s.aclose()
    assert (result.status_code, result.error) == (None, "timeout after 0.2s")


@pytest.mark.anyio
async def test_an_endless_response_body_is_cut_off(subscriber: Subscriber, sender: Sender) -> None:
    result = await sender.send(subscriber.url("/huge"), HEADERS, BODY, timeout=5)
    assert (result.status_code, result.error) == (200, None)
    assert MAX_RESPONSE_BYTES <= 1 << 20
    # The connection that was cut is not reused; the next send still works.
    again = await sender.send(subscriber.url("/ok"), HEADERS, BODY, timeout=5)
    assert again.status_code == 200


@pytest.mark.anyio
async def test_connection_refused_is_an_error_not_an_exception(sender: Sender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await sender.send(f"http://127.0.0.1:{port}/", HEADERS, BODY, timeout=5)
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("connect error:")
    assert not result.unsafe


@pytest.mark.anyio
async def test_an_unresolvable_name_is_a_dns_error(sender: Sender) -> None:
    result = await sender.send("http://nowhere.example/", HEADERS, BODY, timeout=5)
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("dns:")
    assert not result.unsafe


@pytest.mark.anyio
async def test_connections_are_kept_alive_and_reused(subscriber: Subscriber, sender: Sender) -> None:
    for _ in range(3):
        assert (await sender.send(subscriber.url("/ok"), HEADERS, BODY, timeout=5)).status_code == 200
    assert len(set(subscriber.peers)) == 1


@pytest.mark.anyio
async def test_an_odd_spelling_of_an_allowed_address_reaches_it(
    subscriber: Subscriber, sender: Sender
) -> None:
    result = await sender.send(subscriber.url("/ok", host="0x7f.1"), HEADERS, BODY, timeout=5)
    assert result.status_code == 200
    assert subscriber.hits[0].headers["Host"] == f"127.0.0.1:{subscriber.port}"


# --- SSRF at delivery time ---


@pytest.mark.anyio
async def test_a_name_resolving_to_loopback_is_refused_and_never_contacted(subscriber: Subscriber) -> None:
    s = Sender(resolver=StaticResolver({"hooks.example": ["127.0.0.1"]}), allow_private=False)
    try:
        result = await s.send(subscriber.url("/ok", host="hooks.example"), HEADERS, BODY, timeout=5)
        literal = await s.send(subscriber.url("/ok", host="2130706433"), HEADERS, BODY, timeout=5)
    finally:
        await s.aclose()
    assert (result.status_code, result.unsafe, result.error) == (None, True, "unsafe target: loopback")
    assert (literal.unsafe, literal.error) == (True, "unsafe target: loopback")
    assert subscriber.hits == []


@pytest.mark.anyio
async def test_the_connection_goes_to_the_vetted_address_without_a_second_lookup(
    subscriber: Subscriber,
) -> None:
    # A rebinding resolver: the first answer is where the subscriber listens; any later lookup
    # would answer an address where nothing listens. One lookup per send, and it is the one used.
    resolver = CountingResolver(["127.0.0.1"], ["127.0.0.2"])
    s = Sender(resolver=resolver, allow_private=True)
    try:
        result = await s.send(subscriber.url("/ok", host="rebind.example"), HEADERS, BODY, timeout=5)
    finally:
        await s.aclose()
    assert result.status_code == 200
    assert resolver.calls == ["rebind.example"]
    assert subscriber.hits[0].headers["Host"] == f"rebind.example:{subscriber.port}"


@pytest.mark.anyio
async def test_rebinding_to_loopback_after_a_public_answer_never_reaches_loopback(
    subscriber: Subscriber,
) -> None:
    # Vetting sees a public address; a second lookup would see loopback. We connect to the public
    # address (nothing answers there in a test, so the attempt fails) and the local server stays untouched.
    resolver = CountingResolver(["93.184.216.34"], ["127.0.0.1"])
    s = Sender(resolver=resolver, allow_private=False)
    try:
        result = await s.send(subscriber.url("/ok", host="rebind.example"), HEADERS, BODY, timeout=0.3)
    finally:
        await s.aclose()
    assert resolver.calls == ["rebind.example"]
    assert subscriber.hits == []
    assert not result.unsafe


@pytest.mark.anyio
async def test_every_send_is_vetted_again(subscriber: Subscriber) -> None:
    resolver = CountingResolver(["127.0.0.1"], ["127.0.0.1"], ["10.0.0.9"])
    s = Sender(resolver=resolver, allow_private=True)
    strict = Sender(resolver=resolver, allow_private=False)
    try:
        for _ in range(2):
            result = await s.send(subscriber.url("/ok", host="flip.example"), HEADERS, BODY, timeout=5)
            assert result.status_code == 200
        refused = await strict.send(subscriber.url("/ok", host="flip.example"), HEADERS, BODY, timeout=5)
    finally:
        await s.aclose()
        await strict.aclose()
    assert len(resolver.calls) == 3
    assert (refused.unsafe, refused.error) == (True, "unsafe target: private")
    assert len(subscriber.hits) == 2


@pytest.mark.anyio
async def test_a_closed_sender_reports_instead_of_raising(subscriber: Subscriber) -> None:
    s = Sender(resolver=StaticResolver({}), allow_private=True)
    await s.aclose()
    result = await s.send(subscriber.url("/ok"), HEADERS, BODY, timeout=5)
    assert result.status_code is None and result.error == "sender is closed"
    assert subscriber.hits == []


# --- deadlines: one timer for every attempt in flight ---


@pytest.mark.anyio
async def test_a_short_deadline_fires_first_and_leaves_a_longer_one_running(
    subscriber: Subscriber, sender: Sender
) -> None:
    # A long deadline armed first must not hold back a short one armed after it, nor be cut short by it.
    def attempt(path: str, timeout: float) -> asyncio.Task[SendResult]:
        return asyncio.create_task(sender.send(subscriber.url(path), HEADERS, BODY, timeout=timeout))

    long, short, fine = attempt("/hang", 30), attempt("/hang", 0.1), attempt("/ok", 30)
    done, _ = await asyncio.wait({long, short}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {short} and short.result().error == "timeout after 0.1s"
    assert (await fine).error is None
    assert not long.done()
    again = await sender.send(subscriber.url("/hang"), HEADERS, BODY, timeout=0.1)  # the timer re-arms
    assert again.error == "timeout after 0.1s" and not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    # The keeper holds nothing once the attempts are over.
    assert sender._deadlines._armed == {} and sender._deadlines._expired == set()


@pytest.mark.anyio
async def test_cancelling_a_sending_task_is_a_cancellation_not_a_timeout(
    subscriber: Subscriber, sender: Sender
) -> None:
    task = asyncio.create_task(sender.send(subscriber.url("/hang"), HEADERS, BODY, timeout=5))
    await asyncio.wait_for(subscriber.arrived.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sender._deadlines._armed == {}
