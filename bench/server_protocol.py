"""What the client limits cost per request: uvicorn's httptools protocol vs sorahook's subclass, in one process.

`sorahook serve` runs uvicorn with `service.server.limited_protocol(...)`, which adds header and body
timeouts, a head size limit and a connection cap. This feeds the same signed-webhook-sized request through
each protocol class, one request at a time on one kept-alive connection, to a trivial ASGI app, and
measures process CPU per request; runs alternate between the two classes and the medians are compared.
No sockets and no other process, so the difference is the protocol's own Python and little else; the
full picture under real load is `bench.receiver` (whose full server runs under the limited protocol).

    python -m bench.server_protocol [--requests 20000] [--runs 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.server import Refusals, ServerLimits, limited_protocol

BODY = b'{"id":"evt_1","object":"event","created_at":1,"type":"video.completed","data":{"id":"video_1"}}'
REQUEST = (
    b"POST /webhooks/openai HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nwebhook-id: msg_1\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,abc\r\n\r\n"
    % len(BODY)
) + BODY


class _Transport(asyncio.Transport):
    """Counts writes; everything else a protocol asks of a transport is a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _per_request_us(protocol: type[HttpToolsProtocol], requests: int) -> float:
    config = Config(_app, lifespan="off", log_level="warning", access_log=False)
    config.load()
    state = ServerState()
    conn = protocol(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    conn.connection_made(transport)
    started = time.process_time()
    for _ in range(requests):
        conn.data_received(REQUEST)
        for task in list(state.tasks):  # the app answers before the next request, as a client waits
            await task
    took = time.process_time() - started
    conn.connection_lost(None)
    assert transport.writes >= requests, "every request must be answered"
    return took / requests * 1e6


async def measure(requests: int, runs: int) -> dict[str, list[float]]:
    limited = limited_protocol(ServerLimits(), Refusals(lambda reason: None))
    classes: list[tuple[str, type[HttpToolsProtocol]]] = [
        ("uvicorn", HttpToolsProtocol),
        ("sorahook", limited),
    ]
    results: dict[str, list[float]] = {name: [] for name, _ in classes}
    for run in range(runs):
        for name, cls in classes if run % 2 == 0 else classes[::-1]:
            results[name].append(await _per_request_us(cls, requests))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_protocol", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per run (20000)")
    parser.add_argument("--runs", type=int, default=9, help="runs per protocol, alternating (9)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        results = uvloop.run(measure(args.requests, args.runs))
    except ImportError:
        results = asyncio.run(measure(args.requests, args.runs))
    plain, limited = (statistics.median(results[name]) for name in ("uvicorn", "sorahook"))
    for name, values in results.items():
        print(f"{name:>9}: " + " ".join(f"{v:.1f}" for v in values) + " us per request")
    print(
        f"per request, protocol + a trivial app (medians of {args.runs}): uvicorn's httptools {plain:.2f} us,"
        f" with sorahook's limits {limited:.2f} us: {limited - plain:+.2f} us ({(limited / plain - 1) * 100:+.1f}%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
