"""``text2image`` and ``edit_images`` with diffusion models, through Hugging Face diffusers.

- ``flux`` (text2image): FLUX.1-dev as MAIA uses it: 512x512, 25 steps, guidance 5.5, batches
  of 4, T5 prompts of up to 256 tokens. ``model=`` takes any FLUX repo id or diffusers folder; a
  guidance-distilled model (FLUX.1-schnell: ``guidance_embeds`` false in its transformer config)
  gets 4 steps and no guidance instead.
- ``flux-kontext`` (edit_images): FLUX.1-Kontext-dev, 15 steps, guidance 2.5. Unlike MAIA's,
  which returns 1024x1024 whatever it is given, edits are made at the original's aspect ratio
  and come back at the original's size.
- ``sdxl-turbo`` (text2image, 4 steps, no guidance, 512x512) and ``instruct-pix2pix``
  (edit_images, 20 Euler-ancestral steps, guidance 7.5, image guidance 1.5): for GPUs too
  small for FLUX. They are used only when asked for (``--tools text2image=sdxl-turbo``).

``flux`` and ``flux-kontext`` are the default text2image and edit_images on a CUDA device with
at least 70 GiB (both load at once) when their weights are complete in the Hugging Face cache;
elsewhere the offline ``scenes`` tools are.

Options (``--tool-option text2image.steps=4``; every one optional):

- ``model``: a Hugging Face repo id or a local diffusers folder;
- ``steps``, ``guidance``: denoising steps and guidance scale;
- ``size``: text2image: the image size, ``512`` or ``WIDTHxHEIGHT`` like ``768x512``;
  edit_images: ``auto`` (the original's size, brought to between 512x512 and 1024x1024
  pixels for FLUX Kontext, to about 512x512 for InstructPix2Pix) or ``N``, about NxN pixels at
  the original's aspect ratio; either way the edited image is resized to the original's size;
- ``batch_size``: images per pipeline call;
- ``cpu_offload``: ``true`` keeps each model in CPU memory until it runs (accelerate's model
  CPU offload): less GPU memory, slower;
- ``precision``: ``fp32``, ``bf16`` or ``fp16``; by default the run's ``--precision``, except
  that FLUX on a GPU loads in bf16 when the run says fp32 (its weights are bf16; see
  :func:`effective_precision`). Prefer bf16 to fp16 for FLUX: in fp16 diffusers must clip its
  text encoders' activations, and images differ. On the CPU every precision runs (torch >=
  2.1), slowly; fp32 is the fastest there;
- ``max_sequence_length`` (FLUX): T5 tokens read from each prompt, at most 512;
- ``image_guidance`` (instruct-pix2pix): how closely the edit keeps to the original.

This module is imported during plugin discovery, so it imports nothing heavy; the pipelines
(``diffusers_pipelines``) load in the factories.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import as_bool, as_float, as_int, reject_unknown
from maia_core.tools import ToolContext

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
FLUX_KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"
SDXL_TURBO = "stabilityai/sdxl-turbo"
INSTRUCT_PIX2PIX = "timbrooks/instruct-pix2pix"

PRECISIONS = ("fp32", "bf16", "fp16")
# As defaults, text2image=flux and edit_images=flux-kontext load together: about 31 GiB each in
# bf16, plus activations and the target. Smaller GPUs get the offline tools unless asked.
DEFAULT_MIN_GPU_GIB = 70.0
FLUX_FAMILY = ("flux", "flux-kontext")
# Bounds on sizes: below 8 no VAE has a latent pixel; above 4096 no model here was trained.
MIN_SIDE, MAX_SIDE = 8, 4096

_COMMON = ("model", "steps", "guidance", "size", "batch_size", "cpu_offload", "precision")
OPTIONS: dict[str, tuple[str, ...]] = {
    "flux": (*_COMMON, "max_sequence_length"),
    "flux-kontext": (*_COMMON, "max_sequence_length"),
    "sdxl-turbo": _COMMON,
    "instruct-pix2pix": (*_COMMON, "image_guidance"),
}
CAPABILITY = {
    "flux": "text2image",
    "flux-kontext": "edit_images",
    "sdxl-turbo": "text2image",
    "instruct-pix2pix": "edit_images",
}
DEFAULT_MODEL = {
    "flux": FLUX_DEV,
    "flux-kontext": FLUX_KONTEXT,
    "sdxl-turbo": SDXL_TURBO,
    "instruct-pix2pix": INSTRUCT_PIX2PIX,
}


@hookimpl
def register_tools(register):
    register(
        "flux",
        make_flux,
        capability="text2image",
        help="FLUX.1-dev text to image on a GPU (512x512, 25 steps; about 35 GB in bf16)",
        priority=20,
        available=flux_available,
    )
    register(
        "flux-kontext",
        make_flux_kontext,
        capability="edit_images",
        help="FLUX.1-Kontext-dev image editing on a GPU (15 steps; about 35 GB in bf16)",
        priority=20,
        available=flux_kontext_available,
    )
    register(
        "sdxl-turbo",
        make_sdxl_turbo,
        capability="text2image",
        help="SDXL-Turbo text to image on a smaller GPU (512x512, 4 steps; about 10 GB in fp16)",
    )
    register(
        "instruct-pix2pix",
        make_instruct_pix2pix,
        capability="edit_images",
        help="InstructPix2Pix image editing on a smaller GPU (20 steps; about 4 GB in fp16)",
    )


# -- availability: where flux is the default --------------------------------------------------


def is_cuda(device: str) -> bool:
    """``cuda`` or ``cuda:N``."""
    kind, _, index = str(device).strip().partition(":")
    return kind == "cuda" and (not index or index.isdigit())


def _cached_file(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    # A str is a cached file; None and _CACHED_NO_EXIST both mean it is not here.
    path = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return path if isinstance(path, str) else None


def _weights_cached(repo: str, folder: str, cache_dir: str | None) -> bool:
    """A model component's weights, unsharded or every shard its index names."""
    for stem in ("diffusion_pytorch_model", "model"):
        if _cached_file(repo, f"{folder}/{stem}.safetensors", cache_dir):
            return True
        index = _cached_file(repo, f"{folder}/{stem}.safetensors.index.json", cache_dir)
        if index:
            try:
                with open(index) as f:
                    shards = set(json.load(f)["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all(_cached_file(repo, f"{folder}/{s}", cache_dir) for s in shards)
    return False


def weights_cached(repo: str, cache_dir: str | None = None) -> bool:
    """Whether a diffusers pipeline is complete in the local Hugging Face cache.

    Reads only the cache (no network, no torch): the pipeline's ``model_index.json``, then for
    each of its components the config and, for models, the weights (every shard). A download
    cut short therefore counts as absent, and maia falls back to another implementation
    instead of failing at load.
    """
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    index = _cached_file(repo, "model_index.json", cache_dir)
    if index is None:
        return False
    try:
        with open(index) as f:
            components = json.load(f)
    except (OSError, ValueError):
        return False
    for name, spec in components.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        library, cls = spec
        if library is None or cls is None:
            continue
        if "Scheduler" in cls:
            needed = f"{name}/scheduler_config.json"
        elif "Tokenizer" in cls:
            needed = f"{name}/tokenizer_config.json"
        elif "Processor" in cls or "FeatureExtractor" in cls:
            needed = f"{name}/preprocessor_config.json"
        else:
            if not _cached_file(repo, f"{name}/config.json", cache_dir):
                return False
            if not _weights_cached(repo, name, cache_dir):
                return False
            continue
        if not _cached_file(repo, needed, cache_dir):
            return False
    return True


def gpu_memory_gib(device: str) -> float | None:
    """The total memory of the CUDA device ``device``, in GiB (None where there is none)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    _, _, index = str(device).partition(":")
    i = int(index) if index else torch.cuda.current_device()
    if i >= torch.cuda.device_count():
        return None
    return torch.cuda.get_device_properties(i).total_memory / 2**30


def available(repo: str, device: str, cache_dir: str | None = None) -> bool:
    """Whether the FLUX pipeline ``repo`` can be a default on ``device``: a CUDA device with
    room for both default FLUX pipelines, diffusers installed, and the weights complete in the
    local Hugging Face cache. Files are checked first; torch is imported only for the memory."""
    if not is_cuda(device):
        return False
    if importlib.util.find_spec("diffusers") is None:
        return False
    if not weights_cached(repo, cache_dir):
        return False
    memory = gpu_memory_gib(device)
    return memory is not None and memory >= DEFAULT_MIN_GPU_GIB


def flux_available(device: str) -> bool:
    """FLUX.1-dev can be the default text2image on ``device``."""
    return available(FLUX_DEV, device)


def flux_kontext_available(device: str) -> bool:
    """FLUX.1-Kontext-dev can be the default edit_images on ``device``."""
    return available(FLUX_KONTEXT, device)


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """One tool's options, parsed and checked; ``None`` leaves the choice to the model."""

    implementation: str
    capability: str
    model: str
    steps: int | None = None
    guidance: float | None = None
    # text2image: (width, height); edit_images: None (auto) or (n, n), the working area.
    size: tuple[int, int] | None = None
    batch_size: int = 4
    cpu_offload: bool = False
    precision: str = "fp32"
    # Whether precision came from the tool's own option rather than the run's --precision.
    precision_explicit: bool = False
    max_sequence_length: int = 256
    image_guidance: float | None = None

    def option(self, key: str) -> str:
        """How the user spells this option on the command line."""
        return f"--tool-option {self.capability}.{key}"


def parse_size(value: str, name: str, edit: bool) -> tuple[int, int] | None:
    text = str(value).strip().lower()
    if edit and text == "auto":
        return None
    width, sep, height = text.partition("x")
    if edit and sep:
        raise UserError(
            f"Option {name}={value!r}: edits keep the original's aspect ratio, so give one "
            "number (about NxN pixels, e.g. 512) or auto."
        )
    try:
        w = int(width)
        h = int(height) if sep else w
    except ValueError:
        form = "auto or a number like 512" if edit else "512, or WIDTHxHEIGHT like 768x512"
        raise UserError(f"Option {name}={value!r} must be a size in pixels: {form}.") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise UserError(
            f"Option {name}={value!r} is out of range: each side must be {MIN_SIDE} to {MAX_SIDE} pixels."
        )
    return w, h


def parse_settings(implementation: str, ctx: ToolContext, options: dict[str, Any]) -> Settings:
    """Check ``options`` against what ``implementation`` takes; a UserError names any problem."""
    capability = CAPABILITY[implementation]
    reject_unknown(options, f"Tool {capability}={implementation}", OPTIONS[implementation])

    def name(key: str) -> str:
        return f"{capability}.{key}"

    def in_range(key: str, value: float, low: float, high: float | None = None) -> None:
        if value < low or (high is not None and value > high):
            span = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise UserError(f"Option {name(key)}={options[key]!r} must be {span}.")

    out: dict[str, Any] = {}
    model = str(options.get("model", DEFAULT_MODEL[implementation])).strip()
    if not model:
        raise UserError(f"Option {name('model')} is empty; give a repo id or a folder.")
    out["model"] = model
    if "steps" in options:
        out["steps"] = as_int(options["steps"], name("steps"))
        in_range("steps", out["steps"], 1, 1000)
    if "guidance" in options:
        out["guidance"] = as_float(options["guidance"], name("guidance"))
        in_range("guidance", out["guidance"], 0.0, 100.0)
    if "image_guidance" in options:
        out["image_guidance"] = as_float(options["image_guidance"], name("image_guidance"))
        in_range("image_guidance", out["image_guidance"], 0.0, 100.0)
    edit = capability == "edit_images"
    if "size" in options:
        out["size"] = parse_size(options["size"], name("size"), edit)
    elif not edit:
        out["size"] = (512, 512)
    if "batch_size" in options:
        out["batch_size"] = as_int(options["batch_size"], name("batch_size"))
        in_range("batch_size", out["batch_size"], 1, 64)
    if "cpu_offload" in options:
        out["cpu_offload"] = as_bool(options["cpu_offload"], name("cpu_offload"))
    precision = str(options.get("precision", ctx.precision or "fp32")).strip().lower()
    if precision not in PRECISIONS:
        where = name("precision") if "precision" in options else "--precision"
        raise UserError(f"Unknown {where} {precision!r}. Use one of: {', '.join(PRECISIONS)}.")
    out["precision"] = precision
    out["precision_explicit"] = "precision" in options
    if "max_sequence_length" in options:
        out["max_sequence_length"] = as_int(
            options["max_sequence_length"], name("max_sequence_length")
        )
        # FLUX's T5 was trained on at most 512 tokens; diffusers refuses more.
        in_range("max_sequence_length", out["max_sequence_length"], 1, 512)
    return Settings(implementation=implementation, capability=capability, **out)


def effective_precision(settings: Settings, device_type: str) -> str:
    """The precision a pipeline loads in: the tool's ``precision`` option, else the run's.

    One exception: FLUX on a GPU under the run's default fp32 loads in bf16. FLUX's weights are
    published in bf16, so fp32 would add no accuracy and double the memory (about 63 GiB a
    pipeline, so that text2image and edit_images would not fit together even on an 80 GB GPU).
    ``precision=fp32`` as the tool's own option still gets fp32.
    """
    if (
        settings.implementation in FLUX_FAMILY
        and device_type == "cuda"
        and settings.precision == "fp32"
        and not settings.precision_explicit
    ):
        return "bf16"
    return settings.precision


# -- factories --------------------------------------------------------------------------------


def _pipelines() -> Any:
    """The heavy half of this plugin, or a one-line UserError saying what to install."""
    missing = [
        pkg
        for pkg in ("torch", "diffusers", "transformers")
        if importlib.util.find_spec(pkg) is None
    ]
    if missing:
        raise UserError(
            f"The diffusion tools need {', '.join(missing)}, which is not installed. "
            "Install them with: pip install 'maia[diffusers]'"
        )
    try:
        from maia_plugins.tools import diffusers_pipelines
    except ImportError as exc:
        raise UserError(
            f"The diffusion tools could not import their libraries ({exc}). "
            "Install them with: pip install 'maia[diffusers]'"
        ) from None
    return diffusers_pipelines


def _factory(implementation: str, cls_name: str) -> Callable[..., Any]:
    def factory(ctx: ToolContext, **options: str) -> Any:
        settings = parse_settings(implementation, ctx, options)
        return getattr(_pipelines(), cls_name)(ctx, settings)

    factory.__name__ = f"make_{implementation.replace('-', '_')}"
    factory.__doc__ = f"The {implementation} {CAPABILITY[implementation]} tool (options: {', '.join(OPTIONS[implementation])})."
    return factory


make_flux = _factory("flux", "FluxText2Image")
make_flux_kontext = _factory("flux-kontext", "FluxKontextEdit")
make_sdxl_turbo = _factory("sdxl-turbo", "SDXLTurboText2Image")
make_instruct_pix2pix = _factory("instruct-pix2pix", "InstructPix2PixEdit")
