"""Synthetic neurons as a PyTorch target: a detector plus the neurons, one module per mode.

:class:`SyntheticNeurons` is an ``nn.Module`` whose children ``mono``, ``or`` and ``and`` output
maps ``[B, U, h, w]`` (``U`` the neurons of that mode), so :class:`TorchTarget` reads them like
any conv layer: probing, ``forward_layers``, ``call_neuron``, masks and exemplar stores all
work unchanged. A neuron's map is its score times its region at ``map_size`` (28x28), the
region's peak being 1, so the map's spatial maximum is the neuron's activation.

The semantics (see plugins/targets/synthetic.py for how they differ from MAIA's code):

- a concept whose detector score is under the detector's threshold (or 0) is absent: it
  scores 0 and has no region, whatever other concepts scored;
- mono: the concept's score, its region;
- OR: the highest score of its concepts; the union of their regions;
- AND: the lowest score of its concepts, and exactly 0 unless every one is present; the
  union of their regions.

The detector is not a child module (its layers are not the target's), and the concepts live
here and in the target, never in the ``system`` object the agent gets.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from maia_core.errors import UserError
from maia_core.torch_runtime.detector import Detector
from maia_core.torch_runtime.target import NeuronSystem, TorchTarget
from maia_core.units import Unit
from maia_plugins.detectors.scenes import ReadsSceneTruth

MODES = ("mono", "or", "and")
DEFAULT_MAP_SIZE = 28


class Combine(torch.nn.Module):
    """One mode's neurons: concept scores ``[B, C]`` and regions ``[B, C, h, w]`` in, maps
    ``[B, U, h, w]`` out. ``index[u]`` lists neuron ``u``'s concepts (padded by repeating
    its first one, which changes neither a max, a min nor a union)."""

    def __init__(self, mode: str, concept_lists: Sequence[Sequence[int]]):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        width = max(len(c) for c in concept_lists)
        padded = [list(c) + [c[0]] * (width - len(c)) for c in concept_lists]
        self.register_buffer("index", torch.tensor(padded, dtype=torch.long), persistent=False)

    def forward(self, scores: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        s = scores[:, self.index]  # [B, U, K]
        if self.mode == "mono":
            score = s[..., 0]
        elif self.mode == "or":
            score = s.amax(-1)
        else:
            score = torch.where((s > 0).all(-1), s.amin(-1), torch.zeros_like(s[..., 0]))
        region = regions[:, self.index].amax(2)  # [B, U, h, w]: the union
        return score[..., None, None] * region

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.index.shape[0]} neurons"


class SyntheticNeurons(torch.nn.Module):
    """The detector and every neuron of a set. ``forward(x)`` returns ``{mode: maps}``."""

    def __init__(
        self,
        detector: Detector,
        neurons: dict[str, list[list[str]]],
        map_size: int = DEFAULT_MAP_SIZE,
    ):
        super().__init__()
        # Not a child module: TorchTarget must not list the detector's layers.
        self.detector = detector
        self.map_size = map_size
        ids: dict[str, int] = {}
        self.unit_concepts: dict[str, list[list[int]]] = {}
        for mode in MODES:
            lists = []
            for concepts in neurons.get(mode, []):
                lists.append([ids.setdefault(c, len(ids)) for c in concepts])
            self.unit_concepts[mode] = lists
        self.concepts: list[str] = list(ids)
        for mode in MODES:
            if self.unit_concepts[mode]:
                self.add_module(mode, Combine(mode, self.unit_concepts[mode]))
        self._local = threading.local()

    @contextlib.contextmanager
    def only(self, concept_ids: Sequence[int] | None) -> Iterator[None]:
        """Within this block (and this thread) detect only these concepts; the others score 0.

        ``call_neuron`` of one unit needs only that unit's concepts; the exemplar pass needs
        them all (``None``).
        """
        previous = getattr(self._local, "only", None)
        self._local.only = None if concept_ids is None else sorted(set(concept_ids))
        try:
            yield
        finally:
            self._local.only = previous

    def detect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, C]`` and regions ``[B, C, S, S]`` of every concept of the set (those
        outside :meth:`only` at 0), absent concepts zeroed, regions peaking at 1."""
        B, C, S = x.shape[0], len(self.concepts), self.map_size
        scores = torch.zeros(B, C, device=x.device)
        regions = torch.zeros(B, C, S, S, device=x.device)
        wanted = getattr(self._local, "only", None)
        wanted = list(range(C)) if wanted is None else wanted
        if not wanted:
            return scores, regions
        s, m = self.detector.detect(x, [self.concepts[i] for i in wanted])
        s = s.float().to(x.device).clamp(0.0, 1.0)
        m = resize_regions(m.float().to(x.device), S)
        present = (s > 0) & (s >= self.detector.threshold)
        s = torch.where(present, s, torch.zeros_like(s))
        peak = m.flatten(2).amax(-1)
        # A present concept without a region (a detector that gives none) covers the image,
        # so the map's maximum is still the score.
        m = torch.where(
            (peak > 0)[..., None, None], m / peak.clamp_min(1e-12)[..., None, None], 1.0
        )
        m = m * present[..., None, None]
        scores[:, wanted] = s
        regions[:, wanted] = m
        return scores, regions

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores, regions = self.detect(x)
        return {mode: module(scores, regions) for mode, module in self.named_children()}


def resize_regions(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, C, h, w]`` masks at ``size`` x ``size``: averaged when shrinking (a cell is the
    share of it the mask covers), bilinear when growing."""
    h, w = masks.shape[-2:]
    if (h, w) == (size, size):
        return masks
    if h >= size and w >= size:
        return F.adaptive_avg_pool2d(masks, (size, size))
    return F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False).clamp(
        0.0, 1.0
    )


class SyntheticTarget(ReadsSceneTruth, TorchTarget):
    """A set of synthetic neurons: layers are the modes, units the neurons of each mode."""

    def __init__(
        self,
        name: str,
        neuron_set: Any,
        detector: Detector,
        *,
        public_name: str,
        device: str | None = "auto",
        precision: str = "fp32",
        batch_size: int = 32,
        map_size: int = DEFAULT_MAP_SIZE,
    ):
        model = SyntheticNeurons(detector, neuron_set.concepts_by_mode(), map_size)
        counts = {mode: len(model.unit_concepts[mode]) for mode in MODES}
        shown = ", ".join(f"{n} {mode}" for mode, n in counts.items() if n)
        super().__init__(
            name,
            model,
            detector.preprocess,
            device=device,
            precision=precision,
            batch_size=batch_size,
            description=(
                f"synthetic neurons ({shown}); a unit's activation (0 to 1) is a detector's "
                f"score, its region where the detector finds what the unit selects; {detector.describe()}"
            ),
            main_layers=[m for m in MODES if counts[m]],
        )
        self.detector = detector.to(self.device)
        self.public_name = public_name
        self._set = neuron_set

    def _probe(self):
        # Probing only needs the output shapes: no concept is detected on the blank images.
        with self.model.only(()):
            return super()._probe()

    def _unit_concept_ids(self, unit: Unit) -> list[int]:
        info = self.require_layer(unit.layer)
        if not 0 <= unit.index < info.units:
            raise UserError(
                f"Unit {unit.index} is out of range for layer {unit.layer!r}, which has {info.units} units."
            )
        return self.model.unit_concepts[unit.layer][unit.index]

    def unit_maps(
        self, images: Sequence[Image.Image], unit: Unit
    ) -> Iterator[tuple[list[Image.Image], torch.Tensor]]:
        with self.model.only(self._unit_concept_ids(unit)):
            yield from super().unit_maps(images, unit)

    def fixed_threshold(self, layer: str) -> float | None:
        """The region is everything the detector marks: threshold 0 for every unit (as MAIA's
        Synthetic_System), whatever an exemplar store's quantile would be."""
        return 0.0

    def system(self, unit: Unit, *, threshold: float | None = None) -> SyntheticSystem:
        """The agent's ``system``; ``threshold`` is ignored: the region is the detector's."""
        self._unit_concept_ids(unit)  # checks the unit
        return SyntheticSystem(self, unit)

    def ground_truth(self, unit: Unit) -> dict[str, Any]:
        concepts = [self.model.concepts[i] for i in self._unit_concept_ids(unit)]
        return {
            "mode": unit.layer,
            "concepts": concepts,
            "label": "_".join(concepts),
            "detector": self.detector.name,
            "set": self._set.name,
        }

    def unit_listing(self, show_concepts: bool = False) -> list[dict[str, Any]]:
        """Every unit: ``{"layer", "unit"}``, plus ``"mode"`` and ``"concepts"`` when asked."""
        out = []
        for mode in MODES:
            for index, ids in enumerate(self.model.unit_concepts[mode]):
                entry: dict[str, Any] = {"layer": mode, "unit": index}
                if show_concepts:
                    entry["mode"] = mode
                    entry["concepts"] = [self.model.concepts[i] for i in ids]
                out.append(entry)
        return out

    def provenance(self) -> dict[str, Any]:
        """The user's set file and its hash as read when the run started."""
        if self._set.path is None or self._set.builtin:
            return {}
        return {"set": str(self._set.path), "sha256": self._set.sha256}

    def close(self) -> None:
        super().close()
        self.detector.close()


class SyntheticSystem(NeuronSystem):
    """The unit under study: a neuron that responds to what it selects in an image."""

    def __init__(self, target: SyntheticTarget, unit: Unit):
        super().__init__(target, unit, threshold=0.0)
        # The spec may be a file path chosen by a user; the agent sees only the set's kind.
        self.model_name = target.public_name
        self.threshold_source = (
            "the unit's own region: every pixel where it detects what it selects (threshold 0)"
        )

    def call_neuron(self, images: list[Image.Image]) -> tuple[list[float], list[Image.Image]]:
        """Measure how strongly the unit responds to each image.

        Args:
            images: a list of PIL images (a single image is also accepted).

        Returns:
            (activations, masked_images). activations[i] is the unit's activation on image i,
            a float from 0 (no response) to 1. masked_images[i] is image i as the unit sees
            it (resized and center-cropped), with the region the unit responds to kept and
            everything else dimmed to 25%.

        Example:
            acts, masked = system.call_neuron([img_a, img_b])
            for act, img in zip(acts, masked):
                tools.display(img, f"activation: {act:.3f}")
        """
        return self._measure(images)
