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

Every main-process method has ``describe``'s behaviour here, so a task overrides only what
differs. A third party's task in a few lines::

    from maia_core import hookimpl
    from maia_core.task import Answer, Task, answer_sections

    @hookimpl
    def register_tasks(register):
        register("texture", TextureTask, help="Is the unit a texture detector?")

    class TextureTask(Task):
        answer_format = "[TEXTURE]: <yes or no>\n[LABEL]: <a short label>"

        def system(self, target, subject, thresholds):
            return target.system(subject.unit, threshold=thresholds[0])

        def measure(self, system, images):
            return system.call_neuron(images)[0]

        def parse_answer(self, text):
            found = answer_sections(text, ("TEXTURE", "LABEL"))
            if found is None:
                return None
            return Answer(found["TEXTURE"], found["LABEL"], {"texture": found["TEXTURE"]})
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from maia_core.loop import prompts
from maia_core.units import LayerInfo, Unit


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
    runs in the main process and has ``describe``'s behaviour here: subclasses override what
    differs.
    """

    #: the name ``--task`` selects
    name: str = ""
    #: how many units one subject has (1, or 2 for a pair); None: any number
    arity: int | None = 1
    #: what the agent is told ``system`` is, in the system prompt
    subject_noun: str = "the unit"
    #: the final answer's form, shown to the agent (in the system prompt and every request)
    answer_format: str = prompts.FINAL_FORMAT
    #: the index's extra columns for this task's rows (see :meth:`index_cells`)
    index_columns: tuple[str, ...] = ()

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

    # -- the main process: before any investigation --------------------------------------
    def check_layer(self, info: LayerInfo, target: str) -> None:
        """Raise :class:`~maia_core.errors.UserError` (one line: the problem and the fix) for a
        layer whose units this task cannot study; ``maia run`` asks before any investigation."""

    # -- briefing the agent -------------------------------------------------------------
    def system_prompt(self, api: str) -> str:
        """The system prompt around ``api`` (the generated reference of system and tools)."""
        return prompts.system_prompt(api, self.answer_format)

    def task_prompt(
        self,
        subject: Subject,
        target: str,
        target_description: str,
        threshold_note: str,
        attrs: dict[str, Any],
    ) -> str:
        """The first user message. ``target`` is the name ``system`` gives the model (never a
        user's file path); ``attrs`` are system's plain attributes (``class_name``...)."""
        return prompts.task_prompt(
            str(subject.unit.index),
            subject.unit.layer,
            target,
            target_description,
            threshold_note,
        )

    # -- the final answer ----------------------------------------------------------------
    def parse_answer(self, text: str) -> Answer | None:
        """The final answer a reply gives, None if it gives none. A reply that attempts an
        answer with parts missing or malformed raises :class:`IncompleteAnswer`, whose
        message (what is missing, and the form) goes back to the agent. Only prose counts:
        code blocks are removed first (see :func:`prose`)."""
        found = parse_final(text)
        return Answer(*found) if found else None

    # -- reports ------------------------------------------------------------------------
    def answer_html(self, row: dict[str, Any]) -> str:
        """HTML (every value escaped) for the structured part of an answer, shown under the
        label in ``report.html``; ``row`` is the unit's ``result.json``. Nothing for describe."""
        return ""

    def index_cells(self, row: dict[str, Any]) -> list[str]:
        """Plain text for :attr:`index_columns`, from a unit's ``result.json``."""
        return []

    def truth_text(self, truth: dict[str, Any]) -> str:
        """A ground truth in a few words, for the report and the index: a synthetic neuron's
        ``or: dog, horse``."""
        concepts = truth.get("concepts")
        names = ", ".join(map(str, concepts)) if isinstance(concepts, list) else str(concepts or "")
        return f"{truth.get('mode', '')}: {names}".strip(": ")

    # -- reflection ---------------------------------------------------------------------
    def predictions(
        self, answer: Answer, attrs: dict[str, Any], k: int
    ) -> tuple[list[str], list[str]]:
        """Reflection's template predictions (no LLM): ``k`` text2image prompts the answer
        predicts to score high, and ``k`` it predicts to score low."""
        label = answer.label or answer.description
        high = [TEMPLATES[i % len(TEMPLATES)].format(label=label) for i in range(k)]
        words = _words(label)
        low = [p for p in CONTROLS if not (_words(p) & words)]
        return high, [low[i % len(low)] for i in range(k)]

    def prediction_request(self, answer: Answer, attrs: dict[str, Any], k: int) -> str:
        """What the evaluator backbone is asked, to write reflection's predictions; its reply
        is read by :func:`parse_predictions`."""
        return PREDICTION_REQUEST.format(
            k=k,
            what="images that should activate the unit strongly",
            not_what="images that should not activate it",
            answer=f"[DESCRIPTION]: {answer.description}\n[LABEL]: {answer.label}",
        )

    # -- evaluation ---------------------------------------------------------------------
    def score(self, scorer: Any, result: dict[str, Any]) -> dict[str, Any] | None:
        """``maia eval``'s hook: this task's scores of a finished unit (``result`` is its
        ``result.json``), or None for the evaluation's own (MAIA's predictive protocol and
        synthetic neurons' ground truth). The ground truth is ``result["ground_truth"]``, as the
        run recorded and signed it. ``scorer`` (``maia_plugins.evaluation.evaluate.Scorer``)
        gives the rest: ``render_and_measure(subject, prompts, seed)`` and
        ``predictive(subject, high, low, seed)`` (rendered with the text2image in use, scored by
        this task's :meth:`measure`), ``attrs(subject)`` (system's plain attributes),
        ``similarity(a, b)`` (MiniLM), ``concepts(text)`` (the scenes matcher), ``n`` and
        ``seed``. Return the record's ``predictive`` and ``ground_truth``."""
        return None


def make_task(name: str, options: dict[str, str] | None = None) -> Task:
    """The task ``--task`` names, built from its ``--task-option`` pairs (a one-line error
    for an unknown task or option)."""
    from maia_core import plugins

    entry, _ = plugins.registry("tasks").resolve(name)
    task = entry.factory(**(options or {}))
    task.name = task.name or name
    return task


def task_named(name: Any) -> Task:
    """The task a ``result.json`` names, built with its defaults, to show or score an answer
    (``describe``'s behaviour when the task is not installed)."""
    try:
        return make_task(str(name or "describe"))
    except Exception:  # noqa: BLE001 - a report must render whatever the results hold
        return Task()


# -- answers ------------------------------------------------------------------------------------

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_MARKER = re.compile(r"^[ \t>#*_-]*\[([A-Za-z][A-Za-z0-9 _-]*)\]\**[ \t]*:?\**[ \t]*", re.MULTILINE)


# describe's answer: [DESCRIPTION] starts a line (after optional markdown emphasis, quoting or a
# heading mark), [LABEL] is the rest of its line.
_DESCRIPTION = re.compile(
    r"^[ \t>#*_]*\[DESCRIPTION\]\**\s*:?\**\s*(.*?)(?=^[ \t>#*_]*\[LABEL\]|\Z)",
    re.DOTALL | re.MULTILINE,
)
_LABEL = re.compile(r"^[ \t>#*_]*\[LABEL\]\**\s*:?\**\s*(.+)", re.MULTILINE)


def parse_final(text: str) -> tuple[str, str] | None:
    """``(description, label)`` if the reply gives describe's final answer, else None.

    Only an answer outside code blocks counts, with ``[DESCRIPTION]`` starting a line: a reply
    that quotes the marker in passing, or prints it from code, is not an answer.
    """
    text = prose(text)
    d = _DESCRIPTION.search(text)
    if not d:
        return None
    description = d.group(1).strip().strip("*").strip()
    label_match = _LABEL.search(text, d.start())
    label = label_match.group(1).strip().strip("*").strip() if label_match else ""
    return description, label


def prose(text: str) -> str:
    """A reply without its code blocks: only an answer outside code counts."""
    return _FENCE.sub("", text)


def answer_sections(text: str, required: Sequence[str]) -> dict[str, str] | None:
    """The ``[NAME]: value`` sections of a reply's prose, each up to the next marker, by
    upper-case name (``[Bias label]`` is ``BIAS LABEL``).

    None when the reply has none of ``required``: it is not an answer. When it has some but
    not all, or one is empty, raises :class:`IncompleteAnswer` naming them."""
    text = prose(text)
    marks = list(_MARKER.finditer(text))
    found: dict[str, str] = {}
    for i, m in enumerate(marks):
        name = " ".join(m.group(1).upper().replace("_", " ").split())
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        value = text[m.end() : end].strip().strip("*").strip()
        found.setdefault(name, value)
    if not any(r in found for r in required):
        return None
    missing = [r for r in required if not found.get(r)]
    if missing:
        raise IncompleteAnswer(
            f"Your final answer has no {' and no '.join(f'[{r}]' for r in missing)}"
            f"{' (or it is empty)' if len(missing) == 1 else ''}."
        )
    return found


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# -- reflection ---------------------------------------------------------------------------------

PREDICTION_REQUEST = (
    "An investigator studied part of a vision model by experiment and gave this answer:\n\n"
    "{answer}\n\n"
    "To test the answer, write {k} prompts for a text-to-image model for {what}, according to "
    "the answer, and {k} prompts for {not_what}. Each prompt describes the content of one "
    "image, and nothing else. Answer in exactly this form, one prompt per line, no numbering:\n"
    "[HIGH]\n<prompt>\n...\n[LOW]\n<prompt>\n..."
)
_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)]|\(\d+\))\s*")
TEMPLATES = (
    "a {label}",
    "a photo of {label}",
    "two {label}",
    "a big {label}",
    "{label} in the center",
    "{label} on a plain white background",
    "a small {label} on the left",
)
CONTROLS = (
    "a chair",
    "a bicycle",
    "a teapot",
    "a violin",
    "a lighthouse",
    "a pineapple",
    "a bus",
    "a clock",
    "a kite",
    "an umbrella",
    "a castle",
    "a sailboat",
    "a lamp",
    "a backpack",
    "a cactus",
    "a mushroom",
    "a helicopter",
    "a snail",
)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2}


def parse_predictions(reply: str, k: int) -> tuple[list[str], list[str]]:
    """The ``[HIGH]`` and ``[LOW]`` prompt lists of an evaluator's reply (at most ``k`` each;
    list marks and quotes removed)."""
    sides: dict[str, list[str]] = {"HIGH": [], "LOW": []}
    side = None
    for line in reply.splitlines():
        mark = re.match(r"^\s*\**\[?(HIGH|LOW)\]?\**\s*:?\s*(.*)$", line, re.IGNORECASE)
        if mark and (
            line.strip().startswith("[") or line.strip().upper().startswith(("HIGH", "LOW"))
        ):
            side = mark.group(1).upper()
            line = mark.group(2)
        line = _LIST_MARK.sub("", line).strip().strip('"').strip()
        if side and line:
            sides[side].append(line)
    return sides["HIGH"][:k], sides["LOW"][:k]


def predictiveness(high: Sequence[float], low: Sequence[float]) -> tuple[float, float]:
    """``(score, threshold)``: the share of images on their predicted side of a threshold
    halfway between the medians of the predicted-high and predicted-low scores.

    A predicted-high image lands when it scores above the threshold, a predicted-low one when
    it scores below it (a tie lands on neither side). The threshold moves with the subject's
    scale, so one rule serves probabilities, activations and differences; an answer that
    does not separate the groups lands about half the images, one that puts them the wrong
    way round fewer."""
    if not high or not low:
        return 0.0, 0.0
    threshold = (statistics.median(high) + statistics.median(low)) / 2
    landed = sum(s > threshold for s in high) + sum(s < threshold for s in low)
    return landed / (len(high) + len(low)), threshold
