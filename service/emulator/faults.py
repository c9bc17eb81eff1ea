"""Injected faults: queued error answers (FIFO rules, one counter each) and OpenAI's error envelope.

Request faults apply in this order: queued rules from ``inject``, then ``error_rate``, then the API key
check. A rule costs the same memory whatever its ``count``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse

MAX_FAULT_COUNT = 1_000_000  # requests one fault rule answers (a counter: O(1) memory whatever the count)
MAX_FAULT_RULES = 1_000  # fault rules queued at once
MAX_RETRY_AFTER = 3600.0  # seconds
MAX_TEXT = 256  # characters of a fault's code or path prefix


@dataclass
class Fault:
    """One rule: answer the next `remaining` requests under `path_prefix` with `status`."""

    status: int
    retry_after: float | None
    code: str | None
    path_prefix: str
    remaining: int


class KnobOutOfRange(ValueError):
    """A control value outside its bounds (the control route answers 422)."""


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error envelope."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def fault_response(status: int, *, code: str | None = None, retry_after: float | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = (
            str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
        )
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    if status == 429:
        code = code or "rate_limit_exceeded"
        type_ = "insufficient_quota" if code == "insufficient_quota" else "requests"
        message = (
            "You exceeded your current quota, please check your plan and billing details."
            if code == "insufficient_quota"
            else "Rate limit reached for requests. Please try again later."
        )
    elif status >= 500:
        code = code or "server_error"
        type_ = "server_error"
        message = (
            "The engine is currently overloaded, please try again later."
            if status == 503
            else "The server had an error while processing your request. Sorry about that!"
        )
    elif status == 401:
        code = code or "invalid_api_key"
        type_ = "invalid_request_error"
        message = "Incorrect API key provided."
    else:
        type_ = "invalid_request_error"
        message = f"Injected fault: HTTP {status}."
    return error_response(status, message, type_=type_, code=code, headers=headers)


class Faults:
    """The queue of fault rules; the first whose path prefix matches answers the request."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []

    def inject(
        self,
        status: int,
        count: int = 1,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        path_prefix: str = "/v1/",
    ) -> None:
        """Answer the next ``count`` API requests under ``path_prefix`` with ``status`` (FIFO).

        Raises KnobOutOfRange for a value outside its bounds (one rule costs the same whatever ``count``).
        """
        if not 400 <= status <= 599:
            raise KnobOutOfRange(f"status must be an HTTP error status (400 to 599), got {status!r}")
        if not 1 <= count <= MAX_FAULT_COUNT:
            raise KnobOutOfRange(f"count must be between 1 and {MAX_FAULT_COUNT}, got {count!r}")
        if retry_after is not None and not 0 <= retry_after <= MAX_RETRY_AFTER:
            raise KnobOutOfRange(
                f"retry_after must be between 0 and {MAX_RETRY_AFTER:g}, got {retry_after!r}"
            )
        if code is not None and not 0 < len(code) <= MAX_TEXT:
            raise KnobOutOfRange(f"code must be 1 to {MAX_TEXT} characters")
        if not path_prefix.startswith("/") or len(path_prefix) > MAX_TEXT:
            raise KnobOutOfRange(f"path_prefix must start with / and be at most {MAX_TEXT} characters")
        if len(self._rules) >= MAX_FAULT_RULES:
            raise KnobOutOfRange(f"at most {MAX_FAULT_RULES} fault rules may be queued at once")
        self._rules.append(Fault(status, retry_after, code, path_prefix, count))

    @property
    def pending(self) -> int:
        """Requests the queued fault rules will still answer."""
        return sum(fault.remaining for fault in self._rules)

    def take(self, path: str) -> Fault | None:
        for index, fault in enumerate(self._rules):
            if path.startswith(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._rules[index]
                return fault
        return None
