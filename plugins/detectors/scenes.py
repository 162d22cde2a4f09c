"""The ``scenes`` detector: exact on every scenes image, the ``offline`` detector on the rest.

The model host knows what is in every image the scenes dataset, ``text2image`` and
``edit_images`` made (objects, labels, colours, background, positions, sizes, masks, effects;
see :mod:`.scene_truth`). For those, this detector answers from that knowledge:

- **objects** (an ImageNet class or group name): 1 when an object the scenes ``text2image``
  would draw for the name is visible in the model's view (or a photo background shows it),
  else 0; the mask is where its instances are;
- **colours**: as the offline detector, ``1 - exp(-f / color_scale)`` of the share ``f`` of the
  view in that colour, with the scene's named colours exact (a red-recoloured zebra is red all
  over) and the rest read from the pixels by the same rules;
- **grass**: the share of the view that is the grass background, scored the same way.

Any other image (a photo, a masked or resized image, an exemplar) goes to the ``offline``
detector (EfficientNet-Lite0 classes with CAMs, colour rules), loaded on first need; options
other than ``color_scale`` are passed to it. Both answer on the same 56 x 56 grid with the same
threshold, so the agent tells them apart only by the scores. Which answered each image is
recorded with the round (see :func:`noted_batches`), never shown to the agent.

The detector gets the host's registry through ``bind_truth``; images reach it as normalized
rows, which are looked up by their view (``note_images`` / ``note``, see
:class:`~.scene_truth.ViewTruth`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from maia_core.images import as_rgb
from maia_core.options import as_float, reject_unknown
from maia_core.tools import current_scope
from maia_core.torch_runtime.detector import Detector
from maia_core.torch_runtime.target import Preprocess
from maia_plugins.detectors import vocabulary
from maia_plugins.detectors.scene_truth import (
    GRID,
    ConceptMatcher,
    SceneFacts,
    ViewTruth,
    pixel_keys,
    to_grid,
)

# The offline detector's input (EfficientNet-Lite0's), known without loading it.
LITE0_PREPROCESS = Preprocess(
    size=224, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
)


def make_scenes_detector(**options: str) -> ScenesDetector:
    fallback = dict(options)
    color_scale = as_float(fallback.get("color_scale", 0.1), "color_scale")
    threshold = as_float(fallback.get("threshold", 0.1), "threshold")
    from maia_plugins.detectors.offline import OPTIONS

    reject_unknown(fallback, "Detector scenes", OPTIONS)
    return ScenesDetector(fallback, color_scale=color_scale, threshold=threshold)


class ScenesDetector(Detector):
    name = "scenes"

    def __init__(
        self,
        fallback_options: dict[str, str] | None = None,
        *,
        color_scale: float = 0.1,
        threshold: float = 0.1,
    ):
        self.preprocess = LITE0_PREPROCESS
        self.threshold = threshold
        self.color_scale = color_scale
        self.device = torch.device("cpu")
        self.table = vocabulary.concept_table()
        self.truth = ViewTruth(self.preprocess)
        self.matcher = ConceptMatcher()
        self.registry: Any = None
        self._fallback_options = dict(fallback_options or {})
        self._fallback: Detector | None = None
        self._lock = threading.Lock()

    # -- what it knows --------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        return sorted(self.table)

    def describe(self) -> str:
        return (
            "detector: the offline scenes images' contents, and EfficientNet-Lite0 ImageNet "
            "classes with class activation maps and colour rules for other images"
        )

    def bind_truth(self, registry: Any) -> None:
        """The host's :class:`~maia_core.tools.TruthRegistry` of generated images."""
        self.registry = registry

    def note(
        self, x: torch.Tensor, annotations: Sequence[Any], keys: list[bytes] | None = None
    ) -> list[bool]:
        """Remember the annotations of the rows of ``x`` (whose view keys may be given);
        which rows have one."""
        return self.truth.note(x, annotations, keys)

    def note_images(
        self,
        images: Sequence[Image.Image],
        x: torch.Tensor,
        views: Sequence[Image.Image] | None = None,
    ) -> list[bool]:
        """Look ``images`` (the rows of ``x``, made from ``views`` when given) up in the bound
        registry and remember them."""
        if self.registry is None:
            return [False] * len(images)
        annotations = [self.registry.get(as_rgb(img)) for img in images]
        keys = None
        if views is not None and any(a is not None for a in annotations):
            keys = pixel_keys(views)
        return self.note(x, annotations, keys)

    def facts(self, x: torch.Tensor, keys: list[bytes] | None = None) -> list[SceneFacts | None]:
        """Each row's :class:`SceneFacts`, or None where it has no annotation (``keys``: the
        rows' :func:`~.scene_truth.view_keys`, when the caller has them)."""
        return self.truth.facts(x, self.matcher, keys)

    # -- the fallback ---------------------------------------------------------------------
    @property
    def fallback(self) -> Detector:
        with self._lock:
            if self._fallback is None:
                from maia_plugins.detectors.offline import make_offline_detector

                self._fallback = make_offline_detector(**self._fallback_options).to(self.device)
            return self._fallback

    @property
    def model(self) -> torch.nn.Module:
        """The fallback's EfficientNet-Lite0 (benchmarks compare against its bare pass)."""
        return self.fallback.model

    def to(self, device: torch.device) -> ScenesDetector:
        self.device = torch.device(device)
        if self._fallback is not None:
            self._fallback.to(self.device)
        return self

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()

    # -- detecting --------------------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, x: torch.Tensor, concepts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detect_with(x, concepts, self.facts(x))

    def detect_with(
        self, x: torch.Tensor, concepts: Sequence[str], facts: Sequence[SceneFacts | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`detect` with each row's facts given (None: the fallback answers)."""
        B, C = x.shape[0], len(concepts)
        scores = torch.zeros(B, C, device=x.device)
        masks = torch.zeros(B, C, GRID, GRID, device=x.device)
        rest = [i for i, f in enumerate(facts) if f is None]
        if rest and C:
            s, m = self.fallback.detect(x[rest] if len(rest) < B else x, concepts)
            scores[rest] = s.float().to(x.device)
            masks[rest] = _grid(m.float().to(x.device))
        for i, f in enumerate(facts):
            if f is None:
                continue
            for c, concept in enumerate(concepts):
                score, mask = self._exact(f, concept)
                scores[i, c] = score
                if mask is not None:
                    masks[i, c] = torch.from_numpy(mask).to(x.device)
        return scores, masks

    def _exact(self, facts: SceneFacts, concept: str) -> tuple[float, np.ndarray | None]:
        kind = self.table[concept][0]
        if kind == "color":
            share, cells = facts.color_share(concept)
            return self._saturate(share), cells
        if kind == "texture":  # grass: the grass background, and any grass stamps
            parts = [facts.region(concept)]
            if facts.background == concept:
                parts.append(facts.background_region)
            parts = [p for p in parts if p is not None]
            if not parts:
                return 0.0, None
            region = np.maximum.reduce(parts)
            return self._saturate(float(region.mean())), region
        region = facts.region(concept)
        if region is None or region.max() <= 0:
            return 0.0, None
        return 1.0, region

    def _saturate(self, share: float) -> float:
        return 1.0 - math.exp(-share / self.color_scale)


def _grid(masks: torch.Tensor) -> torch.Tensor:
    return masks if masks.shape[-2:] == (GRID, GRID) else to_grid(masks)


def noted_batches(
    target: Any, images: Sequence[Image.Image], detector: Any
) -> Iterator[tuple[list[Image.Image], torch.Tensor]]:
    """A torch target's ``batches`` (views and normalized tensors) that also tells
    ``detector`` (when it reads generated images' ground truth) which image each row is, and
    records, with the round the agent never sees, how many images each source answered."""
    note = getattr(detector, "note_images", None)
    for start in range(0, len(images), target.batch_size):
        chunk = list(images[start : start + target.batch_size])
        views = target.preprocess.views(chunk)
        x = target.preprocess.to_tensor(views)
        if callable(note):
            known = note(chunk, x, views)
            scope = current_scope()
            if scope is not None:
                scope.records.append(
                    {
                        "tool": "system",
                        "implementation": f"detector {detector.name}",
                        "images": len(chunk),
                        "scene_truth": sum(known),
                        "fallback": len(chunk) - sum(known),
                    }
                )
        yield views, x


class ReadsSceneTruth:
    """For a torch target whose ``detector`` may read generated images' ground truth: the
    host's registry goes to the detector (``bind_truth``), the exemplar pass's dataset
    annotations too (``note_truth``), and ``batches`` tells it which image each row is."""

    detector: Any

    def bind_truth(self, registry: Any) -> None:
        bind = getattr(self.detector, "bind_truth", None)
        if callable(bind):
            bind(registry)

    def note_truth(self, x: torch.Tensor, annotations: Sequence[Any]) -> None:
        note = getattr(self.detector, "note", None)
        if callable(note):
            note(x, annotations)

    def batches(
        self, images: Sequence[Image.Image]
    ) -> Iterator[tuple[list[Image.Image], torch.Tensor]]:
        yield from noted_batches(self, images, self.detector)
