"""The benchmarks' own helpers that a wrong figure could hide in."""

from __future__ import annotations

from bench import store_floor


def test_the_store_floor_replays_exactly_what_the_write_path_wrote() -> None:
    figures = store_floor.measure(batch=8, webhooks=64)  # raises if the replayed file differs
    assert figures["webhooks"] == 64
    assert 0 < figures["sql_us"] and 0 < figures["store_us"]
