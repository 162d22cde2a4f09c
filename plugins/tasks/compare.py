"""``compare``: what separates two units (MAIA's ``user_mult`` prompt, on an unmerged branch).

``--units layer4=122,210 --task compare`` studies the pair (consecutive units are paired;
``--pairs FILE`` gives the pairs). ``system.call_neurons(images)`` measures both units on the
same images, and the answer is::

    [DIFFERENCE]: <what drives one unit and not the other, both ways>
    [LABEL 1]: <a short label for unit 1>
    [LABEL 2]: <a short label for unit 2>
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from maia_core import hookimpl
from maia_core.loop import prompts
from maia_core.options import reject_unknown
from maia_core.task import (
    PREDICTION_REQUEST,
    TEMPLATES,
    Answer,
    IncompleteAnswer,
    Subject,
    Task,
    answer_sections,
    first_line,
)


@hookimpl
def register_tasks(register):
    register(
        "compare",
        CompareTask,
        help="Describe what separates two units (MAIA's user_mult): --units L=A,B or --pairs FILE",
    )


ANSWER_FORMAT = (
    "[DIFFERENCE]: <what makes unit 1 fire and not unit 2, and unit 2 and not unit 1; what "
    "they share>\n"
    "[LABEL 1]: <a short label for unit 1, a few words>\n"
    "[LABEL 2]: <a short label for unit 2, a few words>"
)
ROLE = (
    "You are an interpretability researcher comparing two units of a vision model. Your job "
    "is to find out, by experiment, what visual concept makes each unit fire, and precisely "
    "what separates them: what drives one and not the other."
)
GUIDANCE = """- Measure both units on the same images with system.call_neurons, so every comparison is like for like.
- Start from images that drive either unit (dataset exemplars of each, if a tool gives them), and form hypotheses about what they share and what they do not.
- Test each difference with images that have one concept and not the other, and with edits that add or remove it; compare both units' activations.
- Keep each experiment small and look at its results before the next one. Write one ```python block per reply."""
REQUIRED = ("DIFFERENCE", "LABEL 1", "LABEL 2")


class CompareTask(Task):
    name = "compare"
    arity = 2
    subject_noun = "the two units under study"
    answer_format = ANSWER_FORMAT
    index_columns = ("Difference",)

    def __init__(self, **options: str):
        reject_unknown(options, "Task compare", ())

    # -- the host side ------------------------------------------------------------------
    def system(self, target: Any, subject: Subject, thresholds: Sequence[float | None]) -> Any:
        systems = [target.system(u, threshold=t) for u, t in zip(subject.units, thresholds)]
        return UnitsUnderStudy(systems, subject)

    def measure(self, system: Any, images: list[Any]) -> list[float]:
        acts, _ = system.call_neurons(images)
        return [float(a) - float(b) for a, b in zip(acts[0], acts[1])]

    # -- briefing -----------------------------------------------------------------------
    def system_prompt(self, api: str) -> str:
        return prompts.system_prompt(
            api, ANSWER_FORMAT, role=ROLE, guidance=GUIDANCE, subject=self.subject_noun
        )

    def task_prompt(
        self,
        subject: Subject,
        target: str,
        target_description: str,
        threshold_note: str,
        attrs: dict[str, Any],
    ) -> str:
        named = " and ".join(
            f"unit {i} (unit {u.index} of layer {u.layer})" for i, u in enumerate(subject.units, 1)
        )
        return (
            f"Compare {named} in the model {target} ({target_description}). Masks in this "
            f"session use the {threshold_note}. Find what each unit detects and what separates "
            "them. Begin with your first experiment."
        )

    # -- the answer -----------------------------------------------------------------------
    def parse_answer(self, text: str) -> Answer | None:
        found = answer_sections(text, REQUIRED)
        if found is None:
            if answer_sections(text, ("DESCRIPTION", "LABEL")) is not None:
                raise IncompleteAnswer(
                    "This task's final answer has [DIFFERENCE], [LABEL 1] and [LABEL 2], not "
                    "[DESCRIPTION] and [LABEL]."
                )
            return None
        labels = [first_line(found["LABEL 1"]), first_line(found["LABEL 2"])]
        return Answer(
            found["DIFFERENCE"],
            f"{labels[0]} | {labels[1]}",
            {"difference": found["DIFFERENCE"], "labels": labels},
        )

    # -- reports --------------------------------------------------------------------------
    def answer_html(self, row: dict[str, Any]) -> str:
        answer = row.get("answer") if isinstance(row.get("answer"), dict) else {}
        labels = answer.get("labels") if isinstance(answer.get("labels"), list) else []
        units = row.get("units") if isinstance(row.get("units"), list) else []
        cells = []
        for i, label in enumerate(labels):
            unit = units[i] if i < len(units) and isinstance(units[i], dict) else {}
            cells.append(
                f"<tr><td>unit {i + 1}</td><td>{html.escape(str(unit.get('layer', '')))}="
                f"{html.escape(str(unit.get('unit', '')))}</td><td>{html.escape(str(label))}</td></tr>"
            )
        if not cells:
            return ""
        return (
            '<table class="claims"><thead><tr><th></th><th>Unit</th><th>Label</th></tr></thead>'
            f"<tbody>{''.join(cells)}</tbody></table>"
        )

    def index_cells(self, row: dict[str, Any]) -> list[str]:
        answer = row.get("answer") if isinstance(row.get("answer"), dict) else {}
        return [str(answer.get("difference") or "")[:300]]

    # -- reflection -----------------------------------------------------------------------
    def predictions(
        self, answer: Answer, attrs: dict[str, Any], k: int
    ) -> tuple[list[str], list[str]]:
        labels = answer.fields.get("labels") or ["", ""]
        return (
            [TEMPLATES[i % len(TEMPLATES)].format(label=labels[0]) for i in range(k)],
            [TEMPLATES[i % len(TEMPLATES)].format(label=labels[1]) for i in range(k)],
        )

    def prediction_request(self, answer: Answer, attrs: dict[str, Any], k: int) -> str:
        labels = answer.fields.get("labels") or ["", ""]
        return PREDICTION_REQUEST.format(
            k=k,
            what="images that should activate unit 1 much more than unit 2",
            not_what="images that should activate unit 2 much more than unit 1",
            answer=(
                f"[DIFFERENCE]: {answer.description}\n[LABEL 1]: {labels[0]}\n"
                f"[LABEL 2]: {labels[1]}"
            ),
        )

    # -- evaluation -----------------------------------------------------------------------
    def score(self, scorer: Any, result: dict[str, Any]) -> dict[str, Any] | None:
        from maia_plugins.tasks.compare_scoring import score_compare

        return score_compare(scorer, result)


class UnitsUnderStudy:
    """Two units under study, measured together: call them on images to compare them."""

    def __init__(self, systems: list[Any], subject: Subject):
        self._systems = systems
        self.units = ", ".join(f"unit {i}: {u}" for i, u in enumerate(subject.units, 1))
        self.model_name = str(getattr(systems[0], "model_name", "") or "")
        sources = {getattr(s, "threshold_source", "unit's activation map") for s in systems}
        self.threshold_source = "; ".join(sorted(sources))

    def call_neurons(self, images: list[Any]) -> tuple[list[list[float]], list[list[Any]]]:
        """Measure both units on the same images.

        Args:
            images: a list of PIL images (a single image is also accepted).

        Returns:
            (activations, masked_images). activations[0][i] is unit 1's maximum activation
            over all positions of image i, and activations[1][i] unit 2's. masked_images[0][i]
            is image i as the model sees it with unit 1's most active regions kept and the
            rest dimmed to 25%; masked_images[1][i] the same for unit 2.

        Example:
            acts, masked = system.call_neurons([img_a, img_b])
            for i in range(2):
                tools.display(masked[0][i], f"unit 1: {acts[0][i]:.3f}")
                tools.display(masked[1][i], f"unit 2: {acts[1][i]:.3f}")
        """
        acts, masked = [], []
        for system in self._systems:
            a, m = system.call_neuron(images)
            acts.append([float(x) for x in a])
            masked.append(list(m))
        return acts, masked

    def __repr__(self) -> str:
        return f"<system: {self.units} of {self.model_name}>"
