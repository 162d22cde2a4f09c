"""The plain-data descriptions that cross between maia's processes: what a model host loads
(:class:`WorldSpec`) and what an investigation learns about its unit (:class:`UnitSetup`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from maia_core.execution import wire


@dataclass
class WorldSpec:
    """Everything a host needs to load its models; plain data, so it crosses processes."""

    target: str
    target_options: dict[str, str] = field(default_factory=dict)
    # capabilities, each optionally "capability=implementation" (see plugins.select_tools);
    # None: every capability, defaults chosen where the models load
    tools: list[str] | None = None
    tool_options: dict[str, dict[str, str]] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "fp32"
    exemplars: str | None = None
    # (layer, safetensors path) pairs: units that are directions or SAE latents
    bases: list[tuple[str, str]] = field(default_factory=list)
    # "auto" (on for CUDA), "on" or "off": batch concurrent forward passes
    batching: str = "auto"
    # The task (maia_core.task): it builds each investigation's system, and scores images.
    task: str = "describe"
    task_options: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> WorldSpec:
        spec = cls(**wire.need(d, dict, "spec"))
        spec.bases = [tuple(b) for b in spec.bases]
        return spec


@dataclass
class UnitSetup:
    """What the loop needs to brief the agent on a unit, and a kernel to build its proxies."""

    api: str
    target_description: str
    threshold_note: str
    # system's public plain attributes, its public methods and the tools: name -> doc
    attrs: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> UnitSetup:
        return cls(
            wire.field(d, "api", str, "unit setup"),
            wire.field(d, "target_description", str, "unit setup"),
            wire.field(d, "threshold_note", str, "unit setup"),
            wire.field(d, "attrs", dict, "unit setup", {}),
            wire.field(d, "methods", dict, "unit setup", {}),
            wire.field(d, "tools", dict, "unit setup", {}),
        )
