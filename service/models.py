"""The model table: each video model's allowed seconds and sizes and its price, and the checks that read it.

Data and pure functions only. The default is OpenAI's own table; ``SORAHOOK_MODELS_FILE`` replaces it for an
OpenAI-compatible provider. Validation (POST /v1/jobs), pricing and the OpenAPI document all read one table.
"""

from __future__ import annotations

import errno
import json
import re
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANY_SIZE = "*"
_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")
_SECONDS = re.compile(r"^[1-9][0-9]{0,3}$")

# What the Videos API itself takes for any model (the SDK's VideoSeconds and VideoSize): the rule for a model
# that SORAHOOK_MODELS names but the table does not describe.
API_SECONDS: tuple[str, ...] = ("4", "8", "12")
API_SIZES: tuple[str, ...] = ("720x1280", "1280x720", "1024x1792", "1792x1024")


@dataclass(frozen=True)
class ModelSpec:
    """One model: what it allows (the first of each is the default) and USD per second by size (`*` = any)."""

    name: str
    seconds: tuple[str, ...]
    sizes: tuple[str, ...]
    prices: tuple[tuple[str, float], ...] = ()

    @property
    def default_seconds(self) -> str:
        return self.seconds[0]

    @property
    def default_size(self) -> str:
        return self.sizes[0]


# OpenAI's values, from the official `openai` SDK 3.60.0 (types/video_seconds.py: "4", "8", "12";
# types/video_size.py: the four sizes) and OpenAI's Sora 2 model and pricing pages: sora-2 renders 720p only
# (720x1280, 1280x720) at $0.10/s; sora-2-pro adds 1024x1792 and 1792x1024, $0.30/s at 720p and $0.50/s
# above. Neither the SDK nor those pages offer 16 or 20 seconds or 1080p on create (20 s is `extend` only),
# so they are not here; a provider that offers them lists them in SORAHOOK_MODELS_FILE.
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("sora-2", API_SECONDS, ("720x1280", "1280x720"), ((ANY_SIZE, 0.10),)),
    ModelSpec(
        "sora-2-pro",
        API_SECONDS,
        API_SIZES,
        (("720x1280", 0.30), ("1280x720", 0.30), ("1024x1792", 0.50), ("1792x1024", 0.50)),
    ),
)


class ModelsFileError(ValueError):
    """The models file is not the expected shape; the message says where."""


@dataclass(frozen=True)
class ModelTable:
    """The models sorahook accepts, first the default."""

    models: tuple[ModelSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def spec(self, name: str) -> ModelSpec:
        """The model's entry; a model the table does not describe gets the Videos API's own values, no price."""
        for model in self.models:
            if model.name == name:
                return model
        return ModelSpec(name, API_SECONDS, API_SIZES)

    def prices(self) -> dict[str, dict[str, float]]:
        """`{model: {size | "*": usd_per_second}}` for the priced models (the price table's shape)."""
        return {m.name: dict(m.prices) for m in self.models if m.prices}

    def seconds_values(self, names: Iterable[str]) -> tuple[str, ...]:
        """Every seconds value any of `names` allows, in first-seen order."""
        return tuple(dict.fromkeys(s for n in names for s in self.spec(n).seconds))

    def size_values(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for n in names for s in self.spec(n).sizes))


DEFAULT_MODEL_TABLE = ModelTable(DEFAULT_MODELS)


def _or_list(values: Iterable[str]) -> str:
    items = list(values)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def refusal(spec: ModelSpec, seconds: str, size: str) -> tuple[str, str] | None:
    """(param, message) when the model does not allow these seconds or this size; None when it does."""
    if seconds not in spec.seconds:
        return "seconds", f"{spec.name} allows seconds {_or_list(spec.seconds)}"
    if size not in spec.sizes:
        return "size", f"{spec.name} allows size {_or_list(spec.sizes)}"
    return None


def _strings(model: str, field: str, value: Any, pattern: re.Pattern[str], example: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ModelsFileError(f"{model!r}: {field} must be a non-empty list, like [{example}]")
    out: list[str] = []
    for item in value:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not pattern.match(text):
            raise ModelsFileError(f"{model!r}: {field} holds {item!r}; each must look like {example}")
        out.append(text)
    return tuple(dict.fromkeys(out))


def _price_entries(model: str, value: Any, sizes: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    table = {ANY_SIZE: value} if not isinstance(value, dict) else value
    entries: list[tuple[str, float]] = []
    for size, price in table.items():
        if size != ANY_SIZE and size not in sizes:
            raise ModelsFileError(f"{model!r}: usd_per_second names size {size!r}, which is not in its sizes")
        if isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price < float("inf"):
            raise ModelsFileError(f"{model!r}: the price for {size!r} must be a number >= 0, got {price!r}")
        entries.append((size, float(price)))
    return tuple(entries)


def parse_models(data: Any) -> ModelTable:
    """Check `{"model": {"seconds": [...], "sizes": [...], "usd_per_second": 0.1 | {"size": 0.1}}}`."""
    example = '{"sora-2": {"seconds": [4, 8, 12], "sizes": ["720x1280"], "usd_per_second": 0.1}}'
    if not isinstance(data, dict) or not data:
        raise ModelsFileError(f"must be a non-empty JSON object like {example}")
    models: list[ModelSpec] = []
    for name, entry in data.items():
        if not name or len(name) > 128 or not isinstance(entry, dict):
            raise ModelsFileError(f"model {name!r} must map to an object like {example}")
        unknown = set(entry) - {"seconds", "sizes", "usd_per_second"}
        if unknown:
            raise ModelsFileError(f"{name!r}: unknown field {sorted(unknown)[0]!r}")
        seconds = _strings(name, "seconds", entry.get("seconds"), _SECONDS, '4, 8, "12"')
        sizes = _strings(name, "sizes", entry.get("sizes"), _SIZE, '"1280x720"')
        models.append(
            ModelSpec(name, seconds, sizes, _price_entries(name, entry.get("usd_per_second"), sizes))
        )
    return ModelTable(tuple(models))


MAX_TABLE_FILE_BYTES = 1 << 20  # a model or price table is a few KiB; more is a wrong file


def read_json_file(path: Path) -> Any:
    """A settings file's JSON: a regular file of at most 1 MiB, UTF-8 with or without a BOM.

    Raises OSError when it cannot be read (a FIFO, a device or a directory is not read at all, so start-up
    neither blocks nor reads forever) and ValueError when it is not JSON Python can parse.
    """
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    with path.open("rb") as handle:
        raw = handle.read(MAX_TABLE_FILE_BYTES + 1)
    if len(raw) > MAX_TABLE_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_TABLE_FILE_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_models_file(path: Path) -> ModelTable:
    """The table a models file describes (it replaces the default table: a provider lists its own models)."""
    try:
        data = read_json_file(path)
    except OSError as exc:
        raise ModelsFileError(f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ModelsFileError(f"is not valid JSON ({exc})") from None
    return parse_models(data)


def model_label(model: str | None, models: Collection[str]) -> str:
    """A metric label from a closed set: one of the configured models, else "other"."""
    return model if model is not None and model in models else "other"
