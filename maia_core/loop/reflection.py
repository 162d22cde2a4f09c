"""Self-reflection before an answer is accepted (SAIA, Li et al., NeurIPS 2025, §3.2).

After the agent answers, ``k`` prompts the answer predicts to score high and ``k`` it
predicts to score low are written, from the task's templates (``--prompts template``, no LLM)
or by an evaluator backbone (``--evaluator``; a separate request, never the agent's
transcript). The run's text2image renders them in the model host and the task scores them
(``execution.render_and_measure``): no agent code is involved. The answer's
*predictiveness* is the share of images that land on their predicted side of a threshold
halfway between the two groups' medians (:func:`maia_core.task.predictiveness`).

Below ``--reflect-threshold`` the agent gets the check (every prompt, its image, its score
and on which side it landed, the means) and investigates again; this repeats up to
``--reflect N`` times. The answer kept is the most predictive; every check is in
``result.json`` and the report. The agent sees its own checks, never a ground truth.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maia_core.backbone import Backbone, Usage
from maia_core.task import Answer, Task, parse_predictions, predictiveness
from maia_core.transcript import ImagePart, Message, Part, TextPart

DEFAULT_K = 10
DEFAULT_THRESHOLD = 0.9
PROMPT_MODES = ("template", "llm")
# Each image of a check is kept in result.json as a small JPEG, for the report.
THUMB = 96
# Images shown to the agent in a reflection message, at most this size.
SHOWN = 160


@dataclass
class Check:
    """One check of one answer."""

    cycle: int
    high: list[str]
    low: list[str]
    scores: list[float]
    images: list[Any]
    source: str  # "template", "llm", or why the templates stood in
    seed: int
    threshold_required: float
    reply: str | None = None
    usage: Usage | None = None
    predictiveness: float = 0.0
    threshold: float = 0.0
    passed: bool = False
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.predictiveness, self.threshold = predictiveness(self.high_scores, self.low_scores)
        self.passed = self.predictiveness >= self.threshold_required

    @property
    def high_scores(self) -> list[float]:
        return self.scores[: len(self.high)]

    @property
    def low_scores(self) -> list[float]:
        return self.scores[len(self.high) :]

    def record(self, answer: Answer) -> dict[str, Any]:
        """What ``result.json`` keeps of the check: the answer checked, the prompts, every
        score, the threshold and the predictiveness, and a thumbnail of each image."""
        high, low = self.high_scores, self.low_scores
        out: dict[str, Any] = {
            "cycle": self.cycle,
            "label": answer.label,
            "description": answer.description,
            **({"answer": answer.fields} if answer.fields else {}),
            "prompts": self.source,
            "seed": self.seed,
            "high_prompts": self.high,
            "low_prompts": self.low,
            "high_scores": [round(s, 6) for s in high],
            "low_scores": [round(s, 6) for s in low],
            "mean_high": round(sum(high) / len(high), 6) if high else None,
            "mean_low": round(sum(low) / len(low), 6) if low else None,
            "threshold": round(self.threshold, 6),
            "predictiveness": round(self.predictiveness, 4),
            "passed": self.passed,
            "thumbnails": [_thumbnail(img) for img in self.images],
        }
        if self.reply is not None:
            out["evaluator_reply"] = self.reply
        if self.usage is not None:
            out["evaluator_usage"] = self.usage.to_json()
        if self.notes:
            out["notes"] = self.notes
        return out

    def message(self, final_format: str, cycle: int, rounds: int) -> list[Part]:
        """The agent's view of a failed check: prompts, images, scores, sides and means."""
        high, low = self.high_scores, self.low_scores
        landed = round(self.predictiveness * (len(high) + len(low)))
        parts: list[Part] = [
            TextPart(
                f"Self-check {cycle} of your answer (at most {rounds + 1}): {len(high)} prompts "
                f"your answer predicts to score HIGH and {len(low)} it predicts to score LOW "
                "were rendered with text2image and scored. The threshold is halfway between "
                f"the medians of the two groups: {self.threshold:.4g}. {landed} of "
                f"{len(high) + len(low)} images landed on their predicted side: predictiveness "
                f"{self.predictiveness:.2f}, below the {self.threshold_required:.2f} needed.\n"
                f"Predicted HIGH, mean score {_mean(high):.4g}; predicted LOW, mean score "
                f"{_mean(low):.4g}.",
                "note",
            )
        ]
        for side, prompts, scores, images in (
            ("HIGH", self.high, high, self.images[: len(high)]),
            ("LOW", self.low, low, self.images[len(high) :]),
        ):
            for prompt, score, image in zip(prompts, scores, images):
                if score == self.threshold:  # on the threshold: on neither side
                    level, ok = "at the threshold", "NOT as predicted"
                else:
                    level = "high" if score > self.threshold else "low"
                    ok = "as predicted" if level == side.lower() else "NOT as predicted"
                parts.append(ImagePart.from_pil(_shrink(image, SHOWN)))
                parts.append(
                    TextPart(
                        f"predicted {side}: {prompt!r}: score {score:.4g} ({level}, {ok})",
                        "display",
                    )
                )
        parts.append(
            TextPart(
                "Your answer does not predict these scores well enough. Investigate again: "
                "test what the check contradicts, revise your answer, and when you are "
                f"confident reply with no code, exactly in this form:\n{final_format}",
                "note",
            )
        )
        return parts


class Reflection:
    """Checks answers of one investigation by prediction (see the module docstring).

    ``measure(prompts, seed)`` renders the prompts with the run's text2image and scores them
    with the task, in the model host (``execution.render_and_measure`` bound to the subject).
    """

    def __init__(
        self,
        task: Task,
        measure: Callable[[list[str], int], tuple[list[float], list[Any]]],
        *,
        rounds: int,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = DEFAULT_K,
        prompts: str = "template",
        evaluator: Backbone | None = None,
        seed: int = 0,
    ):
        self.task = task
        self.measure = measure
        self.rounds = rounds
        self.threshold = threshold
        self.k = k
        self.prompts = prompts
        self.evaluator = evaluator
        self.seed = seed

    def check(self, answer: Answer, attrs: dict[str, Any], cycle: int) -> Check:
        reply, usage, source, notes = None, None, self.prompts, []
        high: list[str] = []
        low: list[str] = []
        if self.prompts == "llm" and self.evaluator is not None:
            request = self.task.prediction_request(answer, attrs, self.k)
            got = self.evaluator.complete(
                [Message.of("user", request, kind="reflection_request", cycle=cycle)]
            )
            reply, usage = got.text, got.usage
            high, low = parse_predictions(got.text, self.k)
            if not high or not low:
                source = "template (the evaluator's reply had no [HIGH] or no [LOW] prompts)"
        if not high or not low:
            high, low = self.task.predictions(answer, attrs, self.k)
        if not high or not low:
            notes.append("the task wrote no predictions for this answer")
        seed = self.seed + 1000 * cycle
        scores, images = self.measure([*high, *low], seed) if high and low else ([], [])
        return Check(
            cycle,
            list(high),
            list(low),
            [float(s) for s in scores],
            list(images),
            source,
            seed,
            self.threshold,
            reply,
            usage,
            notes=notes,
        )

    def summary(self, cycles: list[dict[str, Any]], kept: int) -> dict[str, Any]:
        """``result.json``'s ``reflection``: the settings, every cycle, the answer kept."""
        return {
            "rounds": self.rounds,
            "threshold": self.threshold,
            "k": self.k,
            "prompts": self.prompts,
            "evaluator": getattr(self.evaluator, "name", None) if self.prompts == "llm" else None,
            "rule": "threshold halfway between the medians of the predicted-high and "
            "predicted-low scores; predictiveness = share of images on their predicted side",
            "kept": kept + 1,
            "cycles": cycles,
        }


def subject_seed(base: int, subject: Any) -> int:
    """One seed per subject, so every backbone's answers are checked on the same images."""
    key = f"{base}/{subject}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFF


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _shrink(image: Any, side: int) -> Any:
    from maia_core.images import resize_longest

    return resize_longest(image.convert("RGB"), side)


def _thumbnail(image: Any) -> str:
    buf = io.BytesIO()
    _shrink(image, THUMB).save(buf, format="JPEG", quality=75)
    return base64.b64encode(buf.getvalue()).decode("ascii")
