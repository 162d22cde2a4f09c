"""The words of a ``reliance`` answer: its categories and values, and scenes prompts from them.

The categories are those a reliance model can plant and the scenes world can render and test
exactly (see ``maia_plugins.targets.reliance_conditions``), plus ``material``, ``state`` and
``other`` for what an agent finds on real models with a diffusion text2image. A claim's
values are matched to the scenes' own words where they can be (``grey`` is ``gray``, ``big``
is ``large``, ``brick`` is ``brick wall``), so an answer can be scored by exact match.

:func:`scene_prompt` writes a scenes ``text2image`` prompt for the object with any values of
the categories at once (``a red zebra on grass at the top``), which reflection's template
predictions, the baseline's sweeps and evaluation's held-out renders all use.
"""

from __future__ import annotations

import re

from maia_plugins.targets.reliance_conditions import BACKGROUNDS, CATEGORIES, RELATIONS

COLOURS = CATEGORIES["color"] or ()
# What the agent is told each category means (the answer's vocabulary).
ANSWER_CATEGORIES: dict[str, str] = {
    "color": "the object's colour (red, blue, ...)",
    "material": "what the object is made of",
    "background": "the setting: grass, brick wall, gravel, space, landscape, sky, water, sand, snow, sunset, plain",
    "background_color": "the colour of a plain background",
    "size": "small or large in the image",
    "position": "left, right, top, bottom or center of the image",
    "count": "one or several instances",
    "cooccurrence": "another object in the image (its name; low: none)",
    "relation": "where the object is relative to another: above / below / left of / right of + the object",
    "orientation": "flipped (mirrored), upright or rotated (upside down, 90 degrees)",
    "state": "the object's state or pose",
    "grayscale": "grayscale or color",
    "quality": "blurred, noisy or sharp",
    "shortcut": "an artefact: corner patch or watermark (low: none)",
    "other": "anything else, in words",
}
_CATEGORY_ALIASES = {
    "colour": "color",
    "object_color": "color",
    "object_colour": "color",
    "setting": "background",
    "scene": "background",
    "context": "background",
    "background_colour": "background_color",
    "scale": "size",
    "location": "position",
    "number": "count",
    "co_occurrence": "cooccurrence",
    "cooccurring_object": "cooccurrence",
    "co_occurring_object": "cooccurrence",
    "object": "cooccurrence",
    "spatial_relation": "relation",
    "pose": "orientation",
    "rotation": "orientation",
    "flip": "orientation",
    "greyscale": "grayscale",
    "saturation": "grayscale",
    "blur": "quality",
    "noise": "quality",
    "image_quality": "quality",
    "artifact": "shortcut",
    "artefact": "shortcut",
    "watermark": "shortcut",
    "patch": "shortcut",
    "texture": "material",
}
_VALUE_ALIASES = {
    "grey": "gray",
    "greyscale": "grayscale",
    "black and white": "grayscale",
    "colour": "color",
    "colored": "color",
    "coloured": "color",
    "in color": "color",
    "brick": "brick wall",
    "bricks": "brick wall",
    "big": "large",
    "huge": "large",
    "tiny": "small",
    "many": "several",
    "multiple": "several",
    "two": "several",
    "three": "several",
    "single": "one",
    "a single": "one",
    "alone": "one",
    "blur": "blurred",
    "blurry": "blurred",
    "noise": "noisy",
    "clean": "sharp",
    "patch": "corner patch",
    "red patch": "corner patch",
    "mirrored": "flipped",
    "facing left": "flipped",
    "upside down": "rotated",
    "rotated 90 degrees": "rotated",
    "centre": "center",
    "middle": "center",
    "none": "none",
    "no": "none",
    "absent": "none",
    "nothing": "none",
}
# Values a sweep (the baseline) or a template (reflection) tries per category; the scenes
# world draws each of them.
SWEEP: dict[str, tuple[str, ...]] = {
    "color": COLOURS,
    "background": BACKGROUNDS,
    "background_color": COLOURS,
    "size": ("small", "large"),
    "position": ("left", "right", "top", "bottom", "center"),
    "count": ("one", "several"),
    "orientation": ("upright", "rotated"),
    "grayscale": ("color", "grayscale"),
    "quality": ("sharp", "blurred", "noisy"),
    "shortcut": ("none", "corner patch", "watermark"),
}
# The value a scene has when a prompt does not say (None: it varies).
DEFAULTS = {
    "background": "plain",
    "count": "one",
    "orientation": "upright",
    "grayscale": "color",
    "quality": "sharp",
    "shortcut": "none",
    "cooccurrence": "none",
}
BACKGROUND_WORDS = {
    "grass": "on grass",
    "brick wall": "in front of a brick wall",
    "gravel": "on gravel",
    "space": "in space",
    "landscape": "in a landscape",
    "sky": "in the sky",
    "water": "on water",
    "sand": "on sand",
    "snow": "on snow",
    "sunset": "at sunset",
    "plain": "on a plain gray background",
}
PLACE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
RELATION_WORDS = {
    "above": "above",
    "below": "below",
    "left of": "to the left of",
    "right of": "to the right of",
}
OPPOSITE = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "center": "left",
    "above": "below",
    "below": "above",
    "left of": "right of",
    "right of": "left of",
    "small": "large",
    "large": "small",
    "one": "several",
    "several": "one",
    "grayscale": "color",
    "color": "grayscale",
    "flipped": "upright",
    "upright": "rotated",
    "rotated": "upright",
    "blurred": "sharp",
    "noisy": "sharp",
    "sharp": "blurred",
    "corner patch": "none",
    "watermark": "none",
    "grass": "gravel",
    "gravel": "grass",
}
CONTRAST = {
    "red": "blue",
    "orange": "blue",
    "yellow": "blue",
    "green": "red",
    "blue": "yellow",
    "purple": "yellow",
    "pink": "green",
    "brown": "blue",
    "black": "yellow",
    "white": "purple",
    "gray": "red",
}


def category(text: str) -> str | None:
    """The answer category ``text`` names, or None."""
    key = "_".join(
        re.sub(r"[^a-z ]+", " ", text.lower().replace("-", "_").replace("_", " ")).split()
    )
    key = _CATEGORY_ALIASES.get(key, key)
    return key if key in ANSWER_CATEGORIES else None


def value(cat: str, text: str) -> str:
    """A claim's value in the scenes' words where it has one (``grey`` -> ``gray``; for
    ``relation``, ``left of ball``); else the text, lower-cased."""
    text = " ".join(re.sub(r"[\"'`.]", " ", text.lower()).split())
    text = re.sub(r"^(?:an?|the|on|in|at)\s+", "", text)
    text = _VALUE_ALIASES.get(text, text)
    if cat in ("color", "background_color"):
        found = [c for c in COLOURS if re.search(rf"\b{c}\b", text)]
        if len(found) == 1:
            return found[0]
        if "grey" in text.split():
            return "gray"
    if cat == "background":
        for name in BACKGROUNDS:
            if re.search(rf"\b{name}\b", text):
                return name
        if "brick" in text:
            return "brick wall"
    if cat == "relation":
        for rel in sorted(RELATIONS, key=len, reverse=True):
            m = re.match(rf"(?:(?:is|to the)\s+)?{rel}\s+(?:(?:an?|the)\s+)?(.+)$", text)
            if m:
                return f"{rel} {m.group(1)}"
    if cat == "cooccurrence":
        m = re.match(r"^(?:with\s+)?(?:an?\s+|the\s+)?(.+)$", text)
        text = m.group(1) if m else text
        if text.startswith(("no ", "without")):
            return "none"
    if cat in SWEEP:
        for known in SWEEP[cat]:
            if text == known or re.search(rf"\b{re.escape(known)}\b", text):
                return known
        aliased = next((v for k, v in _VALUE_ALIASES.items() if re.search(rf"\b{k}\b", text)), None)
        if aliased in SWEEP[cat]:
            return aliased
    return text


def scene_prompt(obj: str, settings: dict[str, str]) -> str:
    """A scenes text2image prompt showing ``obj`` with each category's value in ``settings``
    (``{"color": "red", "background": "grass"}`` gives "a red zebra on grass"). Values the
    scenes world cannot draw (materials, states, free words) are said as words."""
    words: list[str] = []
    tail: list[str] = []
    count = "one"
    for cat, val in settings.items():
        if not val or val == "none" and cat in ("cooccurrence", "shortcut"):
            continue
        if cat in ("color", "material", "state", "other"):
            words.append(val)
        elif cat == "size":
            words.append({"small": "tiny", "large": "huge"}.get(val, val))
        elif cat == "count":
            count = val
        elif cat == "background":
            tail.append(BACKGROUND_WORDS.get(val, f"on {val}"))
        elif cat == "background_color":
            tail.append(f"on a plain {val} background")
        elif cat == "position":
            tail.append(PLACE.get(val, val))
        elif cat == "cooccurrence":
            tail.append(f"and a {val}")
        elif cat == "relation":
            rel = next(
                (r for r in sorted(RELATIONS, key=len, reverse=True) if val.startswith(r)), None
            )
            if rel:
                tail.append(f"{RELATION_WORDS[rel]} a {val[len(rel) :].strip()}")
        elif cat == "orientation":
            if val == "rotated":
                words.insert(0, "upside down")
        elif cat == "grayscale":
            if val == "grayscale":
                tail.append("in black and white")
        elif cat == "quality":
            if val == "blurred":
                words.insert(0, "blurry")
            elif val == "noisy":
                tail.append("with noise")
        elif cat == "shortcut":
            tail.append(
                "with a red patch in the top left corner"
                if val == "corner patch"
                else "with a watermark"
            )
    noun = " ".join([*words, obj])
    head = (
        f"three {noun}" if count == "several" else f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
    )
    return " ".join([head, *tail])


def other_value(cat: str, val: str) -> str | None:
    """A value of ``cat`` unlike ``val`` (for a claim with no usable low value)."""
    if cat in ("color", "background_color"):
        return CONTRAST.get(val, "blue")
    if cat == "relation":
        rel = next((r for r in sorted(RELATIONS, key=len, reverse=True) if val.startswith(r)), None)
        return f"{OPPOSITE[rel]}{val[len(rel) :]}" if rel else None
    if cat == "cooccurrence":
        return "none"
    if cat == "background":
        return OPPOSITE.get(val, "grass")
    return OPPOSITE.get(val)


def alternatives(cat: str, high: str, low: str) -> list[str]:
    """Values predicted low by a claim ``cat``: ``high`` -> high: the claim's ``low`` value
    first, then the category's other values the scenes world draws."""
    out = [low] if low and low != high else []
    out += [v for v in SWEEP.get(cat, ()) if v not in (high, low)]
    fallback = other_value(cat, high)
    if not out and fallback:
        out.append(fallback)
    return out
