"""Planted-reliance classifiers as a PyTorch target (see plugins/targets/reliance.py).

:class:`RelianceModel` maps a normalized batch to the scores of every class ``[B, U]``: one
detector pass for every object the set names, each image's facts (exact from its scene, or
estimated from its pixels), and SAIA's composition per class. :class:`RelianceTarget` reads it
as a classifier whose only layer is ``output``; the detector and the conditions live here, never
in the ``system`` the agent gets.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from maia_core.errors import UserError
from maia_core.images import to_pil_list
from maia_core.torch_runtime.detector import Detector
from maia_core.torch_runtime.target import OUTPUT, NeuronSystem, TorchTarget
from maia_core.units import Unit
from maia_plugins.detectors.scenes import ReadsSceneTruth
from maia_plugins.targets.reliance_conditions import combined
from maia_plugins.targets.reliance_pixels import pixel_facts

ABSENT_MAX = 0.1  # an absent object's class scores uniformly in [0, 0.1], as SAIA


class RelianceModel(torch.nn.Module):
    """The detector and every class of a set; ``forward(x)`` returns ``[B, U]`` scores."""

    def __init__(self, detector: Detector, models: Sequence[Any]):
        super().__init__()
        self.detector = detector  # not a child: its layers are not the target's
        self.models = list(models)
        concepts: dict[str, int] = {}
        for m in self.models:
            concepts.setdefault(m.object, len(concepts))
            for c in m.conditions:
                for other in c.objects():
                    concepts.setdefault(other, len(concepts))
        self.concepts = list(concepts)
        self.object_index = [concepts[m.object] for m in self.models]
        self._local = threading.local()

    @contextlib.contextmanager
    def shapes_only(self) -> Iterator[None]:
        """Within this block (and this thread) ``forward`` returns zeros of the right shape
        without detecting anything: probing the layers needs no detector, and the ``scenes``
        detector's fallback (EfficientNet-Lite0, timm) then loads only for an image without
        ground truth."""
        self._local.shapes_only = True
        try:
            yield
        finally:
            self._local.shapes_only = False

    def facts(
        self, x: torch.Tensor, keys: list[bytes] | None = None
    ) -> tuple[list[Any], torch.Tensor]:
        """Each row's facts (exact or estimated) and the objects' scores ``[B, C]``."""
        det = self.detector
        exact = [None] * x.shape[0]
        if callable(getattr(det, "facts", None)):
            exact = det.facts(x, keys)
        if callable(getattr(det, "detect_with", None)):
            scores, masks = det.detect_with(x, self.concepts, exact)
        else:
            scores, masks = det.detect(x, self.concepts)
        scores = scores.float()
        present = (scores > 0) & (scores >= det.threshold)
        scores = torch.where(present, scores, torch.zeros_like(scores))
        rest = [i for i, f in enumerate(exact) if f is None]
        facts = list(exact)
        if rest:
            estimated = pixel_facts(
                x[rest], self.concepts, scores[rest], masks[rest], det.threshold, det.preprocess
            )
            for i, f in zip(rest, estimated):
                facts[i] = f
        return facts, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self._local, "shapes_only", False):
            return torch.zeros(x.shape[0], len(self.models), device=x.device)
        truth = getattr(self.detector, "truth", None)
        keys = truth.keys(x) if truth is not None and len(truth) else None
        facts, scores = self.facts(x, keys)
        if keys is None:  # no ground truth to look up: a cheaper digest seeds the noise
            keys = _digests(x)
        obj_scores = scores[:, self.object_index].cpu().numpy()  # [B, U]
        out = np.empty_like(obj_scores)
        for b, (f, key) in enumerate(zip(facts, keys)):
            noise = np.random.default_rng(int.from_bytes(key[:8], "big")).random(len(self.models))
            decided: dict[tuple, bool] = {}  # models that share a condition (two alphas) share it
            for u, m in enumerate(self.models):
                s = float(obj_scores[b, u])
                if s <= 0:
                    out[b, u] = round(float(noise[u]) * ABSENT_MAX, 2)
                    continue
                key_u = (m.object, m.mode, tuple(m.conditions))
                if key_u not in decided:
                    decided[key_u] = combined(m.conditions, m.mode, m.object, f)
                out[b, u] = s if decided[key_u] else (1.0 - m.alpha) * s
        return torch.from_numpy(out).to(x.device)


def _digests(x: torch.Tensor) -> list[bytes]:
    """Per row, a digest of a sixteenth of its values: what fixes an absent object's noise."""
    sample = x[:, :, ::4, ::4].float().cpu().contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in sample]


class RelianceTarget(ReadsSceneTruth, TorchTarget):
    """A classifier whose classes are objects with planted reliances: the layer ``output``."""

    def __init__(
        self,
        name: str,
        reliance_set: Any,
        detector: Detector,
        *,
        public_name: str,
        device: str | None = "auto",
        precision: str = "fp32",
        batch_size: int = 32,
    ):
        model = RelianceModel(detector, reliance_set.models)
        super().__init__(
            name,
            model,
            detector.preprocess,
            device=device,
            precision=precision,
            batch_size=batch_size,
            description=(
                f"an image classifier ({public_name}) whose classes are objects; a class's score "
                "(0 to 1) is how strongly the model recognises its object in the image"
            ),
            class_names=[m.object for m in reliance_set.models],
            main_layers=[OUTPUT],
        )
        self.detector = detector.to(self.device)
        self.public_name = public_name
        self._set = reliance_set

    def _probe(self):
        with self.model.shapes_only():
            return super()._probe()

    @torch.inference_mode()
    def forward_layers(
        self, x: torch.Tensor, layers: Sequence[str], unit: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The classes' scores for ``output`` (no softmax: each class is scored on its own)."""
        self._probe()
        for name in layers:
            if name != OUTPUT:
                raise UserError(
                    f"Unknown layer {name!r} for target {self.name}. Valid layers: output."
                )
        return {OUTPUT: self.model(self._input(x))}

    def _model(self, unit: Unit) -> Any:
        info = self.require_layer(unit.layer)
        if not 0 <= unit.index < info.units:
            raise UserError(
                f"Unit {unit.index} is out of range for layer {unit.layer!r}, which has {info.units} units."
            )
        return self._set.models[unit.index]

    def system(self, unit: Unit, *, threshold: float | None = None) -> RelianceSystem:
        self._model(unit)
        return RelianceSystem(self, unit)

    def ground_truth(self, unit: Unit) -> dict[str, Any]:
        return {
            **self._model(unit).ground_truth(),
            "set": self._set.name,
            "detector": self.detector.name,
            "kind": "planted",
        }

    def unit_listing(self, show_conditions: bool = False) -> list[dict[str, Any]]:
        """Every class: ``{"layer", "unit", "object"}``, with its ground truth when asked."""
        out = []
        for index, m in enumerate(self._set.models):
            entry: dict[str, Any] = {"layer": OUTPUT, "unit": index, "object": m.object}
            if show_conditions:
                entry.update(m.ground_truth())
            out.append(entry)
        return out

    @torch.inference_mode()
    def truth(self, unit: Unit, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """The truth predicate, for evaluation: per image, whether the class's object is there,
        whether its planted condition holds, and whether that was read exactly from the image's
        scene (``exact``) or estimated from its pixels. Never shown to the agent."""
        m = self._model(unit)
        out = []
        for _views, x in self.batches(to_pil_list(images)):
            facts, scores = self.model.facts(x.to(self.device))
            col = self.model.concepts.index(m.object)
            for f, s in zip(facts, scores[:, col].tolist()):
                out.append(
                    {
                        "object": s > 0,
                        "condition": combined(m.conditions, m.mode, m.object, f),
                        "exact": bool(f.exact),
                    }
                )
        return out

    def provenance(self) -> dict[str, Any]:
        """The user's set file and its hash as read when the run started."""
        if self._set.path is None or self._set.builtin:
            return {}
        return {"set": str(self._set.path), "sha256": self._set.sha256}

    def close(self) -> None:
        super().close()
        self.detector.close()


class RelianceSystem(NeuronSystem):
    """The class under study: one output class of an image classifier."""

    def __init__(self, target: RelianceTarget, unit: Unit):
        super().__init__(target, unit, threshold=None)
        self.model_name = target.public_name
        self.class_name = target.class_names[unit.index]

    def call_neuron(self, images: list[Image.Image]) -> tuple[list[float], list[Image.Image]]:
        """Score each image for this class.

        Args:
            images: a list of PIL images (a single image is also accepted).

        Returns:
            (scores, images). scores[i] is the classifier's score of this class for image i,
            from 0 to 1. images[i] is image i as the model sees it (resized and
            center-cropped); a class has no spatial map, so nothing is masked.

        Example:
            scores, seen = system.call_neuron([img_a, img_b])
            tools.display(seen[0], f"score = {scores[0]:.3f}")
        """
        return self._measure(images)

    def call_classifier(
        self, images: list[Image.Image], top_k: int = 5
    ) -> tuple[list[float], list[list[tuple[str, float]]]]:
        """Classify images with the whole classifier.

        Args:
            images: a list of PIL images (a single image is also accepted).
            top_k: how many of the highest-scoring classes to return per image.

        Returns:
            (scores, top_classes). scores[i] is this class's score for image i (0 to 1).
            top_classes[i] lists the top_k (class name, score) pairs for image i, highest
            first (a class name appears once, with its best score).

        Example:
            scores, tops = system.call_classifier([img])
            print(f"score = {scores[0]:.3f}; model sees: {tops[0]}")
        """
        target = self._target
        names = target.class_names
        scores: list[float] = []
        tops: list[list[tuple[str, float]]] = []
        for _views, x in target.batches(to_pil_list(images)):
            p = target.forward_layers(x, [OUTPUT])[OUTPUT]
            scores.extend(p[:, self.unit.index].cpu().tolist())
            for row in p.cpu().tolist():
                best: dict[str, float] = {}
                for name, value in zip(names, row):
                    best[name] = max(best.get(name, 0.0), value)
                ranked = sorted(best.items(), key=lambda kv: -kv[1])[: max(0, int(top_k))]
                tops.append([(n, round(v, 4)) for n, v in ranked])
        return scores, tops

    def __repr__(self) -> str:
        return f"<system: class {self.unit.index} ({self.class_name}) of {self.model_name}>"
