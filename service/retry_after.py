"""Reading a server's Retry-After: delta-seconds or an HTTP date (RFC 9110), shared by both HTTP clients."""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC

_DELTA_SECONDS = re.compile(r"\s*(\d{1,10}(?:\.\d+)?)\s*")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    match = _DELTA_SECONDS.fullmatch(value)
    if match is not None:
        return float(match.group(1))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
