"""The store backends the contract suite runs against: each is a fixture parameter, the tests are shared.

A backend joins by adding a parameter here that opens it (PostgreSQL opens a fresh schema on the
cluster `.ci/run` starts, and skips when there is none);
the tests only use `service.store.protocol`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.clock import ManualClock
from service.config import new_webhook_secret
from service.secretbox import SecretBox
from service.store import open_store
from service.store.protocol import Store
from tests import postgres

pytestmark = pytest.mark.anyio

RETRY_SCHEDULE = (0.0, 10.0, 60.0)
DISABLE_AFTER = 3600.0


@dataclass
class Backend:
    name: str
    open: Callable[[ManualClock], Awaitable[Store]]


def _sqlite(tmp_path: Path) -> Backend:
    async def open_sqlite(clock: ManualClock) -> Store:
        return await open_store(
            f"sqlite:///{tmp_path / 'contract.db'}",
            clock=clock,
            retry_schedule=RETRY_SCHEDULE,
            callback_secret=new_webhook_secret(),
            disable_after=DISABLE_AFTER,
            box=SecretBox(b"k" * 32),
        )

    return Backend("sqlite", open_sqlite)


def _postgresql(tmp_path: Path) -> Backend:
    async def open_postgresql(clock: ManualClock) -> Store:
        url = await postgres.create_schema(postgres.require_base_url())
        return await open_store(
            url,
            clock=clock,
            retry_schedule=RETRY_SCHEDULE,
            callback_secret=new_webhook_secret(),
            disable_after=DISABLE_AFTER,
            box=SecretBox(b"k" * 32),
        )

    return Backend("postgresql", open_postgresql)


BACKENDS = {"sqlite": _sqlite, "postgresql": _postgresql}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(backend: Backend, clock: ManualClock) -> AsyncIterator[Store]:
    opened = await backend.open(clock)
    try:
        yield opened
    finally:
        await opened.aclose()
