"""open_clip targets: the visual tower of any open_clip model, and MAIA's ``clip-RN50``.

``--target open_clip:<arch>/<pretrained>`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``), or
``open_clip:<arch>`` for random weights. The model's own preprocessing is used. Weights
come through open_clip from the Hugging Face cache. Options: ``pretrained=false``,
``batch_size``, ``mask_quantile``, ``channels_last``.

``labels=teacher,scientist`` (or ``labels=@FILE``, one a line) adds a zero-shot classifier
head, as SAIA's CLIP classifiers: the layer ``output``, one class per label, its score the
softmax over the labels of the scaled cosine between the image and "a photo of a {label}"
(``label_prompt`` changes the template). Its classes are units like an ImageNet head's
(``--task reliance --units output=0``); the tower's layers keep their names.
"""

from __future__ import annotations

import logging

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, as_bool, reject_unknown, target_tuning

OPTIONS = ("pretrained", "labels", "label_prompt", *TARGET_TUNING)
LABEL_PROMPT = "a photo of a {}"


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
    module, class_names, what = model.visual, None, "visual tower"
    if options.get("labels"):
        class_names = read_labels(options["labels"])
        template = options.get("label_prompt", LABEL_PROMPT)
        if "{}" not in template:
            raise UserError(f"label_prompt={template!r} needs {{}} where the label goes.")
        module = zero_shot(model, open_clip.get_tokenizer(arch), class_names, template)
        what = f"zero-shot classifier over {len(class_names)} labels"
        if main_layers is None:
            main_layers = [*(n for n, _ in model.visual.named_children()), "output"]
    return TorchTarget(
        name,
        module,
        preprocess,
        device=device,
        precision=precision,
        description=f"{what} of open_clip {arch} ({tag or 'random weights'}), {preprocess.size[1]}x{preprocess.size[0]} input",
        prefix_tokens=1 if hasattr(model.visual, "class_embedding") else None,
        main_layers=main_layers,
        class_names=class_names,
        **target_tuning(options),
    )


def read_labels(value: str) -> list[str]:
    """``labels=a,b,c``, or ``labels=@FILE`` with one label a line."""
    if value.startswith("@"):
        from pathlib import Path

        try:
            text = Path(value[1:]).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(
                f"Cannot read the labels file {value[1:]!r}: {exc.strerror or exc}."
            ) from None
        labels = [line.strip() for line in text.splitlines()]
    else:
        labels = [part.strip() for part in value.split(",")]
    labels = [x for x in labels if x and not x.startswith("#")]
    if len(labels) < 2:
        raise UserError("labels= needs at least two labels, e.g. labels=teacher,scientist.")
    return labels


def zero_shot(model, tokenizer, labels: list[str], template: str):
    """The visual tower with a zero-shot head: [B, len(labels)] scaled cosines. The tower's
    children and parameters are the wrapper's own, so its layers keep their names."""
    import torch

    with torch.no_grad():
        text = model.encode_text(tokenizer([template.format(label) for label in labels]))
        text = text / text.norm(dim=-1, keepdim=True)
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0

    class ZeroShotClassifier(torch.nn.Module):
        def __init__(self, visual):
            super().__init__()
            for child, module in visual.named_children():
                self.add_module(child, module)
            for param, value in visual.named_parameters(recurse=False):
                self.register_parameter(param, value)
            self.register_buffer("text_features", text.float())
            object.__setattr__(self, "_visual", visual)  # runs the tower; not a child twice

        def forward(self, x):
            image = self._visual(x)
            image = image / image.norm(dim=-1, keepdim=True)
            return scale * image @ self.text_features.to(image.dtype).T

    model.eval()
    return ZeroShotClassifier(model.visual)
