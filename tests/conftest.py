"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ServiceProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def factory(env: dict[str, str], **kwargs: Any) -> ServiceProcess:
        proc = ServiceProcess(tmp_path, env, **kwargs)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()
