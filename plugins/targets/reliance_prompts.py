"""Scenes prompts that make a planted condition hold, and ones that make it fail.

For checking a reliance model on renders (the tests, ``bench_reliance.py --fallback``, and
evaluation's predictiveness from a claim): :func:`condition_prompts` gives, for an object and a
:class:`~.reliance_conditions.Condition`, a ``text2image`` prompt where the condition holds and
one where it does not, the object drawn in both. A mirrored object cannot be asked for (the
scenes ``text2image`` mirrors at random): draw it and ``edit_images`` "flip the <object>", and
read which is mirrored from the ground truth.
"""

from __future__ import annotations

from typing import Any

OTHER_COLOR = {
    "red": "blue",
    "orange": "blue",
    "yellow": "blue",
    "green": "red",
    "blue": "green",
    "purple": "yellow",
    "pink": "green",
    "brown": "blue",
    "black": "yellow",
    "white": "purple",
    "gray": "red",
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
OTHER_BACKGROUND = {"grass": "gravel", "gravel": "grass", "sand": "grass", "snow": "grass"}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "left"}
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
OPPOSITE_RELATION = {
    "above": "below",
    "below": "above",
    "left of": "right of",
    "right of": "left of",
}


def condition_prompts(obj: str, condition: Any) -> tuple[str, str] | None:
    """(a prompt where ``condition`` holds for ``obj``, one where it does not), or None for a
    mirrored object (see the module docstring)."""
    c, v = condition.category, condition.value
    a = f"a {obj}"
    if c == "color":
        return f"a {v} {obj}", f"a {OTHER_COLOR[v]} {obj}"
    if c == "background":
        other = OTHER_BACKGROUND.get(v, "grass" if v != "grass" else "gravel")
        return f"{a} {BACKGROUND_WORDS[v]}", f"{a} {BACKGROUND_WORDS[other]}"
    if c == "background_color":
        return f"{a} on a plain {v} background", f"{a} on a plain {OTHER_COLOR[v]} background"
    if c == "size":
        big, tiny = f"a huge {obj}", f"a tiny {obj}"
        return (big, tiny) if v == "large" else (tiny, big)
    if c == "position":
        return f"{a} {PLACE[v]}", f"{a} {PLACE[OPPOSITE[v]]}"
    if c == "count":
        many = f"three {obj}"
        return (many, a) if v == "several" else (a, many)
    if c == "cooccurrence":
        return f"{a} and a {condition.other}", a
    if c == "relation":
        there, not_there = RELATION_WORDS[v], RELATION_WORDS[OPPOSITE_RELATION[v]]
        return f"{a} {there} a {condition.other}", f"{a} {not_there} a {condition.other}"
    if c == "orientation":
        if v == "flipped":
            return None
        turned = f"an upside down {obj}"
        return (a, turned) if v == "upright" else (f"{a} rotated 90 degrees", a)
    if c == "grayscale":
        grey = f"{a} in black and white"
        return (grey, a) if v == "grayscale" else (a, grey)
    if c == "quality":
        blurry, noisy = f"a blurry {obj}", f"a noisy photo of a {obj}"
        return {"blurred": (blurry, a), "noisy": (noisy, a), "sharp": (a, blurry)}[v]
    if c == "shortcut":
        if v == "corner patch":
            return f"{a} with a red patch in the top left corner", a
        return f"{a} with a watermark", a
    raise ValueError(f"unknown category {c!r}")
