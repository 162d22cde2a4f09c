"""open_clip targets: the visual tower of any open_clip model, and MAIA's ``clip-RN50``.

``--target open_clip:<arch>/<pretrained>`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``), or
``open_clip:<arch>`` for random weights. The model's own preprocessing is used. Weights
come through open_clip from the Hugging Face cache. Options: ``pretrained=false``,
``batch_size``, ``mask_quantile``, ``channels_last``.
"""

from __future__ import annotations

import logging

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, as_bool, reject_unknown, target_tuning

OPTIONS = ("pretrained", *TARGET_TUNING)


@hookimpl
def register_targets(register):
    register(
        "open_clip",
        make_open_clip_target,
        help="The visual tower of an open_clip model: open_clip:<arch>/<pretrained>",
    )
    register(
        "clip-RN50",
        make_clip_rn50,
        help="MAIA's CLIP RN50 visual tower (OpenAI weights via open_clip); layers layer1-layer4",
    )


def make_clip_rn50(arg: str | None, **options: str):
    return make_open_clip_target(
        "RN50/openai",
        name="clip-RN50",
        main_layers=["layer1", "layer2", "layer3", "layer4"],
        **options,
    )


def make_open_clip_target(
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
            "The open_clip target needs a model: --target open_clip:<arch>/<pretrained>, e.g. open_clip:RN50/openai."
        )
    name = name or f"open_clip:{arg}"
    reject_unknown(options, f"Target {name}", OPTIONS)
    import open_clip

    from maia_core.torch_runtime.target import (
        Preprocess,
        TorchTarget,
        hf_cache_dir,
        hub_offline_unless_reachable,
        weights_unavailable,
    )

    arch, _, tag = arg.partition("/")
    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if arch.lower()[:4] in m.lower()][:8]
        raise UserError(
            f"open_clip has no model {arch!r}. Similar: {', '.join(close) or 'see open_clip.list_models()'}."
        )
    if not as_bool(options.get("pretrained", "true"), "pretrained"):
        tag = ""
    if tag and tag not in open_clip.list_pretrained_tags_by_model(arch):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise UserError(f"open_clip has no pretrained weights {tag!r} for {arch}. Known: {tags}.")
    quiet = logging.getLogger().level
    try:
        # open_clip logs on the root logger (random weights, failed downloads); maia's own
        # error says what matters, on one line.
        logging.getLogger().setLevel(logging.CRITICAL)
        with hub_offline_unless_reachable():
            model, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=tag or None
            )
    except Exception as exc:
        if not tag:
            raise
        fetch = f"python -c \"import open_clip; open_clip.create_model_and_transforms('{arch}', pretrained='{tag}')\""
        raise weights_unavailable(
            name, f"the Hugging Face cache {hf_cache_dir()}", fetch, exc
        ) from exc
    finally:
        logging.getLogger().setLevel(quiet)
    preprocess = Preprocess.from_transforms(transform)
    return TorchTarget(
        name,
        model.visual,
        preprocess,
        device=device,
        precision=precision,
        description=f"visual tower of open_clip {arch} ({tag or 'random weights'}), {preprocess.size[1]}x{preprocess.size[0]} input",
        prefix_tokens=1 if hasattr(model.visual, "class_embedding") else None,
        main_layers=main_layers,
        **target_tuning(options),
    )
