"""The console's pages with 100,000 jobs in the store: a page of 50 jobs must render in under 50 ms.

Builds a store of N jobs (batches of 100 through the store's own create), then times each console page in
process (the app through httpx's ASGI transport, signed in, no network): the first page of jobs, a filtered
page, a page by cursor, metadata and created-range filters (one matching nothing, which reads every
job's metadata), a batch found by Idempotency-Key, a job's page and the overview. Medians and p95
over `--rounds` requests each.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.app import create_app
from service.clock import SystemClock
from service.config import Settings, new_webhook_secret
from service.domain.quotas import NewJob, Quotas
from service.store.sqlite import SqliteStore

BUDGET_MS = 50.0
TOKEN = "bench-console-token"


async def fill(path: Path, jobs: int) -> None:
    store = await SqliteStore.open(
        path, clock=SystemClock(), retry_schedule=(0.0,), callback_secret=new_webhook_secret()
    )
    try:
        request = {"model": "sora-2", "prompt": "a red fox in the snow", "seconds": "4", "size": "720x1280"}
        for start in range(0, jobs, 100):
            specs = [
                NewJob(request, None, {"client": "bench"}, "bench", 0.4)
                for _ in range(min(100, jobs - start))
            ]
            await store.create_api_jobs(
                specs, quotas=Quotas(None, None, None), idempotency_key=f"bench-{start}", batch=True
            )
    finally:
        await store.aclose()


async def measure(path: Path, rounds: int) -> list[tuple[str, float, float, int]]:
    settings = Settings(
        database_path=path,
        webhook_secrets=(new_webhook_secret(),),
        admin_token=TOKEN,
        callback_secret=new_webhook_secret(),
        secret_key=b"k" * 32,
        archive=False,
    )
    app = create_app(settings, start_workers=False)
    out = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
    ):
        response = await client.post("/ui/signin", data={"token": TOKEN})
        assert response.status_code == 303, response.text
        first = await client.get("/ui/jobs")
        ids = re.findall(r'href="/ui/jobs/(job_[0-9a-v]+)"', first.text)
        assert len(ids) == 50, "the first page should list 50 jobs"
        pages = [
            ("jobs, first page of 50", "/ui/jobs"),
            ("jobs, status + kind filter", "/ui/jobs?status=pending&kind=video"),
            ("jobs, a page by cursor", f"/ui/jobs?after={ids[-1]}"),
            ("jobs, no match (completed)", "/ui/jobs?status=completed"),
            ("jobs, metadata client=bench", "/ui/jobs?metadata=client%3Dbench"),
            ("jobs, metadata no match (scan)", "/ui/jobs?metadata=client%3Dnobody"),
            ("jobs, created in the last hour", f"/ui/jobs?created_from={int(time.time()) - 3600}"),
            ("a batch by Idempotency-Key", "/ui/jobs?find=bench-50000"),
            ("a job's page", f"/ui/jobs/{ids[0]}"),
            ("overview", "/ui/"),
        ]
        for name, url in pages:
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                response = await client.get(url)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (url, response.status_code)
            rows = len(re.findall(r'href="/ui/jobs/job_', response.text))
            times.sort()
            out.append(
                (name, statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], rows)
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "console.db"
        started = time.monotonic()
        asyncio.run(fill(path, args.jobs))
        print(f"store: {args.jobs:,} jobs ({time.monotonic() - started:.0f} s to build)")
        results = asyncio.run(measure(path, args.rounds))
    print(f"{'page':<34} {'median ms':>10} {'p95 ms':>8} {'job links':>10}")
    for name, median, p95, rows in results:
        print(f"{name:<34} {median:>10.1f} {p95:>8.1f} {rows:>10}")
    first_page = results[0][1]
    verdict = "met" if first_page < BUDGET_MS else "NOT met"
    print(f"a page of 50 jobs: median {first_page:.1f} ms (goal < {BUDGET_MS:.0f} ms: {verdict})")
    return 0 if first_page < BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
