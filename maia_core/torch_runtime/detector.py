"""Detectors: what scores a concept in an image and says where it is.

Synthetic neurons (``synthetic:<set>``) are built on a detector: a unit's activation is a
detector's score for its concepts and its region the detector's mask. A detector plugin
registers a factory through the ``register_detectors`` hook (``factory(**options)``);
``--target-option detector=NAME`` picks one for any set.

The contract of :meth:`Detector.detect`, for a batch of ``B`` images and ``C`` concepts:

- ``scores`` ``[B, C]`` in [0, 1]; a concept the detector does not find scores exactly 0
  (never a value left over from another concept or image);
- ``masks`` ``[B, C, h, w]`` in [0, 1] (binary or soft, any ``h, w``): where each concept is;
  all zero where the concept is absent.

A concept counts as present when its score is at least :attr:`Detector.threshold` (and above
0); below, a synthetic neuron treats it as absent.

Like the rest of ``torch_runtime`` this module is imported only when a model loads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from maia_core.errors import UserError
from maia_core.torch_runtime.target import Preprocess

#: Where a user sees a detector's vocabulary (the ``synthetic`` plugin's command).
VOCABULARY_COMMAND = "maia synthetic vocabulary --detector {name}"


def normalize_concept(concept: str) -> str:
    """Concepts compare lower-cased, with single spaces: ``" Car  Window"`` -> ``"car window"``."""
    return " ".join(str(concept).lower().split())


class Detector(ABC):
    """Scores concepts in batches of images and gives their masks."""

    #: the registered name (``offline``, ``grounded-sam``)
    name: str = ""
    #: how an image becomes this detector's input (the synthetic target's preprocessing)
    preprocess: Preprocess = Preprocess()
    #: a concept scoring below this is absent
    threshold: float = 0.0
    device: torch.device = torch.device("cpu")

    def vocabulary(self) -> list[str] | None:
        """The concepts this detector knows, or None when any text is a concept (open vocabulary)."""
        return None

    def check(self, concept: str) -> str:
        """The concept in its normal form; a one-line ``UserError`` if the detector does not
        know it, naming where the vocabulary can be seen."""
        norm = normalize_concept(concept)
        if not norm:
            raise UserError(f"An empty concept was given to the {self.name} detector.")
        vocab = self.vocabulary()
        if vocab is not None and norm not in self._known():
            raise UserError(
                f"The {self.name} detector does not know the concept {norm!r}. "
                f"See its vocabulary with: {VOCABULARY_COMMAND.format(name=self.name)}"
            )
        return norm

    def _known(self) -> set[str]:
        cached = getattr(self, "_known_cache", None)
        if cached is None:
            cached = set(self.vocabulary() or ())
            self._known_cache = cached
        return cached

    @abstractmethod
    def detect(self, x: torch.Tensor, concepts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``concepts`` (normal forms, see :meth:`check`) in a normalized batch ``x``
        ``[B, 3, H, W]`` (made by :attr:`preprocess`, on :attr:`device`).

        Returns ``(scores [B, C], masks [B, C, h, w])`` as described in the module docstring.
        """

    def to(self, device: torch.device) -> Detector:
        """Move the detector's models to ``device``."""
        self.device = torch.device(device)
        return self

    def describe(self) -> str:
        """One line on what the detector is (no concepts: it may reach the agent)."""
        return self.name

    def close(self) -> None:
        """Release models and memory."""


def load_detector(name: str, **options: str) -> Detector:
    """The detector registered as ``name``, built with ``options``."""
    from maia_core import plugins

    registry = plugins.registry("detectors")
    if name not in registry.entries:
        raise UserError(
            f"Unknown detector {name!r} for --target-option detector. Known: {registry.known()}."
        )
    return registry.entries[name].factory(**options)
