"""Parsing the ``key=value`` options users give to targets, tools and backbones."""

from __future__ import annotations

from collections.abc import Iterable

from maia_core.errors import UserError

# Defaults `maia run` shows in its help: here, so that `maia --help` imports neither the
# sandbox (numpy, msgpack, PIL) nor the loop.
DEFAULT_MAX_ROUNDS = 25
DEFAULT_CELL_TIMEOUT = 120.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    """``["pretrained=false", "k=3"]`` -> ``{"pretrained": "false", "k": "3"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"Malformed {flag} {item!r}. Expected KEY=VALUE, e.g. {flag} pretrained=false."
            )
        out[key.strip()] = value.strip()
    return out


def parse_tool_options(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["text2image.steps=4"]`` -> ``{"text2image": {"steps": "4"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        cap, dot, option = key.strip().partition(".")
        if not sep or not dot or not cap or not option:
            raise UserError(
                f"Malformed --tool-option {item!r}. Expected CAPABILITY.KEY=VALUE, e.g. --tool-option text2image.steps=4."
            )
        out.setdefault(cap, {})[option.strip()] = value.strip()
    return out


def as_bool(value: str | bool, name: str) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UserError(f"Option {name}={value!r} must be true or false.")


def as_float(value: str | float, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"Option {name}={value!r} must be a number.") from None


def as_int(value: str | int, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"Option {name}={value!r} must be a whole number.") from None


def reject_unknown(options: dict[str, object], owner: str, known: Iterable[str]) -> None:
    """Unknown options are errors, not silently ignored."""
    extra = sorted(set(options) - set(known))
    if extra:
        raise UserError(
            f"{owner} has no option {extra[0]!r}. Its options: {', '.join(sorted(known)) or 'none'}."
        )


# Options every torch-based target takes, passed on to TorchTarget.
TARGET_TUNING = ("batch_size", "mask_quantile", "channels_last")


def target_tuning(options: dict[str, str]) -> dict[str, object]:
    """The TorchTarget keyword arguments among a target's options."""
    out: dict[str, object] = {}
    if "batch_size" in options:
        out["batch_size"] = as_int(options["batch_size"], "batch_size")
    if "mask_quantile" in options:
        out["mask_quantile"] = as_float(options["mask_quantile"], "mask_quantile")
    if "channels_last" in options:
        out["channels_last"] = as_bool(options["channels_last"], "channels_last")
    return out


def parse_basis_specs(specs: Iterable[str]) -> list[tuple[str, str]]:
    """``["blocks.6=sae.safetensors"]`` -> ``[("blocks.6", "sae.safetensors")]`` (see maia_core.torch_runtime.basis)."""
    out = []
    for spec in specs:
        layer, sep, path = spec.partition("=")
        if not sep or not layer.strip() or not path.strip():
            raise UserError(
                f"Malformed --basis {spec!r}. Expected LAYER=PATH, e.g. --basis blocks.6=sae.safetensors."
            )
        out.append((layer.strip(), path.strip()))
    return out
