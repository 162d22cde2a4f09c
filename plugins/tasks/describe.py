"""``describe``: what visual concept makes one unit fire (MAIA's neuron description task).

The default task: the agent gets the target's own ``system`` for the unit and answers
``[DESCRIPTION]`` and ``[LABEL]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maia_core import hookimpl
from maia_core.task import Subject, Task


@hookimpl
def register_tasks(register):
    register("describe", DescribeTask, help="Describe what one unit detects (MAIA's task)")


class DescribeTask(Task):
    name = "describe"
    arity = 1

    def __init__(self, **options: str):
        from maia_core.options import reject_unknown

        reject_unknown(options, "Task describe", ())

    def system(self, target: Any, subject: Subject, thresholds: Sequence[float | None]) -> Any:
        return target.system(subject.unit, threshold=thresholds[0])

    def measure(self, system: Any, images: list[Any]) -> list[float]:
        acts, _ = system.call_neuron(images)
        return [float(a) for a in acts]
