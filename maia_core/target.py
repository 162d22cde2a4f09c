"""The target interface: a model under study, its layers, and the agent-facing ``system``.

A target plugin registers a factory returning a :class:`Target`. Most targets are PyTorch
modules and subclass :class:`maia_core.torch_runtime.target.TorchTarget`, which implements layers,
activation maps and masks once for all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from maia_core.errors import UserError
from maia_core.units import LayerInfo, Unit


class Target(ABC):
    """A model under study plus its preprocessing. Lives in the sandbox worker."""

    #: The spec the user named (``timm:resnet18``); set by the factory.
    name: str = ""

    @abstractmethod
    def layers(self, all: bool = False) -> list[LayerInfo]:
        """The readable layers, in forward order. ``all=False`` lists the main ones only."""

    def layer(self, name: str) -> LayerInfo | None:
        """Any readable layer by name, listed or not; ``None`` if the target has no such layer."""
        return next((info for info in self.layers(all=True) if info.name == name), None)

    def require_layer(self, name: str) -> LayerInfo:
        info = self.layer(name)
        if info is None:
            listed = ", ".join(i.name for i in self.layers())
            raise UserError(
                f"Unknown layer {name!r} for target {self.name}. Valid layers: {listed}."
            )
        return info

    @abstractmethod
    def system(self, unit: Unit, *, threshold: float | None = None) -> Any:
        """The object the agent calls ``system``: its public methods and docstrings are its API.

        ``threshold`` is the unit's activation threshold over a dataset, when an exemplar
        store provides one; without it masks use a per-image quantile.
        """

    def add_basis(self, basis: Any) -> LayerInfo:
        """Read a layer through a basis of directions or SAE latents (see maia_core.torch_runtime.basis)."""
        raise UserError(f"Target {self.name} does not support --basis.")

    def describe(self) -> str:
        """One line on what the model is, shown to the agent and in reports."""
        return self.name

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        """What the unit is known to detect, when that is known (synthetic neurons); None
        otherwise. Read by maia after the agent answers, never shown to the agent."""
        return None

    # Optional: ``bind_truth(registry)``. A target that defines it is handed the host's
    # :class:`~maia_core.tools.TruthRegistry` (the ground truth of every image the generators
    # and the scenes dataset made, keyed by pixels) before any investigation starts.

    def close(self) -> None:
        """Release models and memory."""
