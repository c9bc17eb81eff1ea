"""Ids are prefixed, URL-safe and sort in the order they were made."""

from __future__ import annotations

import base64
import re

from hypothesis import given
from hypothesis import strategies as st

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


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_the_encoding_is_rfc4648_base32hex(value: int) -> None:
    expected = base64.b32hexencode(value.to_bytes(16, "big")).decode()[:26].lower()
    assert ids.encode_130(value << 2) == expected
