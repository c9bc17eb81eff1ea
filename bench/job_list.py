"""GET /v1/jobs with a metadata filter: the store's query (job_metadata seek) against a scan of the jobs' JSON.

A file with `--jobs` jobs whose `customer` metadata is common (1 in 100), rare (1 in 10,000) or absent;
each figure is the median time of one first page (20 jobs, newest first) and of a page deep in the list
(`after` a cursor), by the store's own SQL (service.store.sqlite.list_jobs_sql) and by the plain
`json_extract(metadata, '$.customer') = ?` filter the index replaces.

    python -m bench.job_list [--jobs 100000] [--repeats 31]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from service import ids
from service.store.sqlite import list_jobs_sql
from service.store.sqlite.migrations import apply_migrations

PAGE = 20


def build(path: Path, jobs: int) -> dict[str, list[str]]:
    """Jobs with a customer every 100th (acme) or 10,000th (initech) job; the ids of each, oldest first."""
    db = sqlite3.connect(path, isolation_level=None)
    apply_migrations(db, 0.0)
    by_customer: dict[str, list[str]] = {"acme": [], "initech": []}
    db.execute("BEGIN")
    for i in range(jobs):
        job_id = ids.job_id()
        customer = "initech" if i % 10_000 == 5_000 else "acme" if i % 100 == 0 else f"c{i % 997}"
        metadata = {"customer": customer, "order": str(i)}
        by_customer.setdefault(customer, []).append(job_id)
        db.execute(
            "INSERT INTO jobs (id, kind, status, origin, metadata, created_at, updated_at)"
            " VALUES (?, 'video', 'completed', 'api', ?, ?, ?)",
            (job_id, json.dumps(metadata), float(i), float(i)),
        )
        db.executemany(
            "INSERT INTO job_metadata (key, value, job_id) VALUES (?, ?, ?)",
            [(key, value, job_id) for key, value in metadata.items()],
        )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    return by_customer


def median_ms(db: sqlite3.Connection, sql: str, params: tuple[object, ...], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        db.execute(sql, params).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.db"
        started = time.perf_counter()
        by_customer = build(path, args.jobs)
        print(f"{args.jobs} jobs built in {time.perf_counter() - started:.1f} s")
        db = sqlite3.connect(path)
        scan = (
            "SELECT * FROM jobs WHERE json_extract(metadata, '$.customer') = ?"
            " AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?"
        )
        print(f"{'customer':<10} {'page':<6} {'rows':>5} {'index ms':>9} {'scan ms':>9} {'scan/index':>10}")
        for customer in ("acme", "initech", "nobody"):
            matching = by_customer.get(customer, [])
            deep = matching[len(matching) // 2] if matching else None
            for page, after in (("first", None), ("deep", deep)):
                if page == "deep" and after is None:
                    continue
                sql, params, _ = list_jobs_sql(
                    status=None,
                    kind=None,
                    after=after,
                    before=None,
                    order="desc",
                    metadata=("customer", customer),
                )
                rows = db.execute(sql, (*params, PAGE + 1)).fetchall()
                assert rows == db.execute(scan, (customer, after, after, PAGE + 1)).fetchall()
                indexed = median_ms(db, sql, (*params, PAGE + 1), args.repeats)
                scanned = median_ms(db, scan, (customer, after, after, PAGE + 1), args.repeats)
                print(
                    f"{customer:<10} {page:<6} {len(rows):>5} {indexed:>9.3f} {scanned:>9.3f}"
                    f" {scanned / indexed:>10.0f}"
                )
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
