"""PyTorch targets: any ``nn.Module`` plus its preprocessing, read through forward hooks.

This is the torch half of the target interface. It is imported when a target loads (inside
the sandbox worker, or by ``maia layers``), never during plugin discovery; that is why it
may import torch at module top while the rest of the core must not.

What a layer's output becomes (its *layout*, found by probing the model once):

- conv maps ``[B, C, h, w]`` (or channels-last ``[B, h, w, C]``): units are channels;
- transformer tokens ``[B, N, C]`` (or sequence-first ``[N, B, C]``): the class and register
  tokens are dropped and the patch tokens reshaped, row-major, to ``[B, C, h, w]``;
- vectors ``[B, C]``: units are features, with no spatial map;
- ``output``: the model's own output; for a classifier (class names known) its units are
  classes and their activation is the softmax probability.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maia_core.errors import UserError
from maia_core.images import as_rgb, dim_outside, to_pil_list
from maia_core.target import Target
from maia_core.torch_runtime.basis import Basis
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
OUTPUT = "output"


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(item) for item in items]``, on as many threads as torch computes with on the CPU
    (``torch.get_num_threads()``, at most 8): for PIL's work on a batch's images (resizing,
    masking), which releases the GIL. One thread, or a single item: in this thread."""
    global _POOL
    workers = min(torch.get_num_threads(), 8)
    if len(items) < 2 or workers < 2:
        return [fn(item) for item in items]
    with _POOL_LOCK:
        # A pool per process and size: a forked child does not inherit the parent's threads.
        if _POOL is None or _POOL[:2] != (os.getpid(), workers):
            _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, "maia-pil"))
        pool = _POOL[2]
    return list(pool.map(fn, items))


@functools.lru_cache(maxsize=1024)
def _crop_box(
    size: tuple[int, int],
    resized: tuple[int, int],
    offset: tuple[int, int],
    kept: tuple[int, int],
    resample: int,
) -> tuple[float, float, float, float] | None:
    """The box for ``Image.resize(kept, resample, box)`` that gives the pixels of resizing an
    image of ``size`` to ``resized`` and cropping ``kept`` pixels at ``offset``, bit for bit;
    None where that is not sure.

    Each axis's weights are the same when :func:`_exact_box` finds the arithmetic exact.
    PIL may also run its two passes in another order for another size (its choice, by their
    cost), which changes pixels: a noise image of ``size`` resized both ways, once per size,
    tells. Another order changes thousands of its pixels.
    """
    if resample == Image.NEAREST:  # not the convolution path
        return None
    xs = _exact_box(size[0], resized[0], offset[0], kept[0])
    ys = _exact_box(size[1], resized[1], offset[1], kept[1])
    if xs is None or ys is None:
        return None
    box = (xs[0], ys[0], xs[1], ys[1])
    noise = Image.frombytes("RGB", size, np.random.default_rng(0).bytes(size[0] * size[1] * 3))
    cropped = noise.resize(resized, resample).crop(
        (*offset, offset[0] + kept[0], offset[1] + kept[1])
    )
    return box if noise.resize(kept, resample, box=box).tobytes() == cropped.tobytes() else None


@functools.lru_cache(maxsize=1024)
def _exact_box(size: int, resized: int, offset: int, kept: int) -> tuple[float, float] | None:
    """The source interval whose resampling to ``kept`` pixels gives pixels ``offset`` to
    ``offset + kept`` of resampling all ``size`` pixels to ``resized``, bit for bit; None when
    no interval is sure to.

    PIL's convolution filters place output pixel ``j`` of a box ``(b0, b1)`` (single
    precision) at ``b0 + (j + 0.5) * scale`` with ``scale = (b1 - b0) / kept``, and weigh the
    source pixels by their distance to it. The crop's box gives every pixel the same place
    and scale, hence the same weights, when all of it is exact: the scale, the box in single
    precision and each place in double, whatever the order or fusing of the arithmetic.
    """
    scale = Fraction(size, resized)
    b0, b1 = offset * scale, (offset + kept) * scale

    def exact(q: Fraction, single: bool = False) -> bool:
        f = float(q)
        return Fraction(float(np.float32(f)) if single else f) == q

    if not all(exact(q, single=True) for q in (scale, b0, b1, b1 - b0)):
        return None
    half = Fraction(1, 2)
    if not all(exact(b0 + (j + half) * scale) for j in range(kept)):
        return None
    return float(b0), float(b1)


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
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_PIL_INTERPOLATION)}")

    @classmethod
    def from_transforms(cls, transform: Any) -> Preprocess:
        """Read size, crop, interpolation, mean and std off a torchvision transform pipeline.

        Works for ``transforms.Compose([Resize, CenterCrop, ToTensor, Normalize])`` (open_clip's,
        most hand-written ones) and torchvision's ``weights.transforms()`` presets.
        """
        steps = list(getattr(transform, "transforms", [transform]))
        resize = crop = None
        interpolation, mean, std = "bilinear", IMAGENET_MEAN, IMAGENET_STD
        for t in steps:
            kind = type(t).__name__
            if hasattr(t, "crop_size") and hasattr(
                t, "resize_size"
            ):  # torchvision's ImageClassification
                crop, resize = _first(t.crop_size), _first(t.resize_size)
                interpolation = _interp_name(t.interpolation)
                mean, std = tuple(t.mean), tuple(t.std)
            elif kind == "Resize":
                resize = _first(t.size)
                interpolation = _interp_name(t.interpolation)
            elif kind == "CenterCrop":
                crop = (
                    tuple(t.size)
                    if isinstance(t.size, (tuple, list)) and len(t.size) == 2
                    else _first(t.size)
                )
            elif kind == "Normalize":
                mean, std = tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std)
        if crop is None and resize is None:
            raise UserError(
                "Cannot read the input size off the preprocessing: it needs a Resize or CenterCrop step."
            )
        size = crop if crop is not None else resize
        side = max(size) if isinstance(size, tuple) else size
        crop_pct = side / resize if resize else 1.0
        return cls(
            size=size, crop_pct=min(crop_pct, 1.0), interpolation=interpolation, mean=mean, std=std
        )

    def view(self, img: Image.Image) -> Image.Image:
        """Resize the shorter side to size/crop_pct, then center-crop to the input size."""
        h, w = self.size
        img = as_rgb(img)  # not a copy: the crop or resize below makes one
        scale_to = math.floor(max(h, w) / self.crop_pct + 1e-6)
        iw, ih = img.size
        s = scale_to / min(iw, ih)
        nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
        left, top = (nw - w) // 2, (nh - h) // 2
        if (nw, nh) == (iw, ih):
            return img.crop((left, top, left + w, top + h))
        resample = _PIL_INTERPOLATION[self.interpolation]
        box = _crop_box(img.size, (nw, nh), (left, top), (w, h), resample)
        if box is not None:  # only the pixels the crop keeps: the same pixels, less work
            return img.resize((w, h), resample, box=box)
        img = img.resize((nw, nh), resample)
        return img.crop((left, top, left + w, top + h))

    def views(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """:meth:`view` of each image, on torch's CPU threads (PIL resizes without the GIL)."""
        return parallel_map(self.view, images)

    def to_tensor(self, views: Sequence[Image.Image]) -> torch.Tensor:
        """Normalized float32 [B, 3, H, W] (channels-last in memory) from views."""
        batch = torch.from_numpy(np.stack([np.asarray(v, dtype=np.uint8) for v in views]))
        return self.normalize(batch.permute(0, 3, 1, 2))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] on any device -> normalized float32 on the same device.

        ``(x / 255 - mean) / std``, in place: one float buffer, not four. On a channels-last
        batch (views stacked as they decode), the mean and std are repeated along a pixel row,
        so each step runs over contiguous memory, not three values at a time: the same
        operations on the same values, bit for bit, in a fifth of the time."""
        x = batch.to(torch.float32, copy=True)
        B, C, H, W = x.shape
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
        if C == 3 and B and x.is_contiguous(memory_format=torch.channels_last):
            rows = x.permute(0, 2, 3, 1).view(B, H * W * C)
            rows.div_(255.0).sub_(mean.repeat(H * W)).div_(std.repeat(H * W))
            return x
        return x.div_(255.0).sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))

    def view_tensor(self, img: torch.Tensor) -> torch.Tensor:
        """``view`` for a decoded uint8 [3, H, W] tensor, on its own device (the GPU decoding
        path). Antialiased like PIL, so the two agree to within rounding."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        h, w = self.size
        scale_to = math.floor(max(h, w) / self.crop_pct + 1e-6)
        ih, iw = img.shape[-2:]
        s = scale_to / min(ih, iw)
        nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
        if (nh, nw) != (ih, iw):
            mode = InterpolationMode[self.interpolation.upper()]
            img = TF.resize(img, [nh, nw], interpolation=mode, antialias=True)
        top, left = (nh - h) // 2, (nw - w) // 2
        return img[:, top : top + h, left : left + w]

    def describe(self) -> str:
        h, w = self.size
        return f"{w}x{h} px, {self.interpolation} resize and center crop (crop_pct {self.crop_pct}), mean {self.mean}, std {self.std}"


def _first(size: Any) -> int:
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def _interp_name(mode: Any) -> str:
    name = str(getattr(mode, "value", mode)).lower()
    return name if name in _PIL_INTERPOLATION else "bilinear"


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


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except ImportError:
        return "~/.cache/huggingface/hub"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, short form ("tench", "goldfish", ...), offline."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


_reachable: dict[str, bool] = {}


def _can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    if host not in _reachable:
        import socket

        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _reachable[host] = True
        except OSError:
            _reachable[host] = False
    return _reachable[host]


@contextlib.contextmanager
def hub_offline_unless_reachable() -> Iterator[None]:
    """Load from the Hugging Face cache only when the Hub cannot be reached.

    Without this, an offline machine spends minutes in the hub client's retries before the
    load fails; with it, cached weights load at once and missing ones fail at once. An
    explicit ``HF_HUB_OFFLINE=1`` is honoured as is.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    from urllib.parse import urlparse

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or _can_reach(host):
        yield
        return
    import os

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def weights_unavailable(what: str, where: str, fetch: str, exc: BaseException) -> UserError:
    """The one-line error for pretrained weights that cannot be had (offline, not cached)."""
    return UserError(
        f"Cannot load the pretrained weights of {what} ({type(exc).__name__}): they are not in {where} and could not be downloaded. "
        f"Fetch them where there is network with: {fetch} (then copy the cache here), or pass --target-option pretrained=false for random weights."
    )


class _StopForward(Exception):
    """Raised from a hook once every requested layer is captured, to skip the rest of the model."""


def as_map(output: Any) -> torch.Tensor | None:
    """The tensor a layer's output holds: itself, or the first tensor of a tuple or ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):  # transformers' ModelOutput is a dict
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = as_map(item)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class _Layout:
    """How to turn a layer's raw output into [B, C, h, w] maps or [B, C] vectors."""

    kind: str  # "nchw", "nhwc", "bnc" (batch-first tokens), "nbc" (sequence-first tokens), "bc"
    grid: tuple[int, int] | None = None
    prefix: int = 0  # class and register tokens before the patch tokens


def token_grid(
    n_tokens: int, input_hw: tuple[int, int], prefix: int | None
) -> tuple[int, tuple[int, int]] | None:
    """``(prefix, (h, w))`` such that ``n_tokens - prefix == h * w`` with ``h / w`` the input's aspect.

    With ``prefix`` unknown, the smallest count of leading tokens (class, registers) that leaves
    such a grid wins.
    """
    H, W = input_hw
    for p in [prefix] if prefix is not None else range(0, 9):
        n = n_tokens - p
        if n <= 0:
            continue
        h = round(math.sqrt(n * H / W))
        if h > 0 and n % h == 0 and abs((n // h) / h - W / H) <= 0.25 * W / H + 1e-9:
            return p, (h, n // h)
    return None


def tokens_to_grid(tokens: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """[B, N, C] tokens -> [B, C, h, w]: drop the ``prefix`` tokens, reshape the rest row-major."""
    h, w = layout.grid
    patches = tokens[:, layout.prefix :, :]
    return patches.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)


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
        class_names: Sequence[str] | None = None,
        main_layers: Sequence[str] | None = None,
        prefix_tokens: int | None = None,
        channels_last: bool = False,
    ):
        if precision not in PRECISIONS:
            raise UserError(
                f"Unknown --precision {precision!r}. Use one of: {', '.join(PRECISIONS)}."
            )
        if not 0.0 < mask_quantile < 1.0:
            raise UserError(f"mask_quantile must be between 0 and 1, not {mask_quantile}.")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}.")
        self.name = name
        self.preprocess = preprocess
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.mask_quantile = mask_quantile
        self.class_names = list(class_names) if class_names is not None else None
        self.prefix_tokens = prefix_tokens
        self._description = description
        self._main_layers = list(main_layers) if main_layers is not None else None
        self.channels_last = channels_last and self.device.type == "cuda"
        model = model.eval().requires_grad_(False).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._modules = dict(self.model.named_modules())
        self._infos: dict[str, LayerInfo] | None = None
        self._layouts: dict[str, _Layout] = {}
        self._listed: list[str] = []
        self.bases: dict[str, Basis] = {}

    # -- layers ---------------------------------------------------------------------------
    def _probe(self) -> dict[str, LayerInfo]:
        """Run two blank images through the model and record every module's output shape.

        Two, not one, so a batch dimension can be told from a sequence dimension.
        """
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
                out = as_map(self.model(self._input(torch.zeros(2, 3, *self.preprocess.size))))
        finally:
            for h in handles:
                h.remove()
        infos: dict[str, LayerInfo] = {}
        order = {name: i for i, name in enumerate(self._modules)}  # definition order, parents first
        for name, shape in sorted(shapes.items(), key=lambda kv: order[kv[0]]):
            found = self._classify(name, shape)
            if found is not None:
                self._layouts[name], infos[name] = found
        if out is not None and out.ndim == 2:
            self._layouts[OUTPUT] = _Layout("bc")
            kind = "classifier" if self.class_names is not None else "vector"
            if self.class_names is not None and len(self.class_names) != out.shape[1]:
                raise UserError(
                    f"{self.name} outputs {out.shape[1]} classes but has {len(self.class_names)} class names."
                )
            infos[OUTPUT] = LayerInfo(OUTPUT, out.shape[1], None, kind, tuple(out.shape[1:]))
        self._infos = infos
        if self._main_layers is not None:
            self._listed = [n for n in self._main_layers if n in infos]
        else:
            self._listed = [n for n in infos if n == OUTPUT or self._is_main_layer(n)]
        for basis in self.bases.values():
            self._add_basis_info(basis)
        return infos

    def _classify(self, name: str, shape: tuple[int, ...]) -> tuple[_Layout, LayerInfo] | None:
        H, W = self.preprocess.size
        if len(shape) == 4 and shape[0] == 2:
            # NCHW unless only the channels-last reading has the input's aspect ratio
            nchw_ok = _same_aspect(shape[2], shape[3], H, W)
            nhwc_ok = _same_aspect(shape[1], shape[2], H, W)
            if nhwc_ok and not nchw_ok:
                return _Layout("nhwc"), LayerInfo(
                    name, shape[3], (shape[1], shape[2]), "conv", shape[1:]
                )
            return _Layout("nchw"), LayerInfo(
                name, shape[1], (shape[2], shape[3]), "conv", shape[1:]
            )
        if len(shape) == 3:
            if shape[0] == 2:
                kind, n = "bnc", shape[1]
            elif shape[1] == 2:
                kind, n = "nbc", shape[0]
            else:
                return None
            found = token_grid(n, (H, W), self.prefix_tokens)
            if found is None:
                return None
            prefix, grid = found
            return _Layout(kind, grid, prefix), LayerInfo(
                name, shape[2], grid, "tokens", (shape[2], *grid)
            )
        if len(shape) == 2 and shape[0] == 2:
            return _Layout("bc"), LayerInfo(name, shape[1], None, "vector", shape[1:])
        return None

    def _is_main_layer(self, name: str) -> bool:
        parts = name.split(".")
        if len(parts) == 1:
            return True
        parent = self._modules.get(".".join(parts[:-1]))
        containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
        return len(parts) == 2 and isinstance(parent, containers)

    def add_basis(self, basis: Basis) -> LayerInfo:
        """Make ``basis`` readable as the virtual layer ``<layer>@<name>``."""
        self._probe()
        self.bases[basis.virtual_layer] = basis.to(self.device)
        try:
            return self._add_basis_info(self.bases[basis.virtual_layer])
        except UserError:
            del self.bases[basis.virtual_layer]
            raise

    def _add_basis_info(self, basis: Basis) -> LayerInfo:
        base = self._infos.get(basis.layer)
        if base is None or base.kind == "classifier" or basis.layer in self.bases:
            listed = ", ".join(i.name for i in self.layers())
            raise UserError(
                f"--basis names layer {basis.layer!r}, which {self.name} does not have. Valid layers: {listed}."
            )
        if base.units != basis.channels:
            raise UserError(
                f"Basis {basis.name!r} expects {basis.channels} channels but layer {basis.layer!r} has {base.units}; train it on that layer."
            )
        shape = (basis.latents, *base.shape[1:])
        info = LayerInfo(basis.virtual_layer, basis.latents, base.spatial, base.kind, shape)
        self._infos[basis.virtual_layer] = info
        if basis.virtual_layer not in self._listed:
            self._listed.append(basis.virtual_layer)
        return info

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

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _to_units(self, name: str, output: Any) -> torch.Tensor:
        """A layer's output as [B, C, h, w] maps or [B, C] vectors, in float32."""
        t = as_map(output)
        layout = self._layouts.get(name)
        if t is None or layout is None:
            raise UserError(f"Layer {name!r} of {self.name} has no output maia can read as units.")
        t = t.detach().float()
        if layout.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        if layout.kind == "bnc":
            return tokens_to_grid(t, layout)
        if layout.kind == "nbc":
            return tokens_to_grid(t.transpose(0, 1), layout)
        return t

    def _physical(self, name: str) -> str:
        return self.bases[name].layer if name in self.bases else name

    @torch.inference_mode()
    def forward_layers(
        self, x: torch.Tensor, layers: Sequence[str], unit: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Run a normalized batch and return each requested layer's units.

        Maps come back as [B, U, h, w], vectors as [B, U], on the target's device; ``output``
        of a classifier as probabilities. With ``unit``, basis layers compute that latent only
        ([B, 1, ...]). The forward pass stops as soon as every needed module has run, so
        reading an early layer costs only the early part of the model.
        """
        self._probe()
        wanted = list(dict.fromkeys(layers))
        for name in wanted:
            if name not in self._infos:
                raise UserError(f"Unknown layer {name!r} for target {self.name}.")
        physical = list(dict.fromkeys(self._physical(n) for n in wanted))
        hooked = [n for n in physical if n != OUTPUT]
        captured: dict[str, torch.Tensor] = {}
        stop_early = OUTPUT not in physical

        def make_hook(layer_name: str):
            def hook(_m, _i, out):
                if layer_name not in captured:
                    captured[layer_name] = self._to_units(layer_name, out)
                    if stop_early and len(captured) == len(hooked):
                        raise _StopForward

            return hook

        handles = [self._modules[n].register_forward_hook(make_hook(n)) for n in hooked]
        try:
            with self._autocast():
                out = self.model(self._input(x))
            if OUTPUT in physical:
                logits = as_map(out).detach().float()
                captured[OUTPUT] = logits.softmax(-1) if self.class_names is not None else logits
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in physical if n not in captured]
        if missing:
            raise UserError(
                f"Layer(s) {', '.join(missing)} of {self.name} never ran in the forward pass."
            )
        result = {}
        for name in wanted:
            if name in self.bases:
                result[name] = self.bases[name].encode(captured[self.bases[name].layer], unit)
            else:
                result[name] = captured[name]
        return result

    def batches(
        self, images: Sequence[Image.Image]
    ) -> Iterator[tuple[list[Image.Image], torch.Tensor]]:
        """Views and normalized tensors, ``batch_size`` images at a time."""
        for start in range(0, len(images), self.batch_size):
            views = self.preprocess.views(images[start : start + self.batch_size])
            yield views, self.preprocess.to_tensor(views)

    def unit_maps(
        self, images: Sequence[Image.Image], unit: Unit
    ) -> Iterator[tuple[list[Image.Image], torch.Tensor]]:
        """Per batch: the views of the images and the unit's maps, [B, h, w] (or [B] for vectors)."""
        basis = unit.layer in self.bases
        for views, x in self.batches(images):
            out = self.forward_layers(x, [unit.layer], unit=unit.index if basis else None)[
                unit.layer
            ]
            yield views, out[:, 0] if basis else out[:, unit.index]

    def system(self, unit: Unit, *, threshold: float | None = None) -> NeuronSystem:
        info = self.require_layer(unit.layer)
        if not 0 <= unit.index < info.units:
            raise UserError(
                f"Unit {unit.index} is out of range for layer {unit.layer!r}, which has {info.units} units."
            )
        if info.kind == "classifier":
            return ClassifierSystem(self, unit, None)
        return NeuronSystem(self, unit, threshold)

    def close(self) -> None:
        self.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _same_aspect(h: int, w: int, H: int, W: int) -> bool:
    return h > 0 and w > 0 and abs(w / h - W / H) <= 0.25 * W / H


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [h, w] or [B, h, w] maps to ``size`` (h, w)."""
    batched = maps.ndim == 3
    x = maps[:, None] if batched else maps[None, None]
    up = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return up[:, 0] if batched else up[0, 0]


def unit_masks(
    maps: torch.Tensor, size: tuple[int, int], threshold: float | None, quantile: float
) -> torch.Tensor:
    """MAIA's masks: [B, h, w] maps upsampled to ``size`` and thresholded -> bool [B, H, W].

    The threshold is the unit's dataset threshold, or without one each image's ``quantile``
    of its own upsampled map. Computed where the maps are (the GPU, when there is one).

    A map that is zero everywhere under a threshold of 0 or more (a unit silent on the image,
    as a synthetic neuron is on most) upsamples to zeros: its mask is empty without the work.
    """
    if threshold is not None and threshold >= 0 and maps.ndim == 3 and len(maps):
        live = maps.flatten(1).ne(0).any(1)
        if not bool(live.all()):
            out = torch.zeros((maps.shape[0], *size), dtype=torch.bool, device=maps.device)
            rows = live.nonzero()[:, 0]
            if len(rows):
                out[rows] = unit_masks(maps[rows], size, threshold, quantile)
            return out
    up = upsample(maps, size)
    if threshold is None:
        thr = torch.quantile(up.flatten(1), quantile, dim=1)[:, None, None]
    else:
        thr = torch.as_tensor(threshold, device=up.device)
    return up > thr


def apply_masks(views: Sequence[Image.Image], masks: np.ndarray) -> list[Image.Image]:
    """Keep each view where its mask is true and dim the rest to 25%."""
    return parallel_map(lambda pair: dim_outside(*pair), list(zip(views, masks)))


def mask_image(
    view: Image.Image, unit_map: torch.Tensor, threshold: float | None, quantile: float
) -> Image.Image:
    """One masked image: the map upsampled to the view, thresholded, the rest dimmed."""
    if unit_map.ndim == 0:  # a vector unit has no spatial map: nothing to mask
        return view.copy()
    mask = unit_masks(unit_map[None], (view.height, view.width), threshold, quantile)[0]
    return apply_masks([view], mask[None].cpu().numpy())[0]


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
        info = target.require_layer(unit.layer)
        if info.spatial is None:
            self.threshold_source = (
                "whole image (this unit has no spatial map, so images are not masked)"
            )
        elif threshold is not None:
            self.threshold_source = f"dataset threshold {threshold:.4g} from the exemplar store"
        else:
            self.threshold_source = f"per-image {target.mask_quantile:.2f} quantile of the activation map (no exemplar store)"

    def _measure(self, images: Any) -> tuple[list[float], list[Image.Image]]:
        acts: list[float] = []
        masked: list[Image.Image] = []
        size = self._target.preprocess.size
        for views, maps in self._target.unit_maps(to_pil_list(images), self.unit):
            if maps.ndim == 1:
                acts.extend(maps.cpu().tolist())
                masked.extend(v.copy() for v in views)
                continue
            acts.extend(maps.flatten(1).amax(dim=1).cpu().tolist())
            masks = unit_masks(maps, size, self.threshold, self._target.mask_quantile).cpu().numpy()
            masked.extend(apply_masks(views, masks))
        return acts, masked

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
        return self._measure(images)

    def __repr__(self) -> str:
        return f"<system: unit {self.unit.index} of layer {self.unit.layer} in {self.model_name}>"


class ClassifierSystem(NeuronSystem):
    """The unit under study is one output class of the model's classifier head."""

    def __init__(self, target: TorchTarget, unit: Unit, threshold: float | None = None):
        super().__init__(target, unit, threshold)
        self.class_name = target.class_names[unit.index]

    def call_neuron(self, images: list[Image.Image]) -> tuple[list[float], list[Image.Image]]:
        """Measure how strongly the model predicts this unit's class for each image.

        Args:
            images: a list of PIL images (a single image is also accepted).

        Returns:
            (probabilities, images). probabilities[i] is the softmax probability of this
            unit's class for image i (0 to 1). images[i] is image i as the model sees it
            (resized and center-cropped); a class has no spatial map, so nothing is masked.

        Example:
            probs, seen = system.call_neuron([img_a, img_b])
            tools.display(seen[0], f"p = {probs[0]:.3f}")
        """
        return self._measure(images)

    def call_classifier(
        self, images: list[Image.Image], top_k: int = 5
    ) -> tuple[list[float], list[list[tuple[str, float]]]]:
        """Classify images with the model's own head.

        Args:
            images: a list of PIL images (a single image is also accepted).
            top_k: how many of the most probable classes to return per image.

        Returns:
            (probabilities, top_classes). probabilities[i] is the softmax probability of this
            unit's class for image i. top_classes[i] lists the top_k (class name, probability)
            pairs the model predicts for image i, most probable first.

        Example:
            probs, tops = system.call_classifier([img])
            print(f"p(unit class) = {probs[0]:.3f}; model sees: {tops[0]}")
        """
        names = self._target.class_names
        probs: list[float] = []
        tops: list[list[tuple[str, float]]] = []
        for _views, x in self._target.batches(to_pil_list(images)):
            p = self._target.forward_layers(x, [OUTPUT])[OUTPUT]
            probs.extend(p[:, self.unit.index].cpu().tolist())
            values, indices = p.topk(min(top_k, p.shape[1]), dim=1)
            for vs, ix in zip(values.cpu().tolist(), indices.cpu().tolist()):
                tops.append([(names[i], round(v, 4)) for v, i in zip(vs, ix)])
        return probs, tops

    def __repr__(self) -> str:
        return (
            f"<system: class {self.unit.index} ({self.class_name}) of {self.model_name}'s output>"
        )
