"""The ``timm`` target: any timm model, ``--target timm:<model_name>``.

Options (``--target-option KEY=VALUE``):

- ``pretrained`` (default true): load timm's pretrained weights, from its usual cache;
- ``checkpoint=PATH``: load weights from a local file instead;
- ``batch_size`` (default 32), ``mask_quantile`` (default 0.9).
"""

from __future__ import annotations

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, as_bool, reject_unknown, target_tuning

OPTIONS = ("pretrained", "checkpoint", *TARGET_TUNING)


@hookimpl
def register_targets(register):
    register(
        "timm", make_timm_target, help="Any timm model: timm:<model_name> (e.g. timm:resnet50)"
    )


def make_timm_target(
    arg: str | None, *, device: str = "auto", precision: str = "fp32", **options: str
):
    if not arg:
        raise UserError(
            "The timm target needs a model name: --target timm:<model_name>, e.g. timm:resnet50."
        )
    reject_unknown(options, f"Target timm:{arg}", OPTIONS)
    import timm
    from timm.data import resolve_data_config

    from maia_core.torch_target import Preprocess, TorchTarget, weights_cache_hint

    if not timm.is_model(arg):
        raise UserError(
            f"timm has no model {arg!r}. Find names with: python -c \"import timm; print(timm.list_models('*{arg.split('.')[0]}*'))\"."
        )
    pretrained = as_bool(options.get("pretrained", "true"), "pretrained")
    checkpoint = options.get("checkpoint")
    try:
        model = timm.create_model(arg, pretrained=pretrained and not checkpoint)
    except Exception as exc:
        if not pretrained or checkpoint:
            raise
        raise UserError(
            f"Cannot load pretrained weights for timm:{arg} ({type(exc).__name__}); maia looked in {weights_cache_hint()}. "
            f"Fetch them where there is network with: python -c \"import timm; timm.create_model('{arg}', pretrained=True)\", "
            "or pass --target-option checkpoint=PATH for a local file, or pretrained=false for random weights."
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
    weights = (
        "random weights"
        if not pretrained and not checkpoint
        else ("weights from " + checkpoint if checkpoint else "pretrained weights")
    )
    return TorchTarget(
        f"timm:{arg}",
        model,
        preprocess,
        device=device,
        precision=precision,
        description=f"timm model {arg} with {weights}, {preprocess.size[1]}x{preprocess.size[0]} input",
        **target_tuning(options),
    )
