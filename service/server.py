"""The HTTP server: uvicorn's httptools protocol with the limits a public endpoint needs, and the listening socket.

uvicorn bounds idle keep-alive connections but not a client that is slow on purpose: it waits forever for
a request head, buffers heads of any size, waits forever for the rest of a declared body, and accepts
connections until the process runs out of file descriptors. `limited_protocol` returns a subclass of
uvicorn's `HttpToolsProtocol` (handed to `uvicorn.Config(http=…)`) that adds, per connection:

- a header timeout: the whole request head must arrive within `header_timeout` seconds of the connection
  opening (or of the first byte of the next request on a kept-alive connection); then the connection is
  closed;
- a body idle timeout: once the head is in, a body that sends no byte for `body_timeout` seconds gets a 408
  (or, if the app already answered, a close). Time when reading is paused because the app has not yet
  consumed what arrived is the server's, not the client's, and never counts;
- a head size limit: a head larger than `max_header_bytes` gets a 431 and a close; no more than that is
  ever fed to the parser;
- a connection cap: beyond `max_connections` open connections a new one is answered 503 and closed at once.

Each refusal increments `sorahook_connections_refused_total{reason}` and is logged (one line per reason at
once, then at most one summary line per reason every `LOG_EVERY` seconds, so an attack cannot flood the
log). The common path, a whole request in one read, costs a comparison and an addition per read; timers
exist only for heads and bodies that span several reads, plus one per new connection.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import json
import logging
import resource
import socket
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.server import ServerState

from service.metrics import CONNECTION_REFUSAL_REASONS

log = logging.getLogger("sorahook.server")

LOG_EVERY = 10.0  # seconds between two log lines for the same refusal reason
# Descriptors kept free for everything that is not an incoming connection: SQLite and its WAL, outgoing
# deliveries and OpenAI calls, archive files, the listening socket, logs.
FD_RESERVE = 256


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 2048
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_header_bytes: int = 65536


class ListenError(Exception):
    """The address cannot be listened on; the message is one line naming it and how to choose another."""


def memory_trimmer() -> Callable[[], None]:
    """A function that hands freed heap memory back to the system (glibc's malloc_trim), or does nothing.

    Slow clients make the process hold their unfinished requests (a stalled 1 MiB body is kept as 64 KiB
    pieces). Python frees them when the connection is closed, but glibc keeps small freed pieces in its
    heap: measured here, 200 stalled 512 KiB bodies left RSS at 168 MB after every one was closed, 64 MB
    after a malloc_trim. Other C libraries (musl, macOS) have no such call and return memory differently.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


class Refusals:
    """Counts every refusal by reason and logs them without letting a flood of them flood the log.

    `after_burst` runs with each summary (every `log_every` seconds while refusals keep coming, and once
    more when they stop): the place to give back the memory the refused connections held.
    """

    def __init__(
        self,
        count: Callable[[str], None],
        *,
        log_every: float = LOG_EVERY,
        after_burst: Callable[[], None] = lambda: None,
    ) -> None:
        self._count = count
        self._log_every = log_every
        self._after_burst = after_burst
        self._pending: dict[str, int] = {}  # reason -> refusals since its last line, while a summary is due

    def record(self, reason: str, client: tuple[str, int] | None, detail: str) -> None:
        self._count(reason)
        if reason in self._pending:
            self._pending[reason] += 1
            return
        self._pending[reason] = 0
        log.warning(
            "closed a connection: %s",
            detail,
            extra={"reason": reason, "client": f"{client[0]}:{client[1]}" if client else None},
        )
        asyncio.get_running_loop().call_later(self._log_every, self._summarise, reason)

    def _summarise(self, reason: str) -> None:
        self._after_burst()
        more = self._pending.pop(reason, 0)
        if more:
            log.warning(
                "closed %d more connections (%s) in the last %g s",
                more,
                reason,
                self._log_every,
                extra={"reason": reason, "count": more},
            )
            self._pending[reason] = 0
            asyncio.get_running_loop().call_later(self._log_every, self._summarise, reason)


def _response(status: int, code: str, message: str, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        + b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra_headers
        + b"\r\n"
        + body
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits above; `limited_protocol` binds the limits to a subclass."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    refusals: ClassVar[Refusals | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._refused = False
        self._head_open = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes read while the current head is open
        self._max_head = self.limits.max_header_bytes
        self._header_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._last_body = 0.0

    # --- the connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            transport.write(
                _response(
                    503,
                    "too_many_connections",
                    "the server has too many open connections; retry shortly",
                    b"retry-after: 1\r\n",
                )
            )
            transport.close()
            self._refuse_count(
                "too_many_connections",
                get_remote_addr(transport),
                f"{self.limits.max_connections} connections are open (SORAHOOK_MAX_CONNECTIONS)",
            )
            return
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The common case, a whole request in one read, costs two comparisons and an addition here. The
        # base class's methods are called directly rather than through super(): this runs on every read.
        if self._head_open:
            room = self._max_head - self._head_bytes
            if len(data) > room:
                self._feed_at_the_limit(data, room)
                return
            self._head_bytes += len(data)
        elif self._body_timer is not None:  # bytes after a complete head are body bytes
            self._last_body = self.loop.time()
        HttpToolsProtocol.data_received(self, data)
        if self._head_open:
            # A head still incomplete after this read (the first request's timer runs from the connection).
            if self._head_bytes and self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)
        elif self._body_timer is None and not self.transport.is_closing():
            self._last_body = self.loop.time()
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _feed_at_the_limit(self, data: bytes, room: int) -> None:
        """Feed what fits under the head limit; if the head is still not complete, answer 431."""
        if room > 0:
            self._head_bytes += room
            HttpToolsProtocol.data_received(self, data[:room])
            if self.transport.is_closing():
                return
        if self._head_open:
            if self.cycle is None or self.cycle.response_complete:  # not in the middle of a pipelined answer
                self.transport.write(
                    _response(
                        431,
                        "header_too_large",
                        f"the request head is larger than {self.limits.max_header_bytes} bytes",
                    )
                )
            self.transport.close()
            self._refuse_count(
                "header_too_large",
                self.client,
                f"request head over {self.limits.max_header_bytes} bytes (SORAHOOK_MAX_HEADER_BYTES)",
            )
            return
        self.data_received(data[room:])  # the head ended inside what fitted: the rest is body (or more)

    # --- parser callbacks -------------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._head_open = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._head_open = True
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # --- the timers -------------------------------------------------------------------------------------

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._head_open:
            return
        self.transport.close()
        self._refuse_count(
            "header_timeout",
            self.client,
            f"request head not complete within {self.limits.header_timeout:g} s (SORAHOOK_HEADER_TIMEOUT)",
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._head_open:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The app has not consumed what already arrived: the wait is ours, not the client's.
            self._last_body = now
        idle = now - self._last_body
        if idle < self.limits.body_timeout:
            self._body_timer = self.loop.call_later(self.limits.body_timeout - idle, self._body_timed_out)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the app's receive() now ends the request and its send() is a no-op
            self.transport.write(
                _response(
                    408,
                    "request_timeout",
                    f"no request body bytes for {self.limits.body_timeout:g} s",
                )
            )
        self.transport.close()
        self._refuse_count(
            "body_timeout",
            self.client,
            f"no request body bytes for {self.limits.body_timeout:g} s (SORAHOOK_BODY_TIMEOUT)",
        )

    def _stop_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _refuse_count(self, reason: str, client: tuple[str, int] | None, detail: str) -> None:
        if self.refusals is not None:
            self.refusals.record(reason, client, detail)


def limited_protocol(limits: ServerLimits, refusals: Refusals | None) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=…)` enforcing `limits` and reporting to `refusals`."""

    class Bound(LimitedHttpToolsProtocol):
        pass

    Bound.limits = limits
    Bound.refusals = refusals
    return Bound


def refusal_counter(counter: Any) -> Callable[[str], None]:
    """Increment a `reason`-labelled Prometheus counter, its children looked up once per reason."""
    children = {reason: counter.labels(reason=reason) for reason in CONNECTION_REFUSAL_REASONS}
    return lambda reason: children[reason].inc()


def fit_descriptor_limit(limits: ServerLimits, reserve: int = FD_RESERVE) -> ServerLimits:
    """Raise the soft open-files limit to fit `max_connections` (up to the hard limit), else lower the cap.

    Without this the cap would never act: at the usual soft limit of 1,024, accept() fails with EMFILE
    long before 2,048 connections, and then /healthz cannot connect either.
    """
    needed = limits.max_connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, soft - reserve)
        log.warning(
            "SORAHOOK_MAX_CONNECTIONS lowered from %d to %d: the open-files limit is %d (raise it with ulimit -n)",
            limits.max_connections,
            fitted,
            soft,
        )
        return replace(limits, max_connections=fitted)
    return limits


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a taken address is one clear line before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {where}: {exc.strerror}; check SORAHOOK_HOST or --host"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"{where} is already in use (another sorahook?): choose another port with SORAHOOK_PORT or --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise ListenError(
                f"cannot listen on {where}: permission denied; choose a port above 1023 with SORAHOOK_PORT or --port"
            ) from None
        reason = exc.strerror or str(exc)
        raise ListenError(
            f"cannot listen on {where}: {reason}; choose another address with SORAHOOK_HOST/SORAHOOK_PORT"
            " or --host/--port"
        ) from None
    return sock
