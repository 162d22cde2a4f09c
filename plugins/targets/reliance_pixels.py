"""Conditions of planted reliance estimated from pixels, for images without ground truth.

:func:`pixel_facts` gives, per row of a normalized batch, a :class:`PixelFacts` with the same
interface as a scene's exact :class:`~maia_plugins.detectors.scene_truth.SceneFacts`, so one
predicate (:func:`~.reliance_conditions.holds`) serves both. Every estimate is a few tensor
operations on the model's view; see :mod:`.reliance_conditions` for what each reads and the
README for how often each agrees with the truth on renders.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maia_core.torch_runtime.target import Preprocess
from maia_plugins.detectors.scene_truth import COLOR_NAMES, GRID, Instance, cell_colors, dominant

# Thresholds, set on scenes renders with and without each effect (bench_reliance.py --fallback).
GREY_CHROMA = 0.08  # a pixel whose channels differ by more than this is coloured
GREY_SHARE = 0.002  # a greyscale image has fewer coloured pixels than this
NOISE_RATIO = 0.7  # fine over coarse detail above this (noise does not survive pooling)...
NOISE_DETAIL = 0.05  # ...with at least this much fine detail (mean |Laplacian| of brightness)
BLUR_EDGE = 0.15  # the steepest brightness steps (99.9th percentile) of a blurred image: below
PATCH_FLAT = 0.02  # a corner patch's colour varies less than this
PATCH_APART = 0.2  # ...and differs from what is beyond it by more than this
MARK_MATCH = 0.3  # the image's detail correlates at least this with the watermark's pattern
TEXTURED = 0.05  # a background whose brightness varies more than this (3x3) is a texture
# Plain backgrounds the scenes world draws for places it has no picture of.
PLAIN_PLACES = {
    "sky": (135, 195, 240),
    "water": (35, 95, 165),
    "sand": (215, 190, 140),
    "snow": (240, 244, 250),
    "sunset": (245, 140, 70),
}
PLACE_DISTANCE = 40.0  # RGB distance within which a plain background is taken for that place


@dataclass
class PixelFacts:
    """What an image without ground truth shows, estimated (``exact`` is False)."""

    detected: dict[str, tuple[float, np.ndarray]]  # concept -> (score, [GRID, GRID] mask)
    threshold: float
    cells: np.ndarray
    effects: dict[str, dict[str, Any]]
    background: str
    background_color: str | None
    margin: tuple[float, float]  # where the view starts in the image, (x, y) fractions
    scale: tuple[float, float]  # the view's extent in the image
    exact: bool = False
    _instances: dict[str, list[Instance]] = field(default_factory=dict, repr=False)

    def of(self, concept: str) -> list[Instance]:
        if concept not in self._instances:
            score, mask = self.detected.get(concept, (0.0, None))
            found: list[Instance] = []
            if mask is not None and score >= self.threshold and score > 0:
                parts = _components(mask >= 0.5) or [mask > 0]
                for part in parts:
                    if not part.any():
                        continue
                    ys, xs = np.nonzero(part)
                    box = (
                        self.margin[0] + xs.min() / GRID * self.scale[0],
                        self.margin[1] + ys.min() / GRID * self.scale[1],
                        self.margin[0] + (xs.max() + 1) / GRID * self.scale[0],
                        self.margin[1] + (ys.max() + 1) / GRID * self.scale[1],
                    )
                    found.append(
                        Instance(
                            concept,
                            "",
                            concept,
                            part.astype(np.float32),
                            box,
                            dominant(self.cells, part),
                            False,
                        )
                    )
            self._instances[concept] = found
        return self._instances[concept]


def _components(mask: np.ndarray, min_cells: int = 12) -> list[np.ndarray]:
    """The 4-connected parts of a bool grid with at least ``min_cells`` cells."""
    seen = np.zeros_like(mask, dtype=bool)
    parts = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        part = np.zeros_like(mask, dtype=bool)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            part[y, x] = True
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if part.sum() >= min_cells:
            parts.append(part)
    return parts


def _laplacian(lum: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=lum.dtype, device=lum.device)
    return F.conv2d(lum[:, None], kernel.view(1, 1, 3, 3))[:, 0].abs().flatten(1).mean(1)


# Source sizes the watermark's template is drawn at: its letters' pixel size is rounded per
# size, so the view of each is matched and the best match counts.
TEMPLATE_SIZES = (128, 160, 192, 224, 256, 320, 384, 512)
_TEMPLATES: dict[tuple[int, int], list[tuple[torch.Tensor, tuple[slice, slice]]]] = {}


def _watermark_templates(preprocess: Preprocess) -> list[tuple[torch.Tensor, tuple[slice, slice]]]:
    """The scenes watermark as it falls in the view of square images of each of
    :data:`TEMPLATE_SIZES`: its letters +1 and their outline -1, and the box it covers."""
    key = tuple(preprocess.size)
    if key not in _TEMPLATES:
        from PIL import Image

        from maia_plugins.datasets.scene_effects import Effect, apply

        found = []
        for side in TEMPLATE_SIZES:
            grey = Image.new("RGB", (side, side), (128, 128, 128))
            marked = apply(grey, [Effect.make("watermark")])
            view = np.asarray(preprocess.view(marked).convert("L"), dtype=np.float32)
            pattern = torch.from_numpy((view > 153).astype(np.float32) - (view < 102))
            ys, xs = torch.nonzero(pattern != 0, as_tuple=True)
            box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
            found.append((pattern, box))
        _TEMPLATES[key] = found
    return _TEMPLATES[key]


def _watermark_score(lum: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Per row: the best correlation of the brightness with the watermark's pattern (bright
    letters, dark outline) in its box: near 1 where the scenes watermark is."""
    best = torch.full((lum.shape[0],), -1.0, device=lum.device)
    for pattern, (ys, xs) in _watermark_templates(preprocess):
        region = lum[:, ys, xs].flatten(1)
        p = pattern.to(lum.device)[ys, xs].flatten()
        region = region - region.mean(1, keepdim=True)
        p = p - p.mean()
        corr = (region @ p) / (region.norm(dim=1) * p.norm()).clamp_min(1e-6)
        best = torch.maximum(best, corr)
    return best


def image_stats(x: torch.Tensor, preprocess: Preprocess) -> dict[str, torch.Tensor]:
    """Per row: the statistics the estimates read (each ``[B]`` or ``[B, ...]``)."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    rgb = (x.float() * std + mean).clamp(0.0, 1.0)
    lum = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    chroma = rgb.amax(1) - rgb.amin(1)
    coarse = F.avg_pool2d(lum[:, None], 2)[:, 0]
    H, W = lum.shape[-2:]
    steps = (lum[:, :, 1:] - lum[:, :, :-1]).abs().flatten(1)
    # a corner block inside the smallest patch, and one beyond the largest along each side
    k = max(4, round(0.05 * min(H, W)))
    corners = []
    for sy, sx in ((0, 0), (0, W - k), (H - k, 0), (H - k, W - k)):
        block = rgb[:, :, sy : sy + k, sx : sx + k].flatten(2)
        ry0, rx0 = (4 * k if sy == 0 else H - 5 * k), (4 * k if sx == 0 else W - 5 * k)
        beyond = torch.cat(
            [
                rgb[:, :, ry0 : ry0 + k, sx : sx + k].flatten(2),
                rgb[:, :, sy : sy + k, rx0 : rx0 + k].flatten(2),
            ],
            2,
        )
        flat = block.std(2).amax(1) < PATCH_FLAT
        apart = (block.mean(2) - beyond.mean(2)).abs().amax(1) > PATCH_APART
        corners.append(flat & apart)
    local = (
        F.avg_pool2d(coarse[:, None] ** 2, 3, 1, 1)[:, 0]
        - F.avg_pool2d(coarse[:, None], 3, 1, 1)[:, 0] ** 2
    )
    texture = F.adaptive_avg_pool2d(local.clamp_min(0).sqrt()[:, None], (GRID, GRID))[:, 0]
    return {
        "coloured": (chroma > GREY_CHROMA).float().flatten(1).mean(1),
        "fine": _laplacian(lum),
        "coarse": _laplacian(coarse),
        "edge": torch.quantile(steps, 0.999, dim=1),
        "mark": _watermark_score(lum, preprocess),
        "patch": torch.stack(corners, 1).any(1),
        "texture": texture,
        "rgb": F.adaptive_avg_pool2d(rgb, (GRID, GRID)),
    }


def pixel_facts(
    x: torch.Tensor,
    concepts: Sequence[str],
    scores: torch.Tensor,
    masks: torch.Tensor,
    threshold: float,
    preprocess: Preprocess,
) -> list[PixelFacts]:
    """Estimated facts of each row of ``x``, given a detector's ``scores [B, C]`` and masks
    ``[B, C, GRID, GRID]`` for ``concepts``."""
    stats = image_stats(x, preprocess)
    cells = cell_colors(x, preprocess)
    crop = preprocess.crop_pct
    margin = ((1 - crop) / 2, (1 - crop) / 2)
    scale = (crop, crop)
    scores_np = scores.float().cpu().numpy()
    masks_np = masks.float().cpu().numpy()
    out = []
    for b in range(x.shape[0]):
        effects: dict[str, dict[str, Any]] = {}
        if float(stats["coloured"][b]) < GREY_SHARE:
            effects["grayscale"] = {}
        fine, coarse = float(stats["fine"][b]), float(stats["coarse"][b])
        if fine >= NOISE_DETAIL and fine > NOISE_RATIO * coarse:
            effects["noise"] = {}
        elif float(stats["edge"][b]) < BLUR_EDGE:
            effects["blur"] = {}
        if bool(stats["patch"][b]):
            effects["patch"] = {}
        if float(stats["mark"][b]) > MARK_MATCH:
            effects["watermark"] = {}
        detected = {c: (float(scores_np[b, j]), masks_np[b, j]) for j, c in enumerate(concepts)}
        covered = np.zeros((GRID, GRID), dtype=bool)
        for score, mask in detected.values():
            if score >= threshold and score > 0:
                covered |= mask >= 0.5
        region = ~covered if (~covered).any() else np.ones_like(covered)
        bg_color = dominant(cells[b], region)
        rgb = stats["rgb"][b].permute(1, 2, 0).cpu().numpy()[region].mean(0) * 255
        textured = float(stats["texture"][b].cpu().numpy()[region].mean()) > TEXTURED
        out.append(
            PixelFacts(
                detected=detected,
                threshold=threshold,
                cells=cells[b],
                effects=effects,
                background=_background(rgb, bg_color, textured, "grayscale" in effects),
                background_color=bg_color,
                margin=margin,
                scale=scale,
            )
        )
    return out


def _background(rgb: np.ndarray, color: str | None, textured: bool, grey: bool) -> str:
    if textured:
        if color == "green" and not grey:
            return "grass"
        if color in ("red", "orange", "pink", "brown") and not grey:
            return "brick wall"
        if color == "black":
            return "space"
        if color in ("gray", "white") or grey:
            return "gravel"
        return "landscape"
    best, distance = "plain", PLACE_DISTANCE
    for place, ref in PLAIN_PLACES.items():
        d = float(np.linalg.norm(rgb - np.asarray(ref, dtype=np.float32)))
        if d < distance:
            best, distance = place, d
    return best


__all__ = ["COLOR_NAMES", "PixelFacts", "image_stats", "pixel_facts"]
