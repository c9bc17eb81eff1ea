"""Logging on stderr, as JSON lines (default) or console text; ids ride along as `extra` fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = ("job_id", "resource_id", "event_id", "delivery_id", "subscription_id", "event_type", "request_id")
_SKIP = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _SKIP and not key.startswith("_") and value is not None:
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    """One readable line that keeps every structured field the JSON format has, as key=value (ids first)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = record.__dict__
        keys = [k for k in _FIELDS if fields.get(k) is not None]
        keys += [
            k
            for k, value in fields.items()
            if k not in _SKIP and k not in _FIELDS and not k.startswith("_") and value is not None
        ]
        extras = " ".join(f"{k}={_console_value(fields[k])}" for k in keys)
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if record.exc_info:
            return f"{line} {extras}".rstrip() + "\n" + self.formatException(record.exc_info)
        return f"{line} {extras}".rstrip()


def _console_value(value: Any) -> str:
    """A value as it reads on one line: quoted when it holds a space, a quote, or nothing at all."""
    text = value if isinstance(value, str) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers go through the same handler and format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # httpx logs every request with its full URL at info: noise, and our own logs already say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """A log config that leaves uvicorn's loggers to the root handler, at the configured level."""
    name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"level": name, "propagate": True},
            "uvicorn.error": {"level": name, "propagate": True},
            "uvicorn.access": {"level": name, "propagate": True},
        },
    }
