"""The built-in detectors, registered like a third party's: ``scenes``, ``offline`` and
``grounded-sam``.

Light on purpose: the factories import torch, timm and transformers when a detector loads.
"""

from __future__ import annotations

from maia_core import hookimpl


@hookimpl
def register_detectors(register):
    register(
        "scenes",
        make_scenes,
        help="Exact on every image the scenes dataset, text2image or edit_images made (their "
        "ground truth); the offline detector on any other image; no network",
        vocabulary=offline_vocabulary,
        vocabulary_text=offline_vocabulary_text,
    )
    register(
        "offline",
        make_offline,
        help="EfficientNet-Lite0 ImageNet classes and groups (CAM masks), colours and grass; no network",
        vocabulary=offline_vocabulary,
        vocabulary_text=offline_vocabulary_text,
    )
    register(
        "grounded-sam",
        make_grounded_sam,
        help="Grounding DINO (grounding-dino-tiny) + SAM ViT-H through transformers, as MAIA; open vocabulary",
    )


def make_scenes(**options: str):
    from maia_plugins.detectors.scenes import make_scenes_detector

    return make_scenes_detector(**options)


def make_offline(**options: str):
    from maia_plugins.detectors.offline import make_offline_detector

    return make_offline_detector(**options)


def make_grounded_sam(**options: str):
    from maia_plugins.detectors.grounded_sam import make_grounded_sam_detector

    return make_grounded_sam_detector(**options)


def offline_vocabulary() -> list[str]:
    from maia_plugins.detectors.vocabulary import vocabulary

    return vocabulary()


def offline_vocabulary_text() -> str:
    from maia_plugins.detectors.vocabulary import describe

    return describe()
