"""Sortable, URL-safe identifiers: `prefix_` + 26 chars of base32hex over 48 bits of milliseconds + 80 random bits."""

from __future__ import annotations

import base64
import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_RAND_MAX = (1 << 80) - 1


def new_id(prefix: str) -> str:
    """A new id that sorts after every id this process made before (monotonic within a millisecond).

    base32hex keeps byte order in character order, so ids sort by creation time as plain strings.
    The random part need not be secret, only unlikely to collide: random.getrandbits (seeded from the OS)
    makes no system call, so it never hands the GIL to another thread mid-request.
    """
    global _last_ms, _last_rand
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
            if rand > _RAND_MAX:  # vanishingly rare: borrow the next millisecond
                ms, rand = ms + 1, random.getrandbits(79)
        else:
            rand = random.getrandbits(79)  # leave room to increment
        _last_ms, _last_rand = ms, rand
    raw = ms.to_bytes(6, "big") + rand.to_bytes(10, "big")
    return f"{prefix}_{base64.b32hexencode(raw).decode()[:26].lower()}"


def job_id() -> str:
    return new_id("job")


def event_id() -> str:
    return new_id("evt")


def subscription_id() -> str:
    return new_id("sub")


def delivery_id() -> str:
    return new_id("dlv")
