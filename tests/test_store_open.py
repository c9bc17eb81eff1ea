"""Choosing the store: open_store by URL, and an app built around a store its caller owns."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.clock import ManualClock
from service.config import ConfigError
from service.store import open_store
from tests.support import auth, live_server, make_settings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://db:port/sorahook", "not a valid"),
        ("postgresql://db:5432/", "names no database"),
        ("mysql://db/sorahook", "must look like"),
    ],
)
async def test_a_database_url_it_cannot_use_is_refused_with_one_line_naming_the_variable(
    url: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        await open_store(url, clock=ManualClock())
    message = str(refused.value)
    assert "SORAHOOK_DATABASE_URL" in message and says in message and "\n" not in message


async def test_an_app_uses_the_store_it_is_given_and_leaves_it_open(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'given.db'}", clock=ManualClock())
    try:
        job, _ = await store.track_job(
            kind="video", resource_id="video_given", callback_url=None, metadata={}
        )
        app = create_app(make_settings(tmp_path), store=store, start_workers=False)
        async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get(f"/v1/jobs/{job.id}", headers=auth())
            assert response.status_code == 200 and response.json()["id"] == job.id
        assert await store.ping()  # the app did not close what it does not own
    finally:
        await store.aclose()
    assert not (tmp_path / "sorahook.db").exists()  # the settings' own database was never opened
