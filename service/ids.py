"""Sortable, URL-safe identifiers: `prefix_` + 26 chars of base32hex over 48 bits of milliseconds + 80 random bits."""

from __future__ import annotations

import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_RAND_MAX = (1 << 80) - 1
# base32hex (RFC 4648 "extended hex"), lower case, two characters per 10 bits: base64.b32hexencode is
# written in Python and cost ~25 us per id, more than the SQL insert the id goes into.
_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


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
    return f"{prefix}_{encode_130(((ms << 80) | rand) << 2)}"


_SHIFTS = tuple(range(120, -1, -10))


def encode_130(value: int) -> str:
    """26 base32hex characters for a 130-bit value (128 bits of id shifted left by 2, as RFC 4648 pads)."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in _SHIFTS])  # a list: 0.9 us, a generator 1.2


def job_id() -> str:
    return new_id("job")


def event_id() -> str:
    return new_id("evt")


def subscription_id() -> str:
    return new_id("sub")


def delivery_id() -> str:
    return new_id("dlv")


MAX_ID_LENGTH = 256


def wellformed(value: str) -> bool:
    """An id from outside (an event's id, a resource id) fit to store and to put in a URL path segment:
    1 to 256 printable characters (no control characters, no lone surrogates), and not "." or ".."."""
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable() and value not in (".", "..")
