"""The OpenAI Videos API emulator: OpenAI's shapes and errors, a clock-driven lifecycle, signed webhooks.

The parts, one module each: `model` (the configuration and each video's lifecycle, computed from the
clock), `routes` (the API and control routes), `webhooks` (the signed final-state webhooks and their
retries) and `faults` (injected error answers). `Emulator` wires them together and runs the ticker.

- Every knob is bounded (the ``MAX_*`` constants): a fault rule is one counter whatever its ``count``,
  and the ``calls`` / ``webhooks_sent`` records keep the latest ``MAX_RECORDED`` entries.
- The app's own lifespan starts the ticker (standalone ``sorahook emulator``). A parent app that mounts
  this one must run ``Emulator.run()`` itself, since Starlette does not run a mounted app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette

from service.clock import Clock, SystemClock
from service.emulator.faults import Faults, KnobOutOfRange
from service.emulator.model import MAX_RECORDED, EmulatorConfig, Videos, record_bounded
from service.emulator.routes import Routes
from service.emulator.webhooks import WebhookSender

__all__ = ["MAX_RECORDED", "Emulator", "EmulatorConfig", "KnobOutOfRange", "_record"]

log = logging.getLogger(__name__)

_record = record_bounded  # the name the emulator's tests know the bounded record by


class Emulator:
    """An in-memory OpenAI Videos API with knobs for failures, lost and duplicated webhooks and errors."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        clock: Clock | None = None,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        self._clock: Clock = clock or SystemClock()
        rng = random.Random(config.seed)  # one stream for every random choice, so a seed replays a run
        self._videos = Videos(config, self._clock, rng)
        self._faults = Faults()
        # Answer the next `count` API requests under `path_prefix` with `status` (FIFO); KnobOutOfRange
        # for a value outside its bounds.
        self.inject_fault = self._faults.inject
        self._webhooks = WebhookSender(config, self._clock, self._videos.chance, webhook_transport)
        self.calls: list[tuple[str, str]] = []
        self.videos: dict[str, dict[str, Any]] = self._videos.objects
        self.webhooks_sent: list[dict[str, Any]] = self._webhooks.sent
        self.webhooks_dropped: list[str] = self._webhooks.dropped
        self._routes = Routes(config, self._videos, self._faults, self._clock, rng, self.calls)
        self.app = Starlette(routes=self._routes.routes(), lifespan=self._lifespan)

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    @config.setter
    def config(self, config: EmulatorConfig) -> None:
        """A new configuration takes effect at once in every part (tests turn knobs mid-run)."""
        self._config = self._videos.config = self._webhooks.config = self._routes.config = config

    @property
    def pending_faults(self) -> int:
        """Requests the queued fault rules will still answer."""
        return self._faults.pending

    def asset(self, variant: str) -> tuple[bytes, str, str]:
        """The bytes, content type and extension a download of `variant` serves (``content_size`` applied)."""
        return self._routes.asset(variant)

    async def run_once(self) -> None:
        """Move every video along the clock, schedule final-state webhooks and send the due ones."""
        now = self._clock.now()
        for record, video in self._videos.newly_final(now):
            self._webhooks.schedule(record, video)
        await self._webhooks.send_due(now)

    async def run(self, interval: float = 0.05) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("emulator tick failed")
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        await self._webhooks.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.aclose()
