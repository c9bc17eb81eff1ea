"""A plain sqlite3 connection that lives on a thread of its own, so the event loop never blocks on it.

Each connection gets a single-thread executor: `run(fn)` hands a whole function of the connection to
that thread and awaits it, so a batch of statements costs one hop, not one per statement. The writer
also runs its statements on the event loop between BEGIN and COMMIT (see `StoreCore._run_batch_here`);
the connection is opened with `check_same_thread=False` for that, and the writer awaits each step
before the next, so only one side uses it at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Connection:
    """One sqlite3 connection and the one thread that does its blocking work."""

    def __init__(self, raw: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self.raw = raw
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> Connection:
        """Open `path` in autocommit mode (transactions are explicit) with rows readable by name."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sorahook-sqlite")

        def connect() -> sqlite3.Connection:
            raw = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            raw.row_factory = sqlite3.Row
            return raw

        try:
            raw = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(raw, executor)

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run `fn(connection)` on the connection's thread."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, self.raw)

    async def execute(self, sql: str) -> None:
        """One statement whose rows are not wanted (a PRAGMA that answers, for example)."""
        await self.run(lambda c: c.execute(sql).fetchall())

    async def close(self) -> None:
        await self.run(lambda c: c.close())
        self._executor.shutdown(wait=True)
