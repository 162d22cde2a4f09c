"""The conditions a planted reliance depends on, read exactly from a scene or estimated from pixels.

A reliance model (``reliance:<set>``) keeps its object's score when its condition holds and
discounts it when it does not. A condition is a category and a value:

| category | values | holds when |
|---|---|---|
| ``color`` | red, orange, yellow, green, blue, purple, pink, brown, black, white, gray | an instance of the object is that colour |
| ``background`` | grass, brick wall, gravel, space, landscape, sky, water, sand, snow, sunset, plain | the background is that |
| ``background_color`` | the colours | the background (what no object covers) is that colour |
| ``size`` | small, large | the largest instance's visible box spans at least half the image side (large), or not (small) |
| ``position`` | left, right, top, bottom, center | an instance's centre is in the left / right / top / bottom 40% of the image, or within 0.35-0.65 on both axes |
| ``count`` | one, several | exactly one instance, or two or more |
| ``cooccurrence`` | an object | that object is in the image too |
| ``relation`` | above / below / left of / right of + an object | an instance is that way of one of the other object's, by at least a tenth of the image |
| ``orientation`` | flipped, upright, rotated | an instance is mirrored; the image is not rotated; it is |
| ``grayscale`` | grayscale, color | the image is greyscale; it is not |
| ``quality`` | blurred, noisy, sharp | the image is blurred; noisy; neither |
| ``shortcut`` | corner patch, watermark | a solid patch is in a corner; a watermark is across the image |

**Exactly, from a scene** (:class:`~maia_plugins.detectors.scene_truth.SceneFacts`): every
image the scenes dataset, ``text2image`` or ``edit_images`` made. Colours are the scene's named
colours, else the pixels' by the offline detector's rules (a red strawberry stamp is red).

**Estimated, from pixels** (:class:`PixelFacts`), for any other image: instances from the
detector's masks (their boxes, colours and connected parts), the background from the colour and
texture of what the masks leave, greyscale from the share of coloured pixels, blur and noise
from the image's fine-scale contrast, a patch from a uniform corner unlike its surroundings, a
watermark from bright strokes with dark outlines in the lower band. Mirroring and rotation are
not estimated: an image without ground truth counts as upright and unmirrored. How often each
estimate agrees with the truth on renders is in the README (``benchmarks/bench_reliance.py
--fallback``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maia_core.errors import UserError
from maia_plugins.detectors.vocabulary import COLORS

BACKGROUNDS = (
    "grass",
    "brick wall",
    "gravel",
    "space",
    "landscape",
    "sky",
    "water",
    "sand",
    "snow",
    "sunset",
    "plain",
)
RELATIONS = ("above", "below", "left of", "right of")
CATEGORIES: dict[str, tuple[str, ...] | None] = {
    "color": COLORS,
    "background": BACKGROUNDS,
    "background_color": COLORS,
    "size": ("small", "large"),
    "position": ("left", "right", "top", "bottom", "center"),
    "count": ("one", "several"),
    "cooccurrence": None,  # an object
    "relation": None,  # a relation and an object
    "orientation": ("flipped", "upright", "rotated"),
    "grayscale": ("grayscale", "color"),
    "quality": ("blurred", "noisy", "sharp"),
    "shortcut": ("corner patch", "watermark"),
}
_ALIASES = {
    "colour": "color",
    "background_colour": "background_color",
    "greyscale": "grayscale",
    "saturation": "grayscale",
    "co-occurrence": "cooccurrence",
    "cooccurring": "cooccurrence",
    "co_occurrence": "cooccurrence",
}
_VALUE_ALIASES = {
    "grey": "gray",
    "greyscale": "grayscale",
    "colour": "color",
    "brick": "brick wall",
    "big": "large",
    "many": "several",
    "blur": "blurred",
    "blurry": "blurred",
    "noise": "noisy",
    "patch": "corner patch",
    "mirrored": "flipped",
    "centre": "center",
}
LARGE = 0.5  # a large instance's visible box spans at least this much of the image side
SIDE = 0.4  # left: centre x below this; right: above 1 - this (top, bottom alike)
CENTER = (0.35, 0.65)
APART = 0.1  # a relation holds when the centres are this far apart along its axis
CONDITION_FORMAT = (
    '"background=grass", "color=red", "relation=above ball", "cooccurrence=ball" '
    f"(categories: {', '.join(CATEGORIES)})"
)


@dataclass(frozen=True)
class Condition:
    """One planted condition: ``category`` and ``value`` (for ``relation``, ``value`` is the
    relation and ``other`` the object; for ``cooccurrence``, both are the object)."""

    category: str
    value: str
    other: str = ""

    def to_json(self) -> dict[str, str]:
        d = {"category": self.category, "value": self.value}
        if self.other and self.other != self.value:
            d["object"] = self.other
        return d

    def text(self) -> str:
        if self.category == "relation":
            return f"{self.value} {self.other}"
        return self.value

    def objects(self) -> list[str]:
        """Other objects the condition needs detected."""
        return [self.other] if self.other else []


def parse_condition(spec: Any, where: str, check_object: Any = None) -> Condition:
    """``"background=grass"`` (or ``{"category": ..., "value": ...}``) as a :class:`Condition`;
    a one-line :class:`UserError` naming what is wrong otherwise. ``check_object(name)``
    returns an object's normal form or raises for one the detector does not know."""
    if isinstance(spec, dict):
        category, value = spec.get("category"), spec.get("value")
        if spec.get("object") and category == "relation":
            value = f"{value} {spec['object']}"
    elif isinstance(spec, str) and "=" in spec:
        category, value = spec.split("=", 1)
    else:
        raise UserError(f"{where}: a condition is CATEGORY=VALUE, like {CONDITION_FORMAT}.")
    if not isinstance(category, str) or not isinstance(value, str):
        raise UserError(f"{where}: a condition is CATEGORY=VALUE, like {CONDITION_FORMAT}.")
    category = " ".join(category.lower().split()).replace(" ", "_")
    category = _ALIASES.get(category, category)
    value = " ".join(value.lower().split())
    if category not in CATEGORIES:
        raise UserError(
            f"{where}: unknown condition category {category!r}; known: {', '.join(CATEGORIES)}."
        )
    if category == "cooccurrence":
        name = _object(value, where, check_object)
        return Condition(category, name, name)
    if category == "relation":
        for rel in sorted(RELATIONS, key=len, reverse=True):
            if value.startswith(rel + " "):
                return Condition(category, rel, _object(value[len(rel) + 1 :], where, check_object))
        raise UserError(
            f"{where}: a relation is one of {', '.join(RELATIONS)} and an object, like "
            f'"relation=above ball", not {value!r}.'
        )
    value = _VALUE_ALIASES.get(value, value)
    allowed = CATEGORIES[category]
    if value not in allowed:
        raise UserError(
            f"{where}: unknown {category} value {value!r}; known: {', '.join(allowed)}."
        )
    return Condition(category, value)


def _object(name: str, where: str, check_object: Any) -> str:
    if not name.strip():
        raise UserError(f"{where}: the condition names no object.")
    return check_object(name) if check_object is not None else name.strip()


# -- deciding -----------------------------------------------------------------------------------


def _center(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def holds(condition: Condition, obj: str, facts: Any) -> bool:
    """Whether ``condition`` holds for the object ``obj`` in an image's ``facts`` (a
    :class:`~maia_plugins.detectors.scene_truth.SceneFacts`, or :class:`PixelFacts`)."""
    c, v = condition.category, condition.value
    effects = facts.effects
    if c == "grayscale":
        return ("grayscale" in effects) == (v == "grayscale")
    if c == "quality":
        if v == "sharp":
            return "blur" not in effects and "noise" not in effects
        return ("blur" if v == "blurred" else "noise") in effects
    if c == "shortcut":
        return ("patch" if v == "corner patch" else "watermark") in effects
    if c == "background":
        return facts.background == v
    if c == "background_color":
        return facts.background_color == v
    if c == "orientation" and v != "flipped":
        return ("rotate" in effects) == (v == "rotated")
    if c == "cooccurrence":
        return bool(facts.of(condition.other))
    instances = facts.of(obj)
    if not instances:
        return False
    if c == "color":
        return any(i.color == v for i in instances)
    if c == "orientation":  # flipped
        return any(i.flipped for i in instances)
    if c == "count":
        return (len(instances) == 1) == (v == "one")
    if c == "size":
        side = max(max(i.box[2] - i.box[0], i.box[3] - i.box[1]) for i in instances)
        return (side >= LARGE) == (v == "large")
    if c == "position":
        return any(_in_position(_center(i.box), v) for i in instances)
    if c == "relation":
        others = facts.of(condition.other)
        return any(_related(_center(i.box), _center(o.box), v) for i in instances for o in others)
    raise ValueError(f"unknown category {c!r}")


def _in_position(center: tuple[float, float], where: str) -> bool:
    x, y = center
    if where == "left":
        return x < SIDE
    if where == "right":
        return x > 1 - SIDE
    if where == "top":
        return y < SIDE
    if where == "bottom":
        return y > 1 - SIDE
    lo, hi = CENTER
    return lo <= x <= hi and lo <= y <= hi


def _related(a: tuple[float, float], b: tuple[float, float], relation: str) -> bool:
    if relation == "above":
        return a[1] < b[1] - APART
    if relation == "below":
        return a[1] > b[1] + APART
    if relation == "left of":
        return a[0] < b[0] - APART
    return a[0] > b[0] + APART


def combined(conditions: list[Condition], mode: str, obj: str, facts: Any) -> bool:
    """A model's conditions: one, both (``and``) or either (``or``)."""
    results = [holds(c, obj, facts) for c in conditions]
    return any(results) if mode == "or" else all(results)
