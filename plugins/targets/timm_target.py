"""timm targets: any timm model (``timm:<model_name>``) and MAIA's ``dino_vits8``.

Options (``--target-option KEY=VALUE``):

- ``pretrained`` (default true): load timm's pretrained weights, from its usual cache;
- ``checkpoint=PATH``: load weights from a local file instead;
- ``batch_size`` (default 32), ``mask_quantile`` (default 0.9), ``channels_last`` (GPU only).
"""

from __future__ import annotations

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, as_bool, reject_unknown, target_tuning

OPTIONS = ("pretrained", "checkpoint", *TARGET_TUNING)
# MAIA's DINO ViT-S/8 is the same network and weights as timm's vit_small_patch8_224.dino,
# with the same module names, so MAIA's layers (blocks.N.mlp.fc1) read the same.
DINO_VITS8 = "vit_small_patch8_224.dino"


@hookimpl
def register_targets(register):
    register(
        "timm", make_timm_target, help="Any timm model: timm:<model_name> (e.g. timm:resnet50)"
    )
    register(
        "dino_vits8",
        make_dino_vits8,
        help="MAIA's DINO ViT-S/8 (timm vit_small_patch8_224.dino); layers blocks.N.mlp.fc1",
    )


def make_dino_vits8(arg: str | None, **options: str):
    return make_timm_target(
        DINO_VITS8,
        name="dino_vits8",
        main_layers=[f"blocks.{i}.mlp.fc1" for i in range(12)],
        **options,
    )


def class_names_for(model) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    from maia_core.torch_runtime.target import imagenet_class_names

    subset = infer_imagenet_subset(model)
    if subset == "imagenet-1k":
        return imagenet_class_names()
    if subset:
        info = ImageNetInfo(subset)
        return [info.index_to_description(i) for i in range(info.num_classes())]
    return None


def make_timm_target(
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
            "The timm target needs a model name: --target timm:<model_name>, e.g. timm:resnet50."
        )
    name = name or f"timm:{arg}"
    reject_unknown(options, f"Target {name}", OPTIONS)
    import timm
    from timm.data import resolve_data_config

    from maia_core.torch_runtime.target import (
        Preprocess,
        TorchTarget,
        hf_cache_dir,
        hub_offline_unless_reachable,
        weights_unavailable,
    )

    if not timm.is_model(arg):
        raise UserError(
            f"timm has no model {arg!r}. Find names with: python -c \"import timm; print(timm.list_models('*{arg.split('.')[0]}*'))\"."
        )
    pretrained = as_bool(options.get("pretrained", "true"), "pretrained")
    checkpoint = options.get("checkpoint")
    try:
        with hub_offline_unless_reachable():
            model = timm.create_model(arg, pretrained=pretrained and not checkpoint)
    except Exception as exc:
        if not pretrained or checkpoint:
            raise
        fetch = f"python -c \"import timm; timm.create_model('{arg}', pretrained=True)\""
        raise weights_unavailable(
            f"timm:{arg}", f"the Hugging Face cache {hf_cache_dir()}", fetch, exc
        ) from exc
    if checkpoint:
        try:
            timm.models.load_checkpoint(model, checkpoint)
        except FileNotFoundError:
            raise UserError(f"Checkpoint {checkpoint!r} does not exist.") from None
        except RuntimeError as exc:
            raise UserError(
                f"Checkpoint {checkpoint!r} does not fit timm:{arg}: {str(exc).splitlines()[0]}"
            ) from None
    cfg = resolve_data_config({}, model=model)
    preprocess = Preprocess(
        size=tuple(cfg["input_size"][1:]),
        crop_pct=cfg.get("crop_pct", 0.875),
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )
    if checkpoint:
        weights = f"weights from {checkpoint}"
    else:
        weights = "pretrained weights" if pretrained else "random weights"
    return TorchTarget(
        name,
        model,
        preprocess,
        device=device,
        precision=precision,
        description=f"timm model {arg} with {weights}, {preprocess.size[1]}x{preprocess.size[0]} input",
        class_names=class_names_for(model) if getattr(model, "num_classes", 0) else None,
        prefix_tokens=getattr(model, "num_prefix_tokens", None),
        main_layers=main_layers,
        **target_tuning(options),
    )
