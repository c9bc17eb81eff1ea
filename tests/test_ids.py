"""Ids are prefixed, URL-safe and sort in the order they were made."""

from __future__ import annotations

import re

from service import ids


def test_ids_are_url_safe_and_prefixed() -> None:
    for make, prefix in (
        (ids.job_id, "job"),
        (ids.event_id, "evt"),
        (ids.subscription_id, "sub"),
        (ids.delivery_id, "dlv"),
    ):
        value = make()
        assert re.fullmatch(rf"{prefix}_[0-9a-v]{{26}}", value), value


def test_ids_sort_in_creation_order() -> None:
    made = [ids.new_id("x") for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
