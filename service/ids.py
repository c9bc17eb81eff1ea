"""Sortable, URL-safe identifiers: `prefix_` + 10 chars of milliseconds + 16 random chars (Crockford base32)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A new id that sorts after every id this process made before (monotonic within a millisecond)."""
    global _last_ms, _last_rand
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
        _last_ms, _last_rand = ms, rand
    return f"{prefix}_{_encode(ms, 10)}{_encode(rand, 16)}"


def job_id() -> str:
    return new_id("job")


def event_id() -> str:
    return new_id("evt")


def subscription_id() -> str:
    return new_id("sub")


def delivery_id() -> str:
    return new_id("dlv")
