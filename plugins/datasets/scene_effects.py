"""Whole-image effects of scenes: greyscale, blur, noise, rotation, a corner patch, a watermark.

A :class:`~maia_plugins.datasets.scenes.SceneSpec` may carry effects, applied after the
objects are composited, always in the order of :data:`ORDER` (whatever order they were asked
in), so a spec draws the same image however it was written. Each is exact and seeded: the
image can be drawn again from the spec, and the ground truth says which effects it has and
where objects ended up (a rotation turns the masks too; a patch covers what is under it).

These are the conditions a planted reliance (``reliance:<set>``) may depend on, so the scenes
``text2image`` and ``edit_images`` can make each one and its absence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ORDER = ("rotate", "grayscale", "patch", "watermark", "blur", "noise")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
WATERMARK_TEXT = "SAMPLE"
# Per kind: (amount, color, where). Amounts: blur radius and watermark height as fractions of
# the side, noise standard deviation in 0-255, rotation degrees (counter-clockwise), the
# patch's side as a fraction of the image's.
DEFAULTS: dict[str, tuple[float, tuple[int, int, int] | None, str]] = {
    "grayscale": (0.0, None, ""),
    "blur": (0.012, None, ""),
    "noise": (40.0, None, ""),
    "rotate": (180.0, None, ""),
    "patch": (0.2, (210, 35, 35), "top left"),
    "watermark": (0.11, (255, 255, 255), "bottom"),
}
_WATERMARK_OPACITY = 0.7


@dataclass(frozen=True)
class Effect:
    """One whole-image effect: ``kind`` is one of :data:`ORDER`."""

    kind: str
    amount: float = 0.0
    color: tuple[int, int, int] | None = None
    where: str = ""
    text: str = ""
    seed: int = 0

    @classmethod
    def make(cls, kind: str, **changes: Any) -> Effect:
        """An effect of ``kind`` with the defaults, changed by ``changes``."""
        if kind not in DEFAULTS:
            raise ValueError(f"unknown effect {kind!r}; known: {', '.join(ORDER)}")
        amount, color, where = DEFAULTS[kind]
        base = cls(kind, amount, color, where, WATERMARK_TEXT if kind == "watermark" else "")
        return replace(base, **changes)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "amount": self.amount}
        if self.color is not None:
            d["color"] = list(self.color)
        if self.where:
            d["where"] = self.where
        if self.text:
            d["text"] = self.text
        if self.kind == "noise":
            d["seed"] = self.seed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Effect:
        color = d.get("color")
        return cls(
            kind=str(d["kind"]),
            amount=float(d.get("amount", 0.0)),
            color=tuple(int(c) for c in color) if color is not None else None,
            where=str(d.get("where", "")),
            text=str(d.get("text", "")),
            seed=int(d.get("seed", 0)),
        )


def ordered(effects: Sequence[Effect]) -> tuple[Effect, ...]:
    """``effects`` in drawing order, one of each kind (a later one replaces an earlier one)."""
    by_kind = {e.kind: e for e in effects}
    return tuple(by_kind[k] for k in ORDER if k in by_kind)


def patch_box(effect: Effect, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, x1, y1) a corner patch covers."""
    side = max(1, round(effect.amount * min(width, height)))
    where = effect.where if effect.where in CORNERS else "top left"
    x0 = 0 if "left" in where else width - side
    y0 = 0 if "top" in where else height - side
    return x0, y0, x0 + side, y0 + side


def apply(image: Image.Image, effects: Sequence[Effect]) -> Image.Image:
    """``image`` with ``effects``, in :data:`ORDER`."""
    for effect in ordered(effects):
        kind = effect.kind
        if kind == "rotate":
            turns = round(effect.amount / 90.0) % 4
            if turns:
                image = image.rotate(90 * turns, expand=True)
        elif kind == "grayscale":
            image = image.convert("L").convert("RGB")
        elif kind == "patch":
            image = image.copy()
            image.paste(
                effect.color or DEFAULTS["patch"][1], patch_box(effect, image.width, image.height)
            )
        elif kind == "watermark":
            image = _watermark(image, effect)
        elif kind == "blur":
            image = image.filter(ImageFilter.GaussianBlur(effect.amount * min(image.size)))
        elif kind == "noise":
            rng = np.random.default_rng(effect.seed)
            arr = np.asarray(image, dtype=np.float32)
            # the same on every channel, so a greyscale image stays grey
            arr = arr + rng.normal(0.0, effect.amount, (*arr.shape[:2], 1)).astype(np.float32)
            image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return image


def apply_to_mask(mask: np.ndarray, effects: Sequence[Effect]) -> np.ndarray:
    """An object's visible mask (bool, the image's height x width) after ``effects``: turned
    with the image, and without what a corner patch covers."""
    for effect in ordered(effects):
        if effect.kind == "rotate":
            mask = np.rot90(mask, round(effect.amount / 90.0) % 4)
        elif effect.kind == "patch":
            x0, y0, x1, y1 = patch_box(effect, mask.shape[1], mask.shape[0])
            mask = mask.copy()
            mask[y0:y1, x0:x1] = False
    return np.ascontiguousarray(mask)


def _watermark(image: Image.Image, effect: Effect) -> Image.Image:
    """Semi-opaque text across the lower part (``where="bottom"``) or the middle."""
    height = max(6, round(effect.amount * min(image.size)))
    font = ImageFont.load_default(size=height)
    text = effect.text or WATERMARK_TEXT
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    cy = 0.5 if effect.where == "center" else 0.78
    x = (image.width - (x1 - x0)) / 2 - x0
    y = cy * image.height - (y1 + y0) / 2
    color = tuple(effect.color or (255, 255, 255))
    alpha = round(255 * _WATERMARK_OPACITY)
    # A dark outline keeps it readable on light backgrounds as on dark ones.
    draw.text(
        (x, y), text, font=font, fill=(*color, alpha), stroke_width=1, stroke_fill=(0, 0, 0, alpha)
    )
    base = image.convert("RGBA")
    return Image.alpha_composite(base, overlay).convert("RGB")


def transform_box(
    box: Sequence[int], effects: Sequence[Effect], width: int, height: int
) -> list[int]:
    """A pixel box (x0, y0, x1, y1) where a rotation among ``effects`` moves it."""
    x0, y0, x1, y1 = box
    w, h = width, height
    for effect in ordered(effects):
        if effect.kind != "rotate":
            continue
        for _ in range(round(effect.amount / 90.0) % 4):
            # 90 degrees counter-clockwise: (x, y) -> (y, w - x); the image becomes h x w.
            x0, y0, x1, y1 = y0, w - x1, y1, w - x0
            w, h = h, w
    return [int(x0), int(y0), int(x1), int(y1)]


__all__ = [
    "CORNERS",
    "DEFAULTS",
    "ORDER",
    "Effect",
    "apply",
    "apply_to_mask",
    "ordered",
    "patch_box",
    "transform_box",
]
