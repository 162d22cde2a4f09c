"""Hugging Face targets: ``hf:<repo_id>`` or ``hf:<local folder>``, any transformers vision model.

ViT, DINOv2 (with or without registers), ConvNeXt, SigLIP and CLIP (the vision tower),
BEiT, Swin... loaded with ``AutoModel`` (``AutoModelForImageClassification`` when the
checkpoint has a classifier head, whose labels then name the ``output`` units), with the
checkpoint's own image processor for preprocessing. Weights come from the Hugging Face cache;
``HF_HUB_OFFLINE=1`` is respected. Options: ``batch_size``, ``mask_quantile``, ``channels_last``.
"""

from __future__ import annotations

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, reject_unknown, target_tuning

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@hookimpl
def register_targets(register):
    register(
        "hf",
        make_hf_target,
        help="A Hugging Face transformers vision model: hf:<repo_id or folder>",
    )


def preprocess_from_processor(processor):
    """Size, crop, resampling, mean and std from a transformers image processor."""
    from maia_core.torch_runtime.target import IMAGENET_MEAN, IMAGENET_STD, Preprocess

    def side(size) -> tuple[int, int] | int | None:
        if size is None:
            return None
        if isinstance(size, int):
            return size
        size = dict(size)
        if "height" in size and "width" in size:
            return (size["height"], size["width"])
        return size.get("shortest_edge") or size.get("longest_edge")

    resize = side(getattr(processor, "size", None))
    crop = (
        side(getattr(processor, "crop_size", None))
        if getattr(processor, "do_center_crop", False)
        else None
    )
    final = crop or resize or 224
    if crop and isinstance(resize, int):
        crop_pct = (max(crop) if isinstance(crop, tuple) else crop) / resize
    else:
        crop_pct = 1.0
    return Preprocess(
        size=final,
        crop_pct=min(crop_pct, 1.0),
        interpolation=_RESAMPLE.get(int(getattr(processor, "resample", 2) or 2), "bilinear"),
        mean=tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN),
        std=tuple(getattr(processor, "image_std", None) or IMAGENET_STD),
    )


def prefix_tokens(config) -> int | None:
    """Class and register tokens ahead of the patch tokens, when the config says."""
    vision = getattr(config, "vision_config", None) or config
    if "siglip" in getattr(vision, "model_type", ""):
        return 0
    registers = getattr(vision, "num_register_tokens", None)
    if registers is not None:
        return 1 + registers
    return None  # inferred from the token count


def make_hf_target(
    arg: str | None, *, device: str = "auto", precision: str = "fp32", **options: str
):
    if not arg:
        raise UserError(
            "The hf target needs a model: --target hf:<repo_id>, e.g. hf:facebook/dinov2-small."
        )
    reject_unknown(options, f"Target hf:{arg}", TARGET_TUNING)
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
    )

    from maia_core.torch_runtime.target import (
        TorchTarget,
        hf_cache_dir,
        hub_offline_unless_reachable,
    )

    try:
        with hub_offline_unless_reachable():
            config = AutoConfig.from_pretrained(arg)
            head = any(a.endswith("ForImageClassification") for a in (config.architectures or []))
            model = (AutoModelForImageClassification if head else AutoModel).from_pretrained(arg)
            processor = AutoImageProcessor.from_pretrained(arg)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Cannot load hf:{arg} ({type(exc).__name__}): it is not in the Hugging Face cache {hf_cache_dir()} "
            "and could not be downloaded. "
            f"Fetch it where there is network with: hf download {arg} (then copy the cache here), or give a local folder: hf:/path/to/model."
        ) from exc
    if getattr(config, "vision_config", None) is not None and hasattr(model, "vision_model"):
        model = model.vision_model  # CLIP, SigLIP...: study the vision tower
    class_names = None
    if head:
        labels = config.id2label
        class_names = [str(labels.get(i, labels.get(str(i), i))) for i in range(config.num_labels)]
    preprocess = preprocess_from_processor(processor)
    return TorchTarget(
        f"hf:{arg}",
        model,
        preprocess,
        device=device,
        precision=precision,
        description=f"Hugging Face {type(model).__name__} from {arg}, {preprocess.size[1]}x{preprocess.size[0]} input",
        class_names=class_names,
        prefix_tokens=prefix_tokens(config),
        **target_tuning(options),
    )
