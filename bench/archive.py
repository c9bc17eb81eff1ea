"""Measure archive throughput: the archiver copying a large video from the emulator to local disk, in MB/s.

`python -m bench.archive [--size-mib 64] [--rounds 5]` (part of `make bench`). The emulator serves a video of
`--size-mib` MiB from a real uvicorn server on loopback, in a thread with its own event loop. Each round copies
a fresh video three ways, over the same HTTP client (`OpenAIClient.download_content`):

- plain: the streamed body written to a file, nothing else;
- plain + fsync: the same, then fsync (the durability the archiver pays for);
- archiver: `Archiver.run_once()` on one claimed row: SHA-256 and size while streaming, Content-Length check,
  a temporary file in 1 MiB writes, fsync, rename, directory fsync, and the store's rows and `result.assets`.

Medians of the rounds; the ratio archiver / plain is the figure to compare (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import uvicorn

from service.archive import Archiver
from service.clock import SystemClock
from service.domain import Observation
from service.emulator import Emulator, EmulatorConfig
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.storage import LocalStorage
from service.store.sqlite import SqliteStore

MIB = 1024 * 1024


class EmulatorThread:
    """The emulator under uvicorn on a loopback port, on its own thread and event loop."""

    def __init__(self, emulator: Emulator) -> None:
        config = uvicorn.Config(emulator.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bench-emulator", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the emulator did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def plain_copy(openai: OpenAIClient, video_id: str, target: Path, *, fsync: bool) -> int:
    size = 0
    with target.open("wb") as out:
        async with openai.download_content(video_id, "video") as response:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
                size += len(chunk)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    return size


async def timed(work: Awaitable[object]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


async def run(size_mib: int, rounds: int) -> dict[str, list[float]]:
    emulator = Emulator(EmulatorConfig(duration=0.0, content_size=size_mib * MIB))
    expected = hashlib.sha256(emulator.asset("video")[0]).hexdigest()
    seconds: dict[str, list[float]] = {"plain": [], "plain + fsync": [], "archiver": []}
    with EmulatorThread(emulator) as base_url, tempfile.TemporaryDirectory(prefix="sorahook-bench-") as tmp:
        root = Path(tmp)
        clock = SystemClock()
        store = await SqliteStore.open(root / "bench.db", clock=clock)
        await store.configure_archive(("video",))
        metrics = Metrics()
        openai = OpenAIClient(base_url=base_url, api_key=None, metrics=metrics, timeout=120.0)
        storage = LocalStorage(root / "archive")
        archiver = Archiver(store=store, openai=openai, storage=storage, clock=clock, metrics=metrics)
        try:
            for round_ in range(
                rounds + 1
            ):  # the first round warms up (connections, page cache) and is dropped
                video = await openai.create_video(
                    prompt="bench", model="sora-2", seconds="4", size="720x1280", idempotency_key=None
                )
                target = root / f"plain-{round_}.mp4"
                results = {
                    "plain": await timed(plain_copy(openai, video["id"], target, fsync=False)),
                    "plain + fsync": await timed(plain_copy(openai, video["id"], target, fsync=True)),
                }
                target.unlink()
                job, _ = await store.track_job(
                    kind="video", resource_id=video["id"], callback_url=None, metadata={}
                )
                await store.apply_observation(job.id, Observation(status="completed"), "bench")
                results["archiver"] = await timed(archiver.run_once())
                [archived] = await store.list_archives(job.id)
                if archived.status != "stored" or archived.sha256 != expected:
                    raise RuntimeError(f"the archive did not complete: {archived}")
                (root / "archive" / job.id / "video.mp4").unlink()
                if round_:
                    for name, value in results.items():
                        seconds[name].append(value)
        finally:
            await openai.aclose()
            await store.aclose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    seconds = asyncio.run(run(args.size_mib, args.rounds))
    size_mb = args.size_mib * MIB / 1e6
    print(
        f"archive throughput, one {args.size_mib} MiB video from the emulator over loopback HTTP to local disk"
    )
    print(f"medians of {args.rounds} rounds (after one warm-up round)")
    plain = statistics.median(seconds["plain"])
    print(f"  {'copy':<16} {'MB/s':>8} {'seconds':>9} {'vs plain':>9}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:<16} {size_mb / median:>8.0f} {median:>9.3f} {plain / median:>8.2f}x")


if __name__ == "__main__":
    main()
