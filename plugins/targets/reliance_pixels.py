"""Conditions of planted reliance estimated from pixels, for images without ground truth.

:func:`pixel_facts` gives, per row of a normalized batch, a :class:`PixelFacts` with the same
interface as a scene's exact :class:`~maia_plugins.detectors.scene_truth.SceneFacts`, so one
predicate (:func:`~.reliance_conditions.holds`) serves both. Every estimate is a few tensor
operations on the model's view; see :mod:`.reliance_conditions` for what each reads and the
README for how often each agrees with the truth on renders.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from maia_core.torch_runtime.target import Preprocess
from maia_plugins.detectors.scene_truth import (
    COLOR_NAMES,
    GRID,
    Instance,
    dominant,
    grid_colors,
    to_grid,
)

# Thresholds, set on scenes renders with and without each effect (bench_reliance.py --fallback).
GREY_CHROMA = 0.08  # a pixel whose channels differ by more than this is coloured
GREY_SHARE = 0.002  # a greyscale image has fewer coloured pixels than this
NOISE_RATIO = 0.7  # fine over coarse detail above this (noise does not survive pooling)...
NOISE_DETAIL = 0.05  # ...with at least this much fine detail (mean |Laplacian| of brightness)
BLUR_EDGE = 0.15  # the steepest brightness steps (99.9th percentile) of a blurred image: below
PATCH_FLAT = 0.02  # a corner patch's colour varies less than this
PATCH_APART = 0.2  # ...and differs from what is beyond it by more than this
MARK_MATCH = 0.3  # the image's detail correlates at least this with the watermark's pattern
TEXTURED = 0.035  # a background whose brightness varies more than this within cells: a texture
# Plain backgrounds the scenes world draws for places it has no picture of.
PLAIN_PLACES = {
    "sky": (135, 195, 240),
    "water": (35, 95, 165),
    "sand": (215, 190, 140),
    "snow": (240, 244, 250),
    "sunset": (245, 140, 70),
}
PLACE_DISTANCE = 40.0  # RGB distance within which a plain background is taken for that place


class _Effects:
    """One image's whole-image effects, each estimated the first time it is asked about
    (``"blur" in facts.effects``): a class reads only what its condition needs."""

    def __init__(self, x: torch.Tensor, preprocess: Preprocess):
        self.x = x  # [1, 3, H, W], normalized
        self.preprocess = preprocess
        self._known: dict[str, bool] = {}

    @functools.cached_property
    def rgb(self) -> torch.Tensor:
        return _rgb(self.x, self.preprocess)

    @functools.cached_property
    def lum(self) -> torch.Tensor:
        r, g, b = self.rgb[:, 0], self.rgb[:, 1], self.rgb[:, 2]
        return 0.299 * r + 0.587 * g + 0.114 * b

    def __contains__(self, kind: object) -> bool:
        if kind not in self._known:
            estimate = _ESTIMATES.get(str(kind))
            self._known[str(kind)] = bool(estimate(self)) if estimate is not None else False
        return self._known[str(kind)]


def _grey(e: _Effects) -> bool:
    chroma = e.rgb.amax(1) - e.rgb.amin(1)
    return float((chroma > GREY_CHROMA).float().mean()) < GREY_SHARE


def _noisy(e: _Effects) -> bool:
    fine, coarse = (
        float(_laplacian(e.lum)),
        float(_laplacian(F.avg_pool2d(e.lum[:, None], 2)[:, 0])),
    )
    return fine >= NOISE_DETAIL and fine > NOISE_RATIO * coarse


def _blurred(e: _Effects) -> bool:
    if "noise" in e:
        return False
    steps = (e.lum[:, :, 1:] - e.lum[:, :, :-1]).abs().flatten()
    # the 99.9th percentile: the smallest of the top thousandth
    return float(steps.topk(max(1, steps.numel() // 1000)).values[-1]) < BLUR_EDGE


def _patched(e: _Effects) -> bool:
    rgb = e.rgb[0]
    H, W = rgb.shape[-2:]
    # a corner block inside the smallest patch, and ones beyond the largest along each side
    k = max(4, round(0.05 * min(H, W)))
    for sy, sx in ((0, 0), (0, W - k), (H - k, 0), (H - k, W - k)):
        block = rgb[:, sy : sy + k, sx : sx + k].flatten(1)
        ry0, rx0 = (4 * k if sy == 0 else H - 5 * k), (4 * k if sx == 0 else W - 5 * k)
        beyond = torch.cat(
            [
                rgb[:, ry0 : ry0 + k, sx : sx + k].flatten(1),
                rgb[:, sy : sy + k, rx0 : rx0 + k].flatten(1),
            ],
            1,
        )
        flat = float(block.std(1).amax()) < PATCH_FLAT
        if flat and float((block.mean(1) - beyond.mean(1)).abs().amax()) > PATCH_APART:
            return True
    return False


def _watermarked(e: _Effects) -> bool:
    return float(_watermark_score(e.lum, e.preprocess)[0]) > MARK_MATCH


_ESTIMATES = {
    "grayscale": _grey,
    "noise": _noisy,
    "blur": _blurred,
    "patch": _patched,
    "watermark": _watermarked,
    # rotation is not estimated: an image without ground truth counts as upright
}


class PixelFacts:
    """What an image without ground truth shows, estimated (``exact`` is False), each part
    when first asked about."""

    exact = False

    def __init__(
        self,
        x: torch.Tensor,
        detected: dict[str, tuple[float, np.ndarray]],
        threshold: float,
        preprocess: Preprocess,
        grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    ):
        # the view's GRID x GRID cells: colour indices, mean RGB (0-255), texture
        self.cells, self._grid_rgb, self._texture = grid
        self.detected = detected  # concept -> (score, [GRID, GRID] mask)
        self.threshold = threshold
        self.effects = _Effects(x, preprocess)
        crop = preprocess.crop_pct
        self.margin, self.scale = (1 - crop) / 2, crop  # where the view lies in the image
        self._instances: dict[str, list[Instance]] = {}

    @functools.cached_property
    def _ground(self) -> tuple[str, str | None]:
        covered = np.zeros((GRID, GRID), dtype=bool)
        for score, mask in self.detected.values():
            if score >= self.threshold and score > 0:
                covered |= mask >= 0.5
        region = ~covered if (~covered).any() else np.ones_like(covered)
        color = dominant(self.cells, region)
        rgb = self._grid_rgb[region].mean(0)
        textured = float(self._texture[region].mean()) > TEXTURED
        return _background(rgb, color, textured, "grayscale" in self.effects), color

    @property
    def background(self) -> str:
        return self._ground[0]

    @property
    def background_color(self) -> str | None:
        return self._ground[1]

    def of(self, concept: str) -> list[Instance]:
        if concept not in self._instances:
            score, mask = self.detected.get(concept, (0.0, None))
            found: list[Instance] = []
            if mask is not None and score >= self.threshold and score > 0:
                for part in _components(mask >= 0.5) or [mask > 0]:
                    if not part.any():
                        continue
                    ys, xs = np.nonzero(part)
                    m, s = self.margin, self.scale
                    box = (
                        m + xs.min() / GRID * s,
                        m + ys.min() / GRID * s,
                        m + (xs.max() + 1) / GRID * s,
                        m + (ys.max() + 1) / GRID * s,
                    )
                    color = dominant(self.cells, part)
                    found.append(
                        Instance(concept, "", concept, part.astype(np.float32), box, color, False)
                    )
            self._instances[concept] = found
        return self._instances[concept]


def _components(mask: np.ndarray, min_cells: int = 12) -> list[np.ndarray]:
    """The 4-connected parts of a bool grid with at least ``min_cells`` cells: runs of each
    row, joined (union-find) with the overlapping runs of the row above."""
    grid = np.asarray(mask, dtype=np.int8)
    edges = np.diff(np.pad(grid, ((0, 0), (1, 1))), axis=1)
    starts_r, starts_c = np.nonzero(edges == 1)
    ends_r, ends_c = np.nonzero(edges == -1)  # same order: row-major, paired run by run
    if starts_r.size == 0:
        return []
    runs = list(zip(starts_r.tolist(), starts_c.tolist(), ends_c.tolist()))
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_row: dict[int, list[int]] = {}
    for i, (r, _, _) in enumerate(runs):
        by_row.setdefault(r, []).append(i)
    for i, (r, a, b) in enumerate(runs):
        for j in by_row.get(r - 1, ()):
            if runs[j][1] < b and a < runs[j][2]:  # the columns overlap
                parent[find(i)] = find(j)
    parts: dict[int, np.ndarray] = {}
    for i, (r, a, b) in enumerate(runs):
        part = parts.setdefault(find(i), np.zeros(grid.shape, dtype=bool))
        part[r, a:b] = True
    return [part for part in parts.values() if part.sum() >= min_cells]


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


_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _rgb(x: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Normalized ``[B, 3, H, W]`` back to RGB in [0, 1]."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


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
    x = x.float().cpu()
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
    # what every image's background is read from, in one pass over the batch at the grid's
    # resolution (averaging commutes with normalizing): its cells' colours, mean RGB, and
    # texture, the spread of brightness within each cell
    cells = _rgb(to_grid(x), preprocess)
    lum = (x * std * _LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)  # brightness, less a constant
    texture = (to_grid(lum**2) - to_grid(lum) ** 2).clamp_min(0).sqrt()[:, 0].numpy()
    colors = grid_colors(cells)
    cells_rgb = (cells.permute(0, 2, 3, 1) * 255).numpy()
    scores_np = scores.float().cpu().numpy()
    masks_np = masks.float().cpu().numpy()
    return [
        PixelFacts(
            x[b : b + 1],
            {c: (float(scores_np[b, j]), masks_np[b, j]) for j, c in enumerate(concepts)},
            threshold,
            preprocess,
            (colors[b], cells_rgb[b], texture[b]),
        )
        for b in range(x.shape[0])
    ]


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


__all__ = ["COLOR_NAMES", "PixelFacts", "pixel_facts"]
