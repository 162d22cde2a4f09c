"""Units and unit specs.

A unit is one index in a layer's basis (a channel, a class, an SAE latent). Specs use MAIA's
syntax, ``layer3=229,288:layer4=122,210``, plus ranges (``layer4=0-9``) and a bare layer name
for all of its units (``layer4``). ``--unit-file`` reads MAIA's neuron_indices JSON.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from maia_core.errors import UserError

SPEC_FORM = "LAYER=UNITS[:LAYER=UNITS...], e.g. layer3=229,288:layer4=0-9 (a bare LAYER means all its units)"

# What a unit spec selects: layer name -> unit indices and index ranges (kept as ranges, so
# 0-999999999 costs nothing until checked against the layer's size), or None for all of them.
Selection = dict[str, "list[int | range] | None"]


@dataclass(frozen=True)
class Unit:
    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.layer}={self.index}"


@dataclass(frozen=True)
class LayerInfo:
    """A readable layer of a target: how many units it has and the spatial size of its maps."""

    name: str
    units: int
    # (h, w) of the activation map, or None for a vector output (pooled features, logits).
    spatial: tuple[int, int] | None = None
    # "conv" (B,C,h,w), "tokens" (transformer tokens reshaped to a grid), "vector" (B,C) or "output".
    kind: str = "conv"
    shape: tuple[int, ...] = ()


_INDEX = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_unit_spec(spec: str) -> Selection:
    """Parse ``layer3=229,288:layer4=0-9`` into ``{"layer3": [229, 288], "layer4": [0..9]}``."""
    selection: Selection = {}
    if not spec or not spec.strip():
        raise UserError(f"Empty unit spec. Expected {SPEC_FORM}.")
    for group in spec.split(":"):
        layer, sep, units = group.partition("=")
        layer = layer.strip()
        if not layer or (sep and not units.strip()):
            raise UserError(f"Malformed unit spec {spec!r}. Expected {SPEC_FORM}.")
        if not sep:
            selection[layer] = None
            continue
        indices: list[int | range] = list(selection.get(layer) or [])
        for item in units.split(","):
            m = _INDEX.match(item)
            if not m:
                raise UserError(
                    f"Malformed unit spec {spec!r}: {item.strip()!r} is not a unit index or range. Expected {SPEC_FORM}."
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise UserError(
                    f"Malformed unit spec {spec!r}: range {item.strip()!r} runs backwards."
                )
            indices.append(lo if lo == hi else range(lo, hi + 1))
        selection[layer] = indices
    return selection


def read_unit_file(path: str | Path) -> Selection:
    """Read MAIA's neuron_indices JSON: ``{"layer4": [122, 210], ...}``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"Unit file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read unit file {str(path)!r}: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f'Unit file {str(path)!r} is not valid JSON ({exc}); expected {{"layer": [units]}}.'
        ) from None
    # JSON true and false are ints to Python; they are not unit indices.
    if not isinstance(obj, dict) or not all(
        isinstance(k, str)
        and isinstance(v, list)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        for k, v in obj.items()
    ):
        raise UserError(
            f'Unit file {str(path)!r} must map layer names to lists of unit indices, like {{"layer4": [122, 210]}}.'
        )
    return {k: list(dict.fromkeys(v)) for k, v in obj.items()}


def unit_range(units: int) -> str:
    """``"2048 units (0-2047)"``, ``"1 unit (0)"``, or ``"no units"``: a layer's size in words."""
    if units <= 0:
        return "no units"
    if units == 1:
        return "1 unit (0)"
    return f"{units} units (0-{units - 1})"


def expand(selection: Selection, layers: dict[str, LayerInfo], target: str) -> list[Unit]:
    """Turn a selection into units, checking every layer and index against the target."""
    units: list[Unit] = []
    for name, indices in selection.items():
        info = layers.get(name)
        if info is None:
            raise UserError(
                f"Unknown layer {name!r} for target {target}. Valid layers: {', '.join(layers)}."
            )
        if indices is None:
            indices = [range(info.units)]
        for item in indices:
            last = item[-1] if isinstance(item, range) and len(item) else item
            if isinstance(item, range) and not len(item):
                continue
            if not 0 <= last < info.units:
                raise UserError(
                    f"Unit {last} is out of range for layer {name!r} of {target}, which has {unit_range(info.units)}."
                )
            units.extend(Unit(name, i) for i in (item if isinstance(item, range) else [item]))
    return list(dict.fromkeys(units))


def sample(units: list[Unit], n: int, seed: int = 0) -> list[Unit]:
    """``n`` units drawn without replacement, deterministic given ``seed``, in their listed order."""
    if n < 1:
        raise UserError(f"--random must be at least 1, not {n}.")
    if n > len(units):
        raise UserError(f"--random {n} asks for more units than the {len(units)} selected.")
    chosen = set(random.Random(seed).sample(range(len(units)), n))
    return [u for i, u in enumerate(units) if i in chosen]


def parse_chunk(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(
            f"Malformed --chunk {text!r}. Expected I/N with 0 <= I < N, e.g. 0/4 for the first of four chunks."
        )
    return int(m.group(1)), int(m.group(2))


def chunk(units: list[Unit], index: int, total: int) -> list[Unit]:
    """Chunk ``index`` of ``total`` contiguous, balanced chunks (MAIA's --chunk_id/--total_chunks)."""
    base, extra = divmod(len(units), total)
    start = index * base + min(index, extra)
    return units[start : start + base + (1 if index < extra else 0)]


PAIRS_FORM = '[["layer4=122", "layer4=210"], ["layer3=5", "layer4=7"]]'


def read_pairs_file(path: str | Path) -> list[tuple[Unit, ...]]:
    """``--pairs``: a JSON list of pairs of units, each unit ``LAYER=INDEX``, like
    ``[["layer4=122", "layer4=210"]]``; each pair is one subject of a two-unit task."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"Pairs file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read pairs file {str(path)!r}: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"Pairs file {str(path)!r} is not valid JSON ({exc}); expected {PAIRS_FORM}."
        ) from None
    if not isinstance(obj, list) or not obj:
        raise UserError(
            f"Pairs file {str(path)!r} must be a non-empty JSON list like {PAIRS_FORM}."
        )
    pairs = []
    for i, item in enumerate(obj):
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(u, str) for u in item)
        ):
            raise UserError(
                f"Pairs file {str(path)!r}: item {i} is not a pair of units; expected {PAIRS_FORM}."
            )
        pair = []
        for text in item:
            m = re.fullmatch(r"\s*([^=\s][^=]*?)\s*=\s*(\d+)\s*", text)
            if not m:
                raise UserError(
                    f"Pairs file {str(path)!r}: {text!r} is not a unit LAYER=INDEX; expected {PAIRS_FORM}."
                )
            pair.append(Unit(m.group(1), int(m.group(2))))
        if pair[0] == pair[1]:
            raise UserError(f"Pairs file {str(path)!r}: item {i} pairs {pair[0]} with itself.")
        pairs.append(tuple(pair))
    return pairs


def pairs_selection(pairs: list[tuple[Unit, ...]]) -> Selection:
    """The units of ``pairs`` as a selection, to check them against the target's layers."""
    selection: Selection = {}
    for pair in pairs:
        for unit in pair:
            selection.setdefault(unit.layer, []).append(unit.index)
    return selection


def group(units: list[Unit], size: int) -> list[tuple[Unit, ...]]:
    """Consecutive groups of ``size`` units (a two-unit task's pairs from ``--units``)."""
    if len(units) % size:
        raise UserError(
            f"The task studies {size} units at a time, and {len(units)} unit(s) were selected; "
            f"select a multiple of {size} (consecutive units are grouped), or give --pairs FILE."
        )
    return [tuple(units[i : i + size]) for i in range(0, len(units), size)]
