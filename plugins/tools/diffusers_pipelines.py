"""The diffusers pipelines behind ``diffusers_tools``: loading, seeding, batching, memory errors.

Imported only by the tool factories (it imports torch and diffusers). Each pipeline loads once
per model host: tools that ask for the same model, precision and device share it through
:meth:`ToolContext.shared`, and a lock makes its calls one at a time, since every investigation
on the device calls the same tool object from its own thread.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from maia_core.errors import ToolError, UserError
from maia_core.tools import ToolContext
from maia_core.torch_runtime.target import (
    hf_cache_dir,
    hub_offline_unless_reachable,
    resolve_device,
)
from maia_plugins.tools.diffusers_tools import Settings, effective_precision
from maia_plugins.tools.imagegen import EditImages, Text2Image

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# How many times each model was loaded in this process: the proof that a model loads once.
LOADS: Counter[str] = Counter()

# Working areas of edits with size=auto: FLUX Kontext was trained at about one megapixel and
# still edits well at 512x512; smaller originals (224 px exemplars) are upscaled, since FLUX
# draws poorly below that. InstructPix2Pix was trained at 512x512 only.
KONTEXT_AREA = (512 * 512, 1024 * 1024)
PIX2PIX_AREA = (512 * 512, 512 * 512)


class Pipeline:
    """One loaded diffusers pipeline, the lock that serializes its calls, and its device."""

    def __init__(self, pipe: Any, device: torch.device, precision: str):
        self.pipe = pipe
        self.device = device
        self.precision = precision
        self.lock = threading.Lock()

    def generators(self, seed: int, n: int) -> list[torch.Generator]:
        """Image ``i`` of a batch from ``seed + i``, on the device the pipeline computes on,
        so an image depends on its own seed only, not on its batch."""
        return [torch.Generator(device=self.device).manual_seed(seed + i) for i in range(n)]

    def __call__(self, settings: Settings, n_images: int, **kwargs: Any) -> list[Image.Image]:
        """Run the pipeline once, alone; out of memory becomes a ToolError the agent reads."""
        failure = None
        with self.lock:
            try:
                images = list(self.pipe(output_type="pil", **kwargs).images)
                if len(images) != n_images:
                    raise RuntimeError(f"the pipeline made {len(images)} images, not {n_images}")
                return images
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not _out_of_memory(exc):
                    raise
                failure = str(exc).strip().splitlines()[0][:200]
            # Leaving the except block drops the traceback, and with it the tensors that its
            # frames hold, so emptying the cache below gives their memory back.
            _free_memory(self.device)
        raise ToolError(
            f"{settings.capability} ran out of memory on {self.device} making {n_images} image(s) "
            f"with {settings.model} ({failure}). Ask for fewer images in one call. If it keeps "
            f"happening, the user can run with {settings.option('batch_size')}=1, "
            f"{settings.option('cpu_offload')}=true, or a smaller model "
            "(--tools text2image=sdxl-turbo,edit_images=instruct-pix2pix)."
        )


def _out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    text = str(exc).lower()
    return isinstance(exc, oom) or any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory")
    )


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- loading ----------------------------------------------------------------------------------


def _pipeline_class(implementation: str) -> tuple[Any, dict[str, Any]]:
    import diffusers

    if implementation == "flux":
        return diffusers.FluxPipeline, {}
    if implementation == "flux-kontext":
        return diffusers.FluxKontextPipeline, {}
    if implementation == "sdxl-turbo":
        # The auto class also takes SD 1.5 and SDXL repos other than Turbo.
        return diffusers.AutoPipelineForText2Image, {}
    if implementation == "instruct-pix2pix":
        # No safety checker, as in MAIA: a blacked-out "unsafe" image would read to the agent
        # as the unit's response to a black image.
        return diffusers.StableDiffusionInstructPix2PixPipeline, {
            "safety_checker": None,
            "requires_safety_checker": False,
        }
    raise ValueError(f"unknown diffusers implementation {implementation!r}")


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # diffusers renamed torch_dtype to dtype (deprecating the old name) where it added this
    # helper; older releases know only torch_dtype.
    try:
        from diffusers.utils import deprecation_utils

        if hasattr(deprecation_utils, "_resolve_dtype"):
            return {"dtype": dtype}
    except ImportError:
        pass
    return {"torch_dtype": dtype}


def _where(model: str) -> tuple[Path | None, bool]:
    """(folder, is_repo_id): a model is a local folder if one exists, else a Hub repo id."""
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return path, False
    parts = model.split("/")
    looks_like_repo = len(parts) == 2 and all(parts) and not model.startswith((".", "~", "/", "\\"))
    return None, looks_like_repo


def _fetch_hint(model: str) -> str:
    hint = f"hf download {model}"
    if model.startswith("black-forest-labs/") and "schnell" not in model.lower():
        hint += " (a gated model: first accept its license on huggingface.co and run hf auth login)"
    return hint


def _load(settings: Settings, device: torch.device) -> Pipeline:
    cls, extra = _pipeline_class(settings.implementation)
    model = settings.model
    folder, repo = _where(model)
    what = f"{settings.capability}={settings.implementation}"
    if folder is None and not repo:
        raise UserError(
            f"{settings.option('model')}={model!r} is neither a folder nor a Hugging Face repo id "
            "(like black-forest-labs/FLUX.1-dev)."
        )
    if folder is not None and not (folder / "model_index.json").is_file():
        raise UserError(
            f"{settings.option('model')}={model!r} is not a diffusers pipeline folder: it has no "
            "model_index.json. Save one with pipeline.save_pretrained(folder), or give a repo id."
        )
    if settings.cpu_offload and device.type != "cuda":
        raise UserError(
            f"{settings.option('cpu_offload')}=true needs a CUDA device (this run uses {device}); "
            "leave it out."
        )
    if settings.cpu_offload and not _has("accelerate"):
        raise UserError(
            "cpu_offload needs accelerate, which is not installed. Install it with: "
            "pip install 'maia[diffusers]'"
        )
    source = str(folder) if folder is not None else model
    try:
        with hub_offline_unless_reachable():
            pipe = cls.from_pretrained(
                source, **_dtype_argument(DTYPES[settings.precision]), **extra
            )
    except OSError as exc:
        if folder is not None:
            raise UserError(
                f"Cannot load {what} from the folder {folder} ({type(exc).__name__}: "
                f"{_first_sentence(exc)}). Save it again with pipeline.save_pretrained."
            ) from exc
        raise UserError(
            f"Cannot load {what}: the weights of {model} ({type(exc).__name__}) are not in the "
            f"Hugging Face cache {hf_cache_dir()} and could not be downloaded. Fetch them where "
            f"there is network with: {_fetch_hint(model)}, then copy the cache here; or use the "
            f"offline tools: --tools {settings.capability}=scenes."
        ) from exc
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"Cannot load {model} as {cls.__name__} for {what} ({type(exc).__name__}: "
            f"{_first_sentence(exc)}). Give a {settings.implementation} model with "
            f"{settings.option('model')}."
        ) from exc
    LOADS[model] += 1
    if settings.implementation == "instruct-pix2pix":
        from diffusers import EulerAncestralDiscreteScheduler

        # MAIA v1's sampler; it needs far fewer steps than the PNDM the repo ships with.
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    try:
        if settings.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    except RuntimeError as exc:
        if not _out_of_memory(exc):
            raise
        del pipe
        _free_memory(device)
        smaller = f"{settings.option('precision')}=bf16, " if settings.precision == "fp32" else ""
        raise UserError(
            f"{model} does not fit on {device} in {settings.precision}. Try "
            f"{settings.option('cpu_offload')}=true, {smaller}or a smaller model "
            "(--tools text2image=sdxl-turbo,edit_images=instruct-pix2pix)."
        ) from None
    return Pipeline(pipe, device, settings.precision)


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cut = text.find(". ")
    text = text[: cut + 1] if cut > 0 else text
    return text[:300]


def load_pipeline(ctx: ToolContext, settings: Settings) -> Pipeline:
    """The pipeline for ``settings`` on the context's device, loaded once per model host."""
    device = resolve_device(ctx.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    settings = dataclasses.replace(settings, precision=effective_precision(settings, device.type))
    key = (
        f"diffusers/{settings.implementation}/{settings.model}/{device}/"
        f"{settings.precision}/offload={settings.cpu_offload}"
    )
    return ctx.shared(key, lambda: _load(settings, device))


# -- helpers shared by the tools --------------------------------------------------------------


def round_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest size the pipeline can make (each side a positive multiple of ``multiple``)."""
    # Halves round up (Python's round() would send 17 to 16 but 19 to 20).
    return (
        max(multiple, int(width / multiple + 0.5) * multiple),
        max(multiple, int(height / multiple + 0.5) * multiple),
    )


def working_size(size: tuple[int, int], area: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Where an edit of an image of ``size`` is made: the image's aspect ratio, its area brought
    into ``area`` (min, max), each side rounded to ``multiple``."""
    w, h = size
    target = min(max(w * h, area[0]), area[1])
    scale = math.sqrt(target / (w * h))
    return round_size(round(w * scale), round(h * scale), multiple)


def length_notes(
    tokenizer: Any, prompts: list[str], limit: int, quote: bool = True
) -> list[str | None]:
    """Per prompt, a note when it is longer than the text encoder reads (None when it fits)."""
    if tokenizer is None:
        return [None] * len(prompts)
    notes: list[str | None] = []
    for text in prompts:
        n = len(tokenizer(text, truncation=False)["input_ids"])
        if n <= limit:
            notes.append(None)
            continue
        which = f"the prompt {text[:40]!r}..." if quote else "it"
        notes.append(
            f"{which} has {n} tokens but the model reads only the first {limit}; "
            "the rest was ignored, so shorten it"
        )
    return notes


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.BICUBIC)


# -- text2image -------------------------------------------------------------------------------


class _DiffusionText2Image(Text2Image):
    """What the text2image pipelines share: batches, seeds, the size the user asked for."""

    def __init__(self, ctx: ToolContext, settings: Settings, multiple: int):
        super().__init__(ctx)
        self.settings = settings
        self.size = settings.size or (512, 512)
        # The pipeline makes a multiple of its latent grid; the caller gets exactly ``size``.
        self.make_size = round_size(*self.size, multiple)

    pipeline: Pipeline
    steps: int
    guidance: float

    def _notes(self, prompts: list[str]) -> list[str | None]:
        return [None] * len(prompts)

    def _call_arguments(self) -> dict[str, Any]:
        return {}

    def generate(self, prompts: list[str], seed: int) -> tuple[list[Image.Image], list[str]]:
        notes = [n for n in self._notes(prompts) if n]
        width, height = self.make_size
        images: list[Image.Image] = []
        for batch in _batches(list(range(len(prompts))), self.settings.batch_size):
            images += self.pipeline(
                self.settings,
                len(batch),
                prompt=[prompts[i] for i in batch],
                height=height,
                width=width,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=self.pipeline.generators(seed + batch[0], len(batch)),
                **self._call_arguments(),
            )
        if self.make_size != self.size:
            images = [im.resize(self.size, Image.BICUBIC) for im in images]
        return images, notes

    def parameters(self) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "steps": self.steps,
            "guidance": self.guidance,
            "size": f"{self.size[0]}x{self.size[1]}",
            "batch_size": self.settings.batch_size,
            "precision": self.pipeline.precision,
        }


class FluxText2Image(_DiffusionText2Image):
    """FLUX.1 text to image (dev by default; schnell-like models get their own defaults)."""

    name = "flux"

    def __init__(self, ctx: ToolContext, settings: Settings):
        self.pipeline = load_pipeline(ctx, settings)
        pipe = self.pipeline.pipe
        super().__init__(ctx, settings, pipe.vae_scale_factor * 2)
        # A guidance-distilled transformer (FLUX.1-schnell) has no guidance input: 4 steps is
        # its schedule, and a guidance scale would be silently ignored, so it is refused.
        self.distilled = not pipe.transformer.config.guidance_embeds
        if self.distilled and settings.guidance:
            raise UserError(
                f"{settings.model} is guidance-distilled (like FLUX.1-schnell) and ignores "
                f"guidance; leave {settings.option('guidance')} out."
            )
        self.steps = settings.steps or (4 if self.distilled else 25)
        self.guidance = 0.0 if self.distilled else _default(settings.guidance, 5.5)

    def _notes(self, prompts: list[str]) -> list[str | None]:
        return length_notes(
            self.pipeline.pipe.tokenizer_2, prompts, self.settings.max_sequence_length
        )

    def _call_arguments(self) -> dict[str, Any]:
        return {"max_sequence_length": self.settings.max_sequence_length}

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "max_sequence_length": self.settings.max_sequence_length}


class SDXLTurboText2Image(_DiffusionText2Image):
    """SDXL-Turbo (or any SD / SDXL pipeline) text to image."""

    name = "sdxl-turbo"

    def __init__(self, ctx: ToolContext, settings: Settings):
        self.pipeline = load_pipeline(ctx, settings)
        pipe = self.pipeline.pipe
        # SD pipelines check for multiples of 8 whatever their VAE.
        super().__init__(ctx, settings, math.lcm(8, pipe.vae_scale_factor))
        self.steps = settings.steps or 4
        self.guidance = _default(settings.guidance, 0.0)

    def _notes(self, prompts: list[str]) -> list[str | None]:
        tok = self.pipeline.pipe.tokenizer
        return length_notes(tok, prompts, getattr(tok, "model_max_length", 77))


def _default(value: float | None, default: float) -> float:
    return default if value is None else float(value)


# -- edit_images ------------------------------------------------------------------------------


class _DiffusionEdit(EditImages):
    """What the editing pipelines share: working sizes, grouping by size, batches, seeds."""

    area: tuple[int, int]
    pipeline: Pipeline
    steps: int
    guidance: float

    def __init__(self, ctx: ToolContext, settings: Settings, multiple: int):
        super().__init__(ctx)
        self.settings = settings
        self.multiple = multiple
        if settings.size is not None:
            self.area = (settings.size[0] * settings.size[1],) * 2

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size at which an original of ``size`` is edited (before resizing back)."""
        return working_size(size, self.area, self.multiple)

    def _notes(self, instructions: list[str]) -> list[str | None]:
        return [None] * len(instructions)

    def _run(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        size: tuple[int, int],
    ) -> list[Image.Image]:
        raise NotImplementedError

    def edit(
        self, images: list[Image.Image], instructions: list[str], seed: int
    ) -> tuple[list[Image.Image], list[str | None]]:
        # One pipeline call makes images of one size, so originals are grouped by working size.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.working_size(image.size), []).append(i)
        out: list[Image.Image | None] = [None] * len(images)
        for size, indices in groups.items():
            for batch in _batches(indices, self.settings.batch_size):
                made = self._run(
                    [_resized(images[i], size) for i in batch],
                    [instructions[i] for i in batch],
                    [seed + i for i in batch],
                    size,
                )
                for i, image in zip(batch, made):
                    out[i] = image
        return [im for im in out if im is not None], self._notes(instructions)

    def parameters(self) -> dict[str, Any]:
        low, high = (round(math.sqrt(a)) for a in self.area)
        size = f"{low}x{low}" if low == high else f"auto ({low}x{low} to {high}x{high} pixels)"
        return {
            "model": self.settings.model,
            "steps": self.steps,
            "guidance": self.guidance,
            "working_size": size,
            "batch_size": self.settings.batch_size,
            "precision": self.pipeline.precision,
        }


def _generators(pipeline: Pipeline, seeds: list[int]) -> list[torch.Generator]:
    return [pipeline.generators(s, 1)[0] for s in seeds]


class FluxKontextEdit(_DiffusionEdit):
    """FLUX.1 Kontext image editing, at the original's aspect ratio."""

    name = "flux-kontext"
    area = KONTEXT_AREA

    def __init__(self, ctx: ToolContext, settings: Settings):
        self.pipeline = load_pipeline(ctx, settings)
        pipe = self.pipeline.pipe
        super().__init__(ctx, settings, pipe.vae_scale_factor * 2)
        self.steps = settings.steps or 15
        self.guidance = _default(settings.guidance, 2.5)
        import inspect

        # Without this the pipeline resizes the original to one of Kontext's preferred ~1 MP
        # sizes; the original is already at the working size, which keeps the cost down.
        self._no_auto_resize = (
            {"_auto_resize": False}
            if "_auto_resize" in inspect.signature(pipe.__call__).parameters
            else {}
        )

    def _notes(self, instructions: list[str]) -> list[str | None]:
        return length_notes(
            self.pipeline.pipe.tokenizer_2,
            instructions,
            self.settings.max_sequence_length,
            quote=False,
        )

    def _run(self, images, instructions, seeds, size):
        width, height = size
        return self.pipeline(
            self.settings,
            len(images),
            image=images,
            prompt=instructions,
            # Kontext makes max_area pixels at height/width's aspect (1024x1024 if not told).
            height=height,
            width=width,
            max_area=width * height,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            max_sequence_length=self.settings.max_sequence_length,
            generator=_generators(self.pipeline, seeds),
            **self._no_auto_resize,
        )

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "max_sequence_length": self.settings.max_sequence_length}


class InstructPix2PixEdit(_DiffusionEdit):
    """InstructPix2Pix image editing with MAIA v1's Euler-ancestral sampler."""

    name = "instruct-pix2pix"
    area = PIX2PIX_AREA

    def __init__(self, ctx: ToolContext, settings: Settings):
        self.pipeline = load_pipeline(ctx, settings)
        pipe = self.pipeline.pipe
        # The UNet halves the latent grid at each down block but the last.
        downs = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        super().__init__(ctx, settings, pipe.vae_scale_factor * downs)
        # MAIA v1 used the pipeline's 100 steps; Euler ancestral converges in about 20.
        self.steps = settings.steps or 20
        self.guidance = _default(settings.guidance, 7.5)
        self.image_guidance = _default(settings.image_guidance, 1.5)

    def _notes(self, instructions: list[str]) -> list[str | None]:
        tok = self.pipeline.pipe.tokenizer
        return length_notes(tok, instructions, getattr(tok, "model_max_length", 77), quote=False)

    def _run(self, images, instructions, seeds, size):
        return self.pipeline(
            self.settings,
            len(images),
            image=images,
            prompt=instructions,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            image_guidance_scale=self.image_guidance,
            generator=_generators(self.pipeline, seeds),
        )

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "image_guidance": self.image_guidance}
