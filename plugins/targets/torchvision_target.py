"""torchvision targets: any torchvision model (``torchvision:<name>``) and MAIA's ``resnet152``.

Weights are torchvision's: ``IMAGENET1K_V1`` by default (the weights MAIA uses for
resnet152), from the torch hub cache ($TORCH_HOME/hub/checkpoints). Options:

- ``weights``: a weights name of the model (``IMAGENET1K_V2``, ``DEFAULT``...) or ``none``;
- ``pretrained=false``: random weights (same as ``weights=none``);
- ``batch_size``, ``mask_quantile``, ``channels_last``.
"""

from __future__ import annotations

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, as_bool, reject_unknown, target_tuning

OPTIONS = ("weights", "pretrained", *TARGET_TUNING)
MAIA_RESNET152_LAYERS = ["conv1", "layer1", "layer2", "layer3", "layer4", "output"]


@hookimpl
def register_targets(register):
    register(
        "torchvision",
        make_torchvision_target,
        help="Any torchvision model: torchvision:<name> (IMAGENET1K_V1 weights)",
    )
    register(
        "resnet152",
        make_resnet152,
        help="MAIA's ResNet152 (torchvision, IMAGENET1K_V1); layers conv1, layer1-layer4",
    )


def make_resnet152(arg: str | None, **options: str):
    return make_torchvision_target(
        "resnet152", name="resnet152", main_layers=MAIA_RESNET152_LAYERS, **options
    )


def checkpoint_path(weights) -> str:
    """Where torchvision keeps (or would download) these weights: $TORCH_HOME/hub/checkpoints/."""
    import os

    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def make_torchvision_target(
    arg: str | None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    name: str | None = None,
    main_layers: list[str] | None = None,
    **options: str,
):
    if not arg:
        raise UserError(
            "The torchvision target needs a model name: --target torchvision:<name>, e.g. torchvision:resnet50."
        )
    name = name or f"torchvision:{arg}"
    reject_unknown(options, f"Target {name}", OPTIONS)
    import torchvision
    from torchvision.models import get_model, get_model_weights

    from maia_core.torch_runtime.target import (
        Preprocess,
        TorchTarget,
        imagenet_class_names,
        weights_unavailable,
    )

    if arg not in torchvision.models.list_models():
        close = [m for m in torchvision.models.list_models() if arg.split("_")[0] in m][:8]
        raise UserError(
            f"torchvision has no model {arg!r}. Similar: {', '.join(close) or 'see torchvision.models.list_models()'}."
        )
    enum = get_model_weights(arg)
    wanted = options.get(
        "weights", "IMAGENET1K_V1" if "IMAGENET1K_V1" in enum.__members__ else "DEFAULT"
    )
    if not as_bool(options.get("pretrained", "true"), "pretrained") or wanted.lower() == "none":
        weights = None
    elif wanted == "DEFAULT":
        weights = enum.DEFAULT
    elif wanted in enum.__members__:
        weights = enum[wanted]
    else:
        raise UserError(
            f"torchvision:{arg} has no weights {wanted!r}. Choose one of: {', '.join(enum.__members__)}, DEFAULT or none."
        )
    try:
        model = get_model(arg, weights=weights)
    except Exception as exc:
        if weights is None:
            raise
        fetch = f"python -c \"import torchvision; torchvision.models.get_model('{arg}', weights='{weights.name}')\""
        raise weights_unavailable(
            f"{name} ({weights.name})", checkpoint_path(weights), fetch, exc
        ) from exc
    meta = (weights or enum.DEFAULT).meta
    preprocess = Preprocess.from_transforms((weights or enum.DEFAULT).transforms())
    categories = meta.get("categories")
    num_classes = getattr(getattr(model, "fc", None), "out_features", None) or len(categories or [])
    class_names = categories if categories and len(categories) == num_classes else None
    if class_names is None and num_classes == 1000:
        class_names = imagenet_class_names()
    label = weights.name if weights is not None else "random weights"
    return TorchTarget(
        name,
        model,
        preprocess,
        device=device,
        precision=precision,
        description=f"torchvision {arg} ({label}), {preprocess.size[1]}x{preprocess.size[0]} input",
        class_names=class_names,
        main_layers=main_layers,
        **target_tuning(options),
    )
