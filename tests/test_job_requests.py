"""POST /v1/jobs idempotency fingerprints and GET /v1/jobs order, cursors and metadata filters."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.jobs import fingerprint
from service.app import create_app
from service.store.sqlite import list_jobs_sql
from service.store.sqlite.migrations import apply_migrations
from tests.support import auth, live_server, make_settings

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def quiet_service(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A real server with no workers, so jobs stay as created."""
    app = create_app(make_settings(tmp_path), start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=auth()) as client:
        yield client


# --- idempotency ---------------------------------------------------------------------------------------------


def test_the_fingerprint_ignores_key_order_and_spacing_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"seconds": 4}) != fingerprint({"seconds": "4"})
    assert fingerprint({"prompt": "é"}) != fingerprint({"prompt": "e"})


async def test_a_key_reused_with_another_body_is_refused_and_the_same_body_replays(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        key = {"Idempotency-Key": "order-7"}
        first = await client.post("/v1/jobs", json={"prompt": "a fox", "seconds": 8}, headers=key)
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        # The same body, keys in another order and other spacing: the original job, replayed.
        same = await client.post(
            "/v1/jobs",
            content=b'{ "seconds": 8,   "prompt": "a fox" }',
            headers={**key, "content-type": "application/json"},
        )
        assert same.status_code == 202 and same.headers["idempotent-replayed"] == "true"
        assert same.json()["id"] == first.json()["id"]
        other = await client.post("/v1/jobs", json={"prompt": "a wolf", "seconds": 8}, headers=key)
        assert other.status_code == 422
        error = other.json()["error"]
        assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
        assert first.json()["id"] in error["message"]
        listed = (await client.get("/v1/jobs")).json()["data"]
        assert [j["id"] for j in listed] == [first.json()["id"]]  # nothing new was stored


async def test_a_batch_key_reused_with_another_body_is_refused(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        key = {"Idempotency-Key": "batch-7"}
        jobs = [{"prompt": "one"}, {"prompt": "two"}]
        first = await client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=key)
        again = await client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=key)
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert [j["id"] for j in again.json()["data"]] == [j["id"] for j in first.json()["data"]]
        other = await client.post("/v1/jobs/batch", json={"jobs": jobs[:1]}, headers=key)
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_key_used_for_a_single_job_is_refused_for_a_batch_and_the_other_way(tmp_path: Path) -> None:
    # One key, one request: a batch body is another body than a single job's, whatever the route.
    async with quiet_service(tmp_path) as client:
        single = await client.post("/v1/jobs", json={"prompt": "a"}, headers={"Idempotency-Key": "k-single"})
        batch = await client.post(
            "/v1/jobs/batch", json={"jobs": [{"prompt": "a"}]}, headers={"Idempotency-Key": "k-single"}
        )
        assert batch.status_code == 422 and batch.json()["error"]["code"] == "idempotency_key_reused"
        assert single.json()["id"] in batch.json()["error"]["message"]
        made = await client.post(
            "/v1/jobs/batch", json={"jobs": [{"prompt": "b"}]}, headers={"Idempotency-Key": "k-batch"}
        )
        again = await client.post("/v1/jobs", json={"prompt": "b"}, headers={"Idempotency-Key": "k-batch"})
        assert again.status_code == 422 and again.json()["error"]["code"] == "idempotency_key_reused"
        listed = (await client.get("/v1/jobs")).json()["data"]
        assert sorted(j["id"] for j in listed) == sorted([single.json()["id"], made.json()["data"][0]["id"]])


async def test_a_key_stored_before_fingerprints_existed_still_replays(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        key = {"Idempotency-Key": "old-key"}
        first = await client.post("/v1/jobs", json={"prompt": "a"}, headers=key)
        with sqlite3.connect(tmp_path / "sorahook.db") as db:  # as a row written before migration 13
            db.execute("UPDATE jobs SET request_hash = NULL")
        other = await client.post("/v1/jobs", json={"prompt": "b"}, headers=key)
        assert other.status_code == 202 and other.json()["id"] == first.json()["id"]


# --- listing -------------------------------------------------------------------------------------------------


async def _make(client: httpx.AsyncClient, n: int, **metadata: str) -> list[str]:
    ids = []
    for i in range(n):
        response = await client.post("/v1/jobs", json={"prompt": f"p{i}", "metadata": metadata or None})
        assert response.status_code == 202
        ids.append(response.json()["id"])
    return ids


async def _ids(client: httpx.AsyncClient, query: str) -> tuple[list[str], dict[str, Any]]:
    response = await client.get(f"/v1/jobs?{query}")
    assert response.status_code == 200, response.text
    page = response.json()
    return [j["id"] for j in page["data"]], page


async def test_order_asc_and_desc_walk_every_job_with_after(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        ids = await _make(client, 5)
        assert (await _ids(client, ""))[0] == ids[::-1]  # newest first by default
        assert (await _ids(client, "order=desc"))[0] == ids[::-1]
        seen: list[str] = []
        query = "order=asc&limit=2"
        while True:
            page, body = await _ids(client, query)
            seen += page
            if not body["has_more"]:
                break
            query = f"order=asc&limit=2&after={body['last_id']}"
        assert seen == ids


async def test_before_is_the_mirror_of_after(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        ids = await _make(client, 6)
        # Newest first, the page before job 1 holds the newer jobs nearest to it.
        page, body = await _ids(client, f"before={ids[1]}&limit=2")
        assert page == [ids[3], ids[2]] and body["has_more"] is True
        page, body = await _ids(client, f"before={ids[3]}&limit=5")
        assert page == [ids[5], ids[4]] and body["has_more"] is False
        # Oldest first, before goes back in time.
        page, body = await _ids(client, f"order=asc&before={ids[4]}&limit=2")
        assert page == [ids[2], ids[3]] and body["has_more"] is True
        page, _ = await _ids(client, f"after={ids[4]}&before={ids[1]}")
        assert page == [ids[3], ids[2]]


async def test_a_metadata_filter_finds_only_that_key_and_value(tmp_path: Path) -> None:
    async with quiet_service(tmp_path) as client:
        acme = await _make(client, 3, customer="acme")
        await _make(client, 2, customer="globex")
        await _make(client, 2, team="acme")
        await _make(client, 1)
        page, body = await _ids(client, "metadata.customer=acme&limit=2")
        assert page == acme[:0:-1] and body["has_more"] is True
        page, _ = await _ids(client, f"metadata.customer=acme&after={body['last_id']}")
        assert page == acme[:1]
        assert (await _ids(client, "metadata.customer=acme&order=asc"))[0] == acme
        assert (await _ids(client, "metadata.customer=acme&status=pending"))[0] == acme[::-1]
        assert (await _ids(client, "metadata.customer=acme&status=completed"))[0] == []
        assert (await _ids(client, "metadata.customer=nobody"))[0] == []
        assert (await _ids(client, "metadata.customer="))[0] == []  # an empty value is a value


@pytest.mark.parametrize(
    ("query", "status", "code", "param"),
    [
        ("colour=red", 400, "unknown_parameter", "colour"),
        ("cursor=x", 400, "unknown_parameter", "cursor"),
        ("order=sideways", 422, "invalid_parameter", "order"),
        ("metadata.=x", 422, "invalid_parameter", "metadata."),
        ("metadata.a=1&metadata.b=2", 422, "invalid_parameter", "metadata.b"),
        ("metadata.customer=acme&metadata.customer=globex", 422, "invalid_parameter", "metadata.customer"),
        ("limit=0", 422, "invalid_parameter", "limit"),
        ("status=done", 422, "invalid_parameter", "status"),
    ],
)
async def test_bad_list_parameters_are_named(
    tmp_path: Path, query: str, status: int, code: str, param: str
) -> None:
    async with quiet_service(tmp_path) as client:
        response = await client.get(f"/v1/jobs?{query}")
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["param"] == param and error["message"]


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize(("status", "kind"), [(None, None), ("pending", None), ("pending", "video")])
@pytest.mark.parametrize("metadata", [None, ("customer", "acme")])
@pytest.mark.parametrize(
    ("after", "before"), [(None, None), ("job_b", None), (None, "job_b"), ("job_a", "job_z")]
)
def test_every_listing_query_is_an_index_seek_in_id_order(
    tmp_path: Path,
    order: str,
    status: str | None,
    kind: str | None,
    metadata: tuple[str, str] | None,
    after: str | None,
    before: str | None,
) -> None:
    db = sqlite3.connect(tmp_path / "plan.db", isolation_level=None)
    apply_migrations(db, 0.0)
    sql, args, _ = list_jobs_sql(
        status=status, kind=kind, after=after, before=before, order=order, metadata=metadata
    )
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, (*args, 21))]
    # An index walk in id order that stops at the limit; never a scan of the table itself.
    assert all(step.startswith("SEARCH") or " USING " in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # and no sort: the index gives the order
