"""Tasks: what an investigation is asked to find, and how its answer is parsed, shown and scored.

A task is a plugin (``register_tasks``), chosen with ``maia run --task NAME``. ``describe``
(what one unit detects) is the default; ``reliance`` (what a classifier's class relies on)
and ``compare`` (what separates two units) are built in and registered exactly as a third
party's task is.

A task has two sides, and this module is the contract between them and the rest of maia:

- **In the model host** (where the target lives; no agent code, no keys):
  :meth:`Task.system` builds the agent's ``system`` for a :class:`Subject`, and
  :meth:`Task.measure` turns images into one score per image (for reflection and
  evaluation). The host calls nothing else of a task.
- **In the main process** (the loop, reporters, ``maia eval``): the prompt, parsing the final
  answer, what goes into ``result.json``, the report and the index, reflection prompts, and
  scoring. These never touch the model directly; they ask the execution for renders and
  measurements (``execution.render_and_measure``).

Only plain data crosses between the two sides (a task object is built on each side from its
name and options, which travel in the :class:`~maia_core.execution.specs.WorldSpec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from maia_core.units import Unit


@dataclass(frozen=True)
class Subject:
    """What one investigation studies: one unit (``describe``, ``reliance``) or several
    (``compare``), in order."""

    units: tuple[Unit, ...]

    def __post_init__(self) -> None:
        if not self.units:
            raise ValueError("a subject needs at least one unit")

    @classmethod
    def of(cls, *units: Unit) -> Subject:
        return cls(tuple(units))

    @property
    def unit(self) -> Unit:
        """The first (for one-unit tasks, the only) unit."""
        return self.units[0]

    def __str__(self) -> str:
        if len(self.units) == 1:
            return str(self.unit)
        layers = {u.layer for u in self.units}
        if len(layers) == 1:
            return f"{self.unit.layer}={'+'.join(str(u.index) for u in self.units)}"
        return "+".join(str(u) for u in self.units)

    def folder(self) -> tuple[str, str]:
        """``(layer, unit)`` parts of the results folder: ``layer4/122`` for one unit,
        ``layer4/122+210`` for a pair in one layer, ``layer3=5+layer4=7/pair`` across layers."""
        if len(self.units) == 1:
            return self.unit.layer, str(self.unit.index)
        layers = {u.layer for u in self.units}
        if len(layers) == 1:
            return self.unit.layer, "+".join(str(u.index) for u in self.units)
        return "+".join(str(u) for u in self.units), "pair"


@dataclass
class Answer:
    """A parsed final answer: the fields every report shows, and the task's structured part."""

    description: str
    label: str
    # Task-specific structured fields (plain JSON data), e.g. the [RELIANCE] claims.
    fields: dict[str, Any] = field(default_factory=dict)


class IncompleteAnswer(Exception):
    """A final answer was given, but parts are missing or malformed. The message, which names
    what is missing and the expected form, is sent back to the agent."""


class Task:
    """One kind of investigation. Subclass it and register an instance factory with
    ``register_tasks``: ``register("mytask", MyTask, help="...")``; the factory gets the
    ``--task-option`` pairs as keyword arguments.

    Host side (see the module docstring): :meth:`system` and :meth:`measure`. Everything else
    runs in the main process. Subclasses override what differs from ``describe``.
    """

    #: the name ``--task`` selects
    name: str = ""
    #: how many units one subject has (1, or 2 for a pair); None: any number
    arity: int | None = 1

    # -- the host side ------------------------------------------------------------------
    def system(self, target: Any, subject: Subject, thresholds: Sequence[float | None]) -> Any:
        """The agent's ``system`` for ``subject``: its public methods and their docstrings are
        the API the agent reads. ``thresholds[i]`` is unit i's dataset threshold when an
        exemplar store has one. Raise :class:`~maia_core.errors.UserError` for a subject the
        task cannot study (a reliance task on a unit that is not a class)."""
        raise NotImplementedError

    def measure(self, system: Any, images: list[Any]) -> list[float]:
        """One score per image, as the task reads the subject (the unit's activation, the
        class's score, or for a pair the first unit's activation minus the second's), used by
        reflection and by ``maia eval``."""
        raise NotImplementedError
