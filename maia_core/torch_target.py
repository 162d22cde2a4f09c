"""PyTorch targets: any ``nn.Module`` plus its preprocessing, read through forward hooks.

This is the torch half of the target interface. It is imported when a target loads (inside
the sandbox worker, or by ``maia layers``), never during plugin discovery; that is why it
may import torch at module top while the rest of the core must not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maia_core.errors import UserError
from maia_core.images import dim_outside, to_pil_list
from maia_core.target import Target
from maia_core.units import LayerInfo, Unit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_INTERPOLATION = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input: resize, center crop, normalize.

    ``view`` is the geometric part (what the model sees, as a PIL image); masks are drawn
    on the view. ``to_tensor`` normalizes a batch of views.
    """

    size: tuple[int, int] = (224, 224)  # (height, width) of the model input
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.size, int):
            object.__setattr__(self, "size", (self.size, self.size))
        if self.interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_PIL_INTERPOLATION)}")

    def view(self, img: Image.Image) -> Image.Image:
        """Resize the shorter side to size/crop_pct, then center-crop to the input size."""
        h, w = self.size
        img = img.convert("RGB")
        scale_to = math.floor(max(h, w) / self.crop_pct)
        iw, ih = img.size
        s = scale_to / min(iw, ih)
        nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
        if (nw, nh) != (iw, ih):
            img = img.resize((nw, nh), _PIL_INTERPOLATION[self.interpolation])
        left, top = (nw - w) // 2, (nh - h) // 2
        return img.crop((left, top, left + w, top + h))

    def to_tensor(self, views: Sequence[Image.Image]) -> torch.Tensor:
        arr = np.stack([np.asarray(v, dtype=np.float32) for v in views]) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())

    def describe(self) -> str:
        h, w = self.size
        return f"{w}x{h} px, {self.interpolation} resize and center crop (crop_pct {self.crop_pct}), mean {self.mean}, std {self.std}"


def resolve_device(device: str | None) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; a named device must exist."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"Unknown --device {device!r}. Use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {device} asks for CUDA, but torch sees no GPU here. Use --device cpu."
        )
    return dev


def weights_cache_hint() -> str:
    """Where pretrained weights are looked for, for error messages."""
    try:
        from huggingface_hub import constants

        hf = constants.HF_HUB_CACHE
    except ImportError:
        hf = "~/.cache/huggingface/hub"
    return f"the Hugging Face cache {hf} and the torch hub cache {torch.hub.get_dir()}"


class _StopForward(Exception):
    """Raised from a hook once every requested layer is captured, to skip the rest of the model."""


def as_map(output: Any) -> torch.Tensor | None:
    """The tensor a layer's output holds: itself, or the first tensor of a tuple or ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = as_map(item)
            if found is not None:
                return found
    return None


class TorchTarget(Target):
    """A PyTorch model as a target: layers are module names, units are channels."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        preprocess: Preprocess,
        *,
        device: str | None = "auto",
        precision: str = "fp32",
        description: str | None = None,
        batch_size: int = 32,
        mask_quantile: float = 0.9,
    ):
        if precision not in PRECISIONS:
            raise UserError(
                f"Unknown --precision {precision!r}. Use one of: {', '.join(PRECISIONS)}."
            )
        if not 0.0 < mask_quantile < 1.0:
            raise UserError(f"mask_quantile must be between 0 and 1, not {mask_quantile}.")
        self.name = name
        self.preprocess = preprocess
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.mask_quantile = mask_quantile
        self._description = description
        self.model = model.eval().requires_grad_(False).to(self.device)
        self._modules = dict(self.model.named_modules())
        self._infos: dict[str, LayerInfo] | None = None
        self._listed: list[str] = []

    # -- layers ---------------------------------------------------------------------------
    def _probe(self) -> dict[str, LayerInfo]:
        """Run one blank image through the model and record every module's output shape."""
        if self._infos is not None:
            return self._infos
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []
        for name, module in self._modules.items():
            if not name:
                continue

            def hook(_m, _i, out, _n=name):
                t = as_map(out)
                if t is not None and _n not in shapes:
                    shapes[_n] = tuple(t.shape)

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.inference_mode(), self._autocast():
                self.model(torch.zeros(1, 3, *self.preprocess.size, device=self.device))
        finally:
            for h in handles:
                h.remove()
        infos: dict[str, LayerInfo] = {}
        order = {name: i for i, name in enumerate(self._modules)}  # definition order, parents first
        for name, shape in sorted(shapes.items(), key=lambda kv: order[kv[0]]):
            info = self._layer_info(name, shape)
            if info is not None:
                infos[name] = info
        self._infos = infos
        self._listed = [n for n in infos if self._is_main_layer(n)]
        return infos

    def _layer_info(self, name: str, shape: tuple[int, ...]) -> LayerInfo | None:
        if len(shape) == 4:
            return LayerInfo(name, shape[1], (shape[2], shape[3]), "conv", shape[1:])
        if len(shape) == 2:
            return LayerInfo(name, shape[1], None, "vector", shape[1:])
        return None

    def _is_main_layer(self, name: str) -> bool:
        parts = name.split(".")
        if len(parts) == 1:
            return True
        parent = self._modules.get(".".join(parts[:-1]))
        containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
        return len(parts) == 2 and isinstance(parent, containers)

    def layers(self, all: bool = False) -> list[LayerInfo]:
        infos = self._probe()
        return list(infos.values()) if all else [infos[n] for n in self._listed]

    def layer(self, name: str) -> LayerInfo | None:
        return self._probe().get(name)

    def describe(self) -> str:
        return (
            self._description
            or f"{self.name} ({self.preprocess.size[1]}x{self.preprocess.size[0]} input)"
        )

    # -- activations ----------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def _to_units(self, name: str, output: Any) -> torch.Tensor:
        """A layer's output as [B, C, h, w] maps or [B, C] vectors, in float32."""
        t = as_map(output)
        if t is None or t.ndim not in (2, 4):
            raise UserError(
                f"Layer {name!r} of {self.name} does not output a [B,C,h,w] or [B,C] tensor."
            )
        return t.detach().float()

    @torch.inference_mode()
    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run a normalized batch and return each requested layer's output.

        The forward pass stops as soon as every requested layer has produced its output, so
        reading an early layer costs only the early part of the model.
        """
        wanted = list(dict.fromkeys(layers))
        for name in wanted:
            if name not in self._modules or not name:
                raise UserError(f"Unknown layer {name!r} for target {self.name}.")
        captured: dict[str, torch.Tensor] = {}

        def make_hook(layer_name: str):
            def hook(_m, _i, out):
                if layer_name not in captured:
                    captured[layer_name] = self._to_units(layer_name, out)
                    if len(captured) == len(wanted):
                        raise _StopForward

            return hook

        handles = [self._modules[n].register_forward_hook(make_hook(n)) for n in wanted]
        try:
            with self._autocast():
                self.model(x.to(self.device, non_blocking=True))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in wanted if n not in captured]
        if missing:
            raise UserError(
                f"Layer(s) {', '.join(missing)} of {self.name} never ran in the forward pass."
            )
        return captured

    def batches(
        self, images: Sequence[Image.Image]
    ) -> Iterator[tuple[list[Image.Image], torch.Tensor]]:
        """Views and normalized tensors, ``batch_size`` images at a time."""
        for start in range(0, len(images), self.batch_size):
            views = [self.preprocess.view(img) for img in images[start : start + self.batch_size]]
            yield views, self.preprocess.to_tensor(views)

    def unit_maps(
        self, images: Sequence[Image.Image], unit: Unit
    ) -> tuple[list[Image.Image], torch.Tensor]:
        """The views of ``images`` and the unit's maps over them: [B, h, w], or [B] for vectors."""
        views: list[Image.Image] = []
        maps = []
        for batch_views, x in self.batches(images):
            out = self.forward_layers(x, [unit.layer])[unit.layer]
            maps.append(out[:, unit.index].cpu())
            views.extend(batch_views)
        return views, torch.cat(maps) if maps else torch.empty(0)

    def system(self, unit: Unit, *, threshold: float | None = None) -> NeuronSystem:
        info = self.require_layer(unit.layer)
        if not 0 <= unit.index < info.units:
            raise UserError(
                f"Unit {unit.index} is out of range for layer {unit.layer!r}, which has {info.units} units."
            )
        return NeuronSystem(self, unit, threshold)

    def close(self) -> None:
        self.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def upsample(unit_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of one [h, w] map to ``size`` (h, w)."""
    return F.interpolate(
        unit_map[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]


def mask_image(
    view: Image.Image, unit_map: torch.Tensor, threshold: float | None, quantile: float
) -> Image.Image:
    """MAIA's masked image: the map upsampled to the view, thresholded, the rest dimmed."""
    if unit_map.ndim == 0:  # a vector unit has no spatial map: nothing to mask
        return view.copy()
    up = upsample(unit_map, (view.height, view.width))
    thr = float(torch.quantile(up.flatten(), quantile)) if threshold is None else threshold
    return dim_outside(view, (up > thr).numpy())


class NeuronSystem:
    """The unit under study. Call it on images to measure its response."""

    def __init__(self, target: TorchTarget, unit: Unit, threshold: float | None = None):
        self._target = target
        self.unit = unit
        # MAIA's attribute names, kept so MAIA-era agent code runs unchanged.
        self.layer = unit.layer
        self.neuron_num = unit.index
        self.model_name = target.name
        self.threshold = threshold
        self.threshold_source = (
            "dataset threshold from the exemplar store"
            if threshold is not None
            else f"per-image {target.mask_quantile:.2f} quantile of the activation map (no exemplar store)"
        )

    def call_neuron(self, images: list[Image.Image]) -> tuple[list[float], list[Image.Image]]:
        """Measure how strongly the unit responds to each image.

        Args:
            images: a list of PIL images (a single image is also accepted).

        Returns:
            (activations, masked_images). activations[i] is the unit's maximum activation
            over all positions of image i, a float. masked_images[i] is image i as the model
            sees it (resized and center-cropped), with the regions where the unit is most
            active kept and everything else dimmed to 25%.

        Example:
            acts, masked = system.call_neuron([img_a, img_b])
            for act, img in zip(acts, masked):
                tools.display(img, f"activation: {act:.3f}")
        """
        pil = to_pil_list(images)
        views, maps = self._target.unit_maps(pil, self.unit)
        acts = maps if maps.ndim == 1 else maps.flatten(1).amax(dim=1)
        masked = [
            mask_image(v, m, self.threshold, self._target.mask_quantile)
            for v, m in zip(views, maps)
        ]
        return [float(a) for a in acts], masked

    def __repr__(self) -> str:
        return f"<system: unit {self.unit.index} of layer {self.unit.layer} in {self.model_name}>"
