"""The live state of investigations and runs: what the loop updates and reporters read.

Kept apart from the loop and from ``run()`` so that reporters depend on this module only, and
nothing depends back on them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maia_core.backbone import Usage
from maia_core.task import Subject
from maia_core.transcript import Message
from maia_core.units import Unit


@dataclass
class Result:
    """What ``result.json`` holds."""

    status: str  # "completed", "incomplete" (no final answer) or "failed"
    description: str | None = None
    label: str | None = None
    rounds: int = 0
    wall_time_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    rounds_usage: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    sandbox_restarts: int = 0
    started_at: str = ""
    finished_at: str = ""
    # The task's structured part of the answer (e.g. reliance's claims), plain JSON data.
    answer: dict[str, Any] = field(default_factory=dict)
    # With --reflect: every check of an answer by prediction, and which answer was kept.
    reflection: dict[str, Any] | None = None


@dataclass
class Investigation:
    """The live state of one investigation (of a unit, or of a subject of several units);
    reporters read it."""

    unit: Unit
    target: str
    backbone: str
    out_dir: Path
    messages: list[Message] = field(default_factory=list)
    threshold: str = ""
    target_description: str = ""
    result: Result | None = None
    # The backbone that answered tools' describe/summarize requests, when not the agent's.
    describer: str | None = None
    # What the unit is known to detect (synthetic neurons), read after the agent answered.
    ground_truth: dict[str, Any] | None = None
    # Tool implementations in use: capability -> implementation.
    tools: dict[str, str] = field(default_factory=dict)
    # How the target was built (--target-option, --basis), so an evaluation can build it again.
    target_options: dict[str, str] = field(default_factory=dict)
    bases: list[list[str]] = field(default_factory=list)
    # The files the target was built from, as the host read them (a user's set: its hash).
    provenance: dict[str, Any] = field(default_factory=dict)
    # How the investigation's code was contained.
    containment: str = ""
    # Estimated USD spent and rounds asked so far, updated every round (budgets read them).
    spent_usd: float = 0.0
    rounds_done: int = 0
    # Why the unit was not run: "completed" (already done), or who else is studying it.
    skip_reason: str | None = None
    # The first error of a reporter writing this unit's files: the unit is then not saved,
    # and is not marked completed.
    save_error: BaseException | None = field(default=None, repr=False)
    # What is studied (the unit, or a pair for compare), and the task (maia_core.task).
    subject: Subject | None = None
    task: str = "describe"

    def __post_init__(self) -> None:
        if self.subject is None:
            self.subject = Subject.of(self.unit)

    @property
    def name(self) -> str:
        return str(self.subject)

    def to_json(self) -> dict[str, Any]:
        r = self.result or Result("running")
        return {
            "target": self.target,
            "target_options": self.target_options,
            "bases": self.bases,
            "layer": self.unit.layer,
            "unit": self.unit.index,
            "task": self.task,
            "units": [{"layer": u.layer, "unit": u.index} for u in self.subject.units],
            "backbone": self.backbone,
            **({"describer": self.describer} if self.describer else {}),
            "status": r.status,
            "description": r.description,
            "label": r.label,
            **({"answer": r.answer} if r.answer else {}),
            **({"reflection": r.reflection} if r.reflection is not None else {}),
            "rounds": r.rounds,
            "wall_time_s": round(r.wall_time_s, 3),
            "usage": {**r.usage.to_json(), "per_round": r.rounds_usage},
            "error": r.error,
            "threshold": self.threshold,
            "target_description": self.target_description,
            "tools": self.tools,
            "sandbox_restarts": r.sandbox_restarts,
            **({"provenance": self.provenance} if self.provenance else {}),
            **({"containment": self.containment} if self.containment else {}),
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            **({"ground_truth": self.ground_truth} if self.ground_truth is not None else {}),
        }


@dataclass
class RunInfo:
    """A run as reporters see it."""

    config: Any
    units: list[Unit]
    backbone: str
    target: str
    describer: str | None = None
    concurrency: int = 1
    tools: dict[str, str] = field(default_factory=dict)
    # How agent code is contained, as the sandbox reported it.
    containment: str = ""
    # The files the target was built from and their hashes (the host read them once).
    provenance: dict[str, Any] = field(default_factory=dict)
    # Estimated USD this run has spent so far, and the units --budget-usd kept from starting.
    spent_usd: float = 0.0
    not_started: list[Unit] = field(default_factory=list)
    # Units another run was studying (their lock was held), skipped.
    locked: list[Unit] = field(default_factory=list)
    # Units done so far (finished or skipped), and those in flight.
    done: int = 0
    in_flight: list[Investigation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
