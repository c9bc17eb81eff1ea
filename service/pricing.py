"""The video price table (USD per second by model and size) and the cost estimate a job carries."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.models import ANY_SIZE, DEFAULT_MODEL_TABLE, read_json_file

_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")

# OpenAI's published Sora 2 prices, USD per second of video: the model table's (service/models.py).
DEFAULT_PRICES: dict[str, dict[str, float]] = DEFAULT_MODEL_TABLE.prices()


class PriceError(ValueError):
    """The prices file is not the expected shape; the message says where."""


@dataclass(frozen=True)
class PriceTable:
    """Immutable (model, size) -> USD per second; size `*` stands for any size of that model."""

    entries: tuple[tuple[str, str, float], ...]

    @classmethod
    def from_mapping(cls, table: Mapping[str, Mapping[str, float]]) -> PriceTable:
        return cls(
            tuple(
                sorted(
                    (model, size, float(price))
                    for model, sizes in table.items()
                    for size, price in sizes.items()
                )
            )
        )

    def per_second(self, model: str, size: str | None) -> float | None:
        exact = fallback = None
        for entry_model, entry_size, price in self.entries:
            if entry_model != model:
                continue
            if entry_size == size:
                exact = price
            elif entry_size == ANY_SIZE:
                fallback = price
        return exact if exact is not None else fallback

    def estimate(self, model: str, size: str | None, seconds: str | int | None) -> float | None:
        """price per second × seconds, to 4 decimals; None for an unknown model or size (never a guess)."""
        price = self.per_second(model, size)
        if price is None or seconds is None:
            return None
        try:
            length = int(seconds)
        except (TypeError, ValueError):
            return None
        return round(price * length, 4)


DEFAULT_PRICE_TABLE = PriceTable.from_mapping(DEFAULT_PRICES)


def parse_prices(data: Any) -> dict[str, dict[str, float]]:
    """Check the shape `{"model": {"size" | "*": usd_per_second}}`; raise PriceError naming the bad entry."""
    if not isinstance(data, dict) or not data:
        raise PriceError('must be a non-empty JSON object like {"sora-2": {"*": 0.10}}')
    table: dict[str, dict[str, float]] = {}
    for model, sizes in data.items():
        if not model or not isinstance(sizes, dict) or not sizes:
            raise PriceError(f"model {model!r} must map to a non-empty object of size -> USD per second")
        table[model] = {}
        for size, price in sizes.items():
            if size != ANY_SIZE and not _SIZE.match(size):
                raise PriceError(f"{model!r}: size {size!r} must look like 1280x720, or be '*'")
            if isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price < float("inf"):
                raise PriceError(f"{model!r} {size!r}: the price must be a number >= 0, got {price!r}")
            table[model][size] = float(price)
    return table


def load_price_file(path: Path, base: Mapping[str, Mapping[str, float]] = DEFAULT_PRICES) -> PriceTable:
    """`base` (the model table's prices) with each model named in the file replaced by the file's entry."""
    try:
        data = read_json_file(path)
    except OSError as exc:
        raise PriceError(f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise PriceError(f"is not valid JSON ({exc})") from None
    return PriceTable.from_mapping({**base, **parse_prices(data)})
