"""PostgreSQL for tests: a fresh schema per test on the cluster named by SORAHOOK_TEST_POSTGRES_URL.

`.ci/run` starts a throwaway cluster on loopback and sets the variable; without it, tests that need
PostgreSQL skip and say so. Each test gets its own schema (a URL whose `search_path` names it), which is
faster than a database per test and isolates the same way: every table, and every advisory lock the
store takes, is keyed by the schema.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import urllib.parse

import pytest

ENV = "SORAHOOK_TEST_POSTGRES_URL"
# `SORAHOOK_TEST_STORE=postgresql` runs the whole suite's services on PostgreSQL (`make test-postgres`):
# settings and service processes that do not name a database get a fresh schema instead of a SQLite file.
STORE_ENV = "SORAHOOK_TEST_STORE"
SKIP_REASON = f"PostgreSQL tests need {ENV} (bash .ci/run starts a throwaway cluster and sets it)"


def base_url() -> str | None:
    return os.environ.get(ENV, "").strip() or None


def require_base_url() -> str:
    url = base_url()
    if url is None:
        pytest.skip(SKIP_REASON)
    return url


def with_schema(url: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def create_schema(url: str) -> str:
    """A new empty schema on the cluster at `url`; the URL that uses it."""
    import asyncpg

    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return with_schema(url, schema)


def fresh_url() -> str:
    """A URL on a new schema, from synchronous code, even inside a running event loop (its own thread)."""
    base = require_base_url()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, create_schema(base)).result()


def suite_on_postgres() -> bool:
    """Whether this run puts the services of every test on PostgreSQL (SORAHOOK_TEST_STORE=postgresql)."""
    return os.environ.get(STORE_ENV, "").strip().lower() in ("postgresql", "postgres")
