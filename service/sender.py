"""The delivery HTTP client: POST one signed event to a vetted address, never following redirects."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from yarl import URL

from service.retry_after import parse_retry_after
from service.ssrf import PrivateTargets, ResolveError, Resolver, Target, UnsafeTarget, literal_ip, vet

__all__ = ["MAX_RESPONSE_BYTES", "SendResult", "Sender", "parse_retry_after"]

# A subscriber's answer is only its status; read a little of the body so a keep-alive
# connection can be reused, and hang up on anything longer rather than download it.
MAX_RESPONSE_BYTES = 64 * 1024
# The part of the answer kept for the attempt log (what the endpoint said, for the operator).
KEPT_RESPONSE_BYTES = 1024
_MAX_ERROR_CHARS = 300
_USER_AGENT = "sorahook"
_URL_CACHE_SIZE = 4096


@dataclass(slots=True)  # not frozen: one per delivery attempt, and a frozen __init__ costs 5x
class SendResult:
    status_code: int | None  # None when no response: timeout, connect or DNS error, refused target
    retry_after: float | None  # seconds, from a Retry-After header on any response
    error: str | None  # short text for the attempt log; None on a complete response
    latency: float  # seconds, from the start of vetting to the end of the response
    unsafe: bool = False  # refused by SSRF vetting at delivery time
    body: bytes = b""  # the first KEPT_RESPONSE_BYTES of the response body


# The address vetted for the request running in this task. aiohttp asks its resolver only when it
# opens a new connection, from inside the request (no DNS cache, so no other task), so the answer
# is always the address that was just checked: there is no second lookup for DNS rebinding to win.
_vetted_ip: ContextVar[str | None] = ContextVar("sorahook_vetted_ip", default=None)


class _VettedAddressResolver(AbstractResolver):
    """An aiohttp resolver that performs no lookup and answers with the vetted address."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ip = _vetted_ip.get()
        if ip is None:
            raise ResolveError(f"no vetted address for {host}; refusing to look it up")
        return [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
        ]

    async def close(self) -> None:
        return None


class Deadlines:
    """Per-attempt deadlines for the tasks sending, kept by one timer instead of one per attempt.

    `asyncio.timeout` schedules and cancels a loop timer on every attempt, a measurable part of a
    delivery's CPU. Attempts share one timeout, so their deadlines come in order: one timer at the
    earliest deadline does. When it fires, every task past its deadline is cancelled (as
    `asyncio.timeout` does) and the timer moves to the next deadline. `attempt()` turns the
    cancellation into TimeoutError at the end of its block, and leaves any other cancellation alone.
    """

    def __init__(self) -> None:
        self._armed: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def attempt(self, timeout: float) -> _Attempt:
        """A `with` block that raises TimeoutError if it runs longer than `timeout` seconds."""
        return _Attempt(self, timeout)

    def _arm(self, task: asyncio.Task[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests): forget the old loop's tasks
            self._loop, self._timer, self._timer_at = loop, None, math.inf
            self._armed.clear()
            self._expired.clear()
        deadline = loop.time() + timeout
        self._armed[task] = deadline
        if deadline < self._timer_at:
            self._schedule(deadline)

    def _disarm(self, task: asyncio.Task[Any]) -> bool:
        """Forget the task's deadline; True if it was cancelled for passing it."""
        self._armed.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _schedule(self, at: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(at, self._fire), at

    def _fire(self) -> None:
        assert self._loop is not None
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        earliest = math.inf
        for task, deadline in list(self._armed.items()):
            if deadline <= now:
                del self._armed[task]
                self._expired.add(task)
                task.cancel()
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._schedule(earliest)


class _Attempt:
    __slots__ = ("_cancelling", "_deadlines", "_task", "_timeout")

    def __init__(self, deadlines: Deadlines, timeout: float) -> None:
        self._deadlines, self._timeout = deadlines, timeout

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        self._task, self._cancelling = task, task.cancelling()
        self._deadlines._arm(task, self._timeout)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._deadlines._disarm(self._task):
            return
        # Ours: take the cancellation back; if nobody else cancelled the task too, it is a timeout.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class Sender:
    """POSTs deliveries over pooled keep-alive connections (aiohttp; see bench/http_clients.py).

    Every send vets the URL again and connects only to the address vetted; redirects are returned
    as statuses, not followed; `timeout` bounds the whole attempt, DNS included.
    """

    def __init__(
        self, *, resolver: Resolver, allow_private: bool | PrivateTargets, max_connections: int = 256
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._urls: dict[tuple[str, str], URL] = {}
        self._deadlines = Deadlines()
        # Vetting a URL whose host is an address (no lookup) always gives the same answer: kept per URL.
        self._literal_targets: dict[str, Target] = {}

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds the session to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_VettedAddressResolver(),
                use_dns_cache=False,  # a cache would hand out addresses this send did not vet
                limit=self._max_connections,
                keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # one subscriber's cookies must not reach another
                timeout=aiohttp.ClientTimeout(total=None),  # the attempt's own deadline governs
                auto_decompress=False,  # the body is discarded; never inflate it
                trust_env=False,  # no proxies from the environment: we connect to what we vetted
            )
        return self._session

    # The deadline is a parameter by design: it is per attempt, and bounds vetting as well as HTTP.
    async def send(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
    ) -> SendResult:
        """POST `body` to `url`; report what happened, never raising for network or HTTP problems."""
        started = time.perf_counter()
        status: int | None = None
        retry_after: float | None = None
        error: str | None = None
        unsafe = False
        kept = b""
        if self._closed:
            return SendResult(None, None, "sender is closed", 0.0)
        try:
            with self._deadlines.attempt(timeout):
                target = self._literal_targets.get(url) or await self._vet(url)
                request_url = self._request_url(url, target)
                request_headers = CIMultiDict(headers)  # case-insensitive: a caller's "user-agent" wins
                request_headers.setdefault("Content-Type", "application/json")
                request_headers.setdefault("User-Agent", _USER_AGENT)
                token = _vetted_ip.set(target.ip)
                try:
                    async with self._client().post(
                        request_url, data=body, headers=request_headers, allow_redirects=False
                    ) as response:
                        status = response.status
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        kept = await _read_some(response)
                finally:
                    _vetted_ip.reset(token)
        except UnsafeTarget as exc:
            error, unsafe = f"unsafe target: {exc.reason}", True
        except ResolveError as exc:
            error = f"dns: {exc}"
        except TimeoutError:
            error = f"timeout after {timeout:g}s" if status is None else f"timeout after {timeout:g}s in body"
        except aiohttp.ClientConnectorDNSError as exc:
            error = f"dns: {exc}"
        except aiohttp.ClientSSLError as exc:
            error = f"tls error: {exc}"
        except aiohttp.ClientConnectorError as exc:
            error = f"connect error: {exc.os_error.strerror or exc.os_error}"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"connection error: {type(exc).__name__}: {exc}"
        latency = time.perf_counter() - started
        if error is not None:
            error = error[:_MAX_ERROR_CHARS]
        return SendResult(status, retry_after, error, latency, unsafe, kept)

    async def _vet(self, url: str) -> Target:
        target = await vet(url, self._resolver, allow_private=self._allow_private)
        if literal_ip(target.host) is not None:
            if len(self._literal_targets) >= _URL_CACHE_SIZE:
                self._literal_targets.clear()
            self._literal_targets[url] = target
        return target

    def _request_url(self, url: str, target: Target) -> URL:
        """The URL to request (parsed once per URL and address: subscription URLs repeat on every send)."""
        key = (url, target.ip)
        request_url = self._urls.get(key)
        if request_url is None:
            request_url = URL(url)
            if literal_ip(target.host) is not None:
                # Odd spellings such as 0x7f.1 become the address itself, as browsers do.
                request_url = request_url.with_host(target.ip.split("%", 1)[0])
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = request_url
        return request_url

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    """Read up to MAX_RESPONSE_BYTES, keeping the first KEPT_RESPONSE_BYTES; an unfinished body makes
    aiohttp drop the connection."""
    content = response.content
    remaining = MAX_RESPONSE_BYTES
    kept = b""
    while remaining > 0 and not content.at_eof():
        chunk = await content.read(remaining)
        if not chunk:
            break
        if len(kept) < KEPT_RESPONSE_BYTES:
            kept += chunk[: KEPT_RESPONSE_BYTES - len(kept)]
        remaining -= len(chunk)
    return kept
