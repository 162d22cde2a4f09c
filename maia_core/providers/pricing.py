"""Estimated cost in USD of backbone calls, from a price table users can override.

Prices are US dollars per million tokens. A model id is priced by the longest table key that
is a prefix of it, so ``gpt-4o-2024-08-06`` gets ``gpt-4o``'s price and ``gpt-4o-mini`` its own.
A model with no entry has an unknown cost (``None``), never a made-up one.

Override or extend the table with ``--price-file prices.json``::

    {"claude-sonnet-5-5": {"input": 2.0, "output": 10.0, "cache_read": 0.2, "cache_write": 2.5},
     "google/gemma-3-27b-it": {"input": 0, "output": 0}}

TOML files (``.toml``) with one table per model work too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maia_core.errors import UserError

PER = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Cache prices default to the input price when not given."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """``input_tokens`` excludes the cached ones, which are priced separately."""
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        return (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_read_tokens * read
            + cache_write_tokens * write
        ) / PER


# Published list prices, checked in November 2026. Providers change them; users override
# them with --price-file rather than waiting for a release.
BUILTIN: dict[str, Price] = {
    # Anthropic (5-minute cache writes)
    "claude-sonnet-5-5": Price(2.0, 10.0, 0.20, 2.50),
    "claude-sonnet-5": Price(2.0, 10.0, 0.20, 2.50),
    "claude-sonnet-4-6": Price(3.0, 15.0, 0.30, 3.75),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.30, 3.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30, 3.75),
    "claude-opus-5-5": Price(4.0, 20.0, 0.40, 5.0),
    "claude-opus-5": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-5": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-6": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-1": Price(15.0, 75.0, 1.50, 18.75),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    # OpenAI (cached input is a discount on input; there is no cache-write charge)
    "gpt-4o": Price(2.50, 10.0, 1.25, 2.50),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075, 0.15),
    "gpt-4.1": Price(2.0, 8.0, 0.50, 2.0),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10, 0.40),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025, 0.10),
    "gpt-5": Price(1.25, 10.0, 0.125, 1.25),
    "gpt-5-mini": Price(0.25, 2.0, 0.025, 0.25),
    "o3": Price(2.0, 8.0, 0.50, 2.0),
    "o4-mini": Price(1.10, 4.40, 0.275, 1.10),
}


class PriceTable:
    """Model id -> :class:`Price`, looked up by longest matching prefix."""

    def __init__(self, prices: dict[str, Price] | None = None, source: str = "built-in"):
        self.prices = dict(BUILTIN if prices is None else prices)
        self.source = source

    def lookup(self, model: str | None) -> Price | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        best = max((k for k in self.prices if model.startswith(k)), key=len, default=None)
        return self.prices[best] if best else None

    def cost(
        self,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float | None:
        price = self.lookup(model)
        if price is None:
            return None
        return price.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)

    def merged(self, overrides: dict[str, Price], source: str) -> PriceTable:
        return PriceTable({**self.prices, **overrides}, source)

    @classmethod
    def load(cls, path: str | Path | None) -> PriceTable:
        """The built-in table, overridden by the entries of ``path`` (JSON or TOML) if given."""
        table = cls()
        if path is None:
            return table
        return table.merged(read_price_file(path), str(path))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(f"{where} must be a non-negative number of USD per million tokens.")
    return float(value)


def read_price_file(path: str | Path) -> dict[str, Price]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"Cannot read --price-file {str(path)!r}: {exc.strerror or exc}.") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib  # noqa: PLC0415 - Python 3.11+; JSON needs nothing

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise UserError("TOML price files need Python 3.11 or newer; use JSON instead.") from None
    except ValueError as exc:
        raise UserError(f"--price-file {str(path)!r} is not valid: {exc}.") from None
    if not isinstance(data, dict):
        raise UserError(
            f'--price-file {str(path)!r} must map model ids to prices, e.g. {{"gpt-4o": {{"input": 2.5, "output": 10}}}}.'
        )
    out: dict[str, Price] = {}
    for model, entry in data.items():
        where = f"--price-file {path.name}: {model}"
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise UserError(f'{where} needs "input" and "output" prices (USD per million tokens).')
        unknown = set(entry) - {"input", "output", "cache_read", "cache_write"}
        if unknown:
            raise UserError(
                f"{where} has unknown field {sorted(unknown)[0]!r}; use input, output, cache_read, cache_write."
            )
        out[model] = Price(
            _number(entry["input"], f"{where}.input"),
            _number(entry["output"], f"{where}.output"),
            None
            if "cache_read" not in entry
            else _number(entry["cache_read"], f"{where}.cache_read"),
            None
            if "cache_write" not in entry
            else _number(entry["cache_write"], f"{where}.cache_write"),
        )
    return out
