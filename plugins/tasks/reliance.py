"""``reliance``: what a classifier's class score relies on beyond the object itself.

MAIA §5.2 (biases of ResNet-152's classes) and SAIA (Li et al., NeurIPS 2025). The unit is one
class of a classifier (``--units output=340``): an ImageNet head (timm, torchvision,
efficientnet_lite0), a transformers head, a ``python:`` model with class names, or a
planted-reliance model (``reliance:offline``). The agent finds the visual attributes the
class's score relies on (colour, material, background, co-occurring objects, size, position,
count, pose, state, image effects) and answers::

    [BIAS DESCRIPTION]: <what the score relies on, with the evidence>
    [BIAS LABEL]: <one line>
    [RELIANCE]:
    category: background; high: grass; low: gravel; scores: 0.97 vs 0.10

one ``[RELIANCE]`` line per claim (with ``combine: and`` or ``combine: or`` for two), which
evaluation reads. A malformed answer goes back to the agent with what is missing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.loop import prompts
from maia_core.options import reject_unknown
from maia_core.task import (
    PREDICTION_REQUEST,
    Answer,
    IncompleteAnswer,
    Subject,
    Task,
    answer_sections,
    first_line,
)
from maia_core.units import LayerInfo
from maia_plugins.tasks import reliance_words as words


@hookimpl
def register_tasks(register):
    register(
        "reliance",
        RelianceTask,
        help="Find what a classifier's class relies on beyond its object (MAIA §5.2, SAIA)",
    )


ANSWER_FORMAT = (
    "[BIAS DESCRIPTION]: <what the class's score relies on beyond the object itself, and the "
    "scores that show it>\n"
    "[BIAS LABEL]: <one line, a few words>\n"
    "[RELIANCE]:\n"
    "category: <category>; high: <value that scores high>; low: <value that scores low>; "
    "scores: <mean score of high> vs <mean score of low>\n"
    "(one line per reliance found; with two, add a line 'combine: and' if the score needs "
    "both, 'combine: or' if either is enough; if the score relies on nothing but the object, "
    "one line: 'category: none')"
)
ROLE = (
    "You are an interpretability researcher auditing one class of an image classifier. Your "
    "job is to find out, by experiment, which visual attributes the class's score relies on "
    "beyond the object itself (biases, spurious features, failure modes), and to state them "
    "precisely with the scores that show them."
)
GUIDANCE = """- Render the class's object with text2image in controlled variations and score them with system.call_classifier. Change one attribute at a time: the object's colour, its material, the background (setting, or a plain colour), its size, its position, how many there are, other objects with it and where they are, its pose or orientation (flipped, rotated), its state, and whole-image effects (greyscale, blur, noise, a corner patch, a watermark).
- Use several images per variation (text2image draws different scenes for different seeds) and compare mean scores: a reliance changes the score for the same object.
- Confirm a reliance causally: edit the same images with tools.edit_images to change only that attribute, and measure the change.
- A class may rely on two attributes at once (both needed: and) or on either (or): test them together and apart.
- The categories of the [RELIANCE] block are: {categories}.""".format(
    categories="; ".join(f"{k} ({v})" for k, v in words.ANSWER_CATEGORIES.items())
)
REQUIRED = ("BIAS DESCRIPTION", "BIAS LABEL", "RELIANCE")
COMBINE = ("and", "or")
_PAIR = re.compile(r"^\s*([A-Za-z _-]+?)\s*[:=]\s*(.*?)\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?", re.IGNORECASE)
_KEYS = {
    "category": "category",
    "cat": "category",
    "high": "high",
    "high value": "high",
    "scores high": "high",
    "low": "low",
    "low value": "low",
    "scores low": "low",
    "scores": "scores",
    "score": "scores",
    "evidence": "scores",
    "combine": "combine",
    "mode": "combine",
}
CLAIM_FORM = "category: background; high: grass; low: gravel; scores: 0.97 vs 0.10"


class RelianceTask(Task):
    name = "reliance"
    arity = 1
    subject_noun = "the class under study (one output class of an image classifier)"
    answer_format = ANSWER_FORMAT
    index_columns = ("Reliance", "Predictiveness")

    def __init__(self, **options: str):
        reject_unknown(options, "Task reliance", ())

    # -- the host side ------------------------------------------------------------------
    def system(self, target: Any, subject: Subject, thresholds: Sequence[float | None]) -> Any:
        unit = subject.unit
        self.check_layer(target.require_layer(unit.layer), getattr(target, "name", ""))
        return ClassUnderStudy(target.system(unit, threshold=None), unit)

    def measure(self, system: Any, images: list[Any]) -> list[float]:
        return [float(s) for s in system.call_classifier(images)[0]]

    def check_layer(self, info: LayerInfo, target: str) -> None:
        if info.kind != "classifier" and info.name != "output":
            raise UserError(
                f"--task reliance studies a classifier's classes, and layer {info.name!r} of "
                f"{target} is a {info.kind} layer; give its classes, e.g. --units output=340 "
                "(maia layers TARGET lists the layers)."
            )

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
        name = attrs.get("class_name") or f"class {subject.unit.index}"
        return (
            f"Audit class {subject.unit.index} ({name!r}) of layer {subject.unit.layer} of the "
            f"classifier {target} ({target_description}). Find which visual attributes its "
            f"score relies on beyond the {name} itself. Begin with your first experiment."
        )

    # -- the answer -----------------------------------------------------------------------
    def parse_answer(self, text: str) -> Answer | None:
        found = answer_sections(text, REQUIRED)
        if found is None:
            if answer_sections(text, ("DESCRIPTION", "LABEL")) is not None:
                raise IncompleteAnswer(
                    "This task's final answer has [BIAS DESCRIPTION], [BIAS LABEL] and "
                    "[RELIANCE], not [DESCRIPTION] and [LABEL]."
                )
            return None
        claims, combine = parse_reliance(found["RELIANCE"])
        label = first_line(found["BIAS LABEL"])
        return Answer(
            found["BIAS DESCRIPTION"],
            label,
            {"claims": claims, "combine": combine},
        )

    # -- reports --------------------------------------------------------------------------
    def answer_html(self, row: dict[str, Any]) -> str:
        answer = row.get("answer") if isinstance(row.get("answer"), dict) else {}
        claims = [c for c in answer.get("claims") or () if isinstance(c, dict)]
        if not claims:
            return '<div class="prose"><b>Reliance:</b> none found</div>'
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    c.get("category"),
                    c.get("high"),
                    c.get("low"),
                    _fmt_scores(c.get("scores")),
                )
            )
            + "</tr>"
            for c in claims
        )
        combine = answer.get("combine")
        joined = f" (combined with {html.escape(str(combine))})" if combine in COMBINE else ""
        return (
            f'<div class="prose"><b>Reliance</b>{joined}:</div><table class="claims"><thead><tr>'
            "<th>Category</th><th>Scores high</th><th>Scores low</th><th>Measured</th></tr>"
            f"</thead><tbody>{body}</tbody></table>"
        )

    def index_cells(self, row: dict[str, Any]) -> list[str]:
        answer = row.get("answer") if isinstance(row.get("answer"), dict) else {}
        claims = [c for c in answer.get("claims") or () if isinstance(c, dict)]
        joiner = f" {answer.get('combine')} " if answer.get("combine") in COMBINE else "; "
        said = joiner.join(f"{c.get('category')}: {c.get('high')} > {c.get('low')}" for c in claims)
        reflection = row.get("reflection") if isinstance(row.get("reflection"), dict) else {}
        kept = next(
            (
                c
                for c in reflection.get("cycles") or ()
                if isinstance(c, dict) and c.get("cycle") == reflection.get("kept")
            ),
            {},
        )
        pred = kept.get("predictiveness")
        return [said or "none", f"{pred:.2f}" if isinstance(pred, (int, float)) else ""]

    def truth_text(self, truth: dict[str, Any]) -> str:
        label = truth.get("label") or f"{truth.get('category')}: {truth.get('value')}"
        alpha = truth.get("alpha")
        return f"{label} (alpha {alpha})" if alpha is not None else str(label)

    # -- reflection -----------------------------------------------------------------------
    def predictions(
        self, answer: Answer, attrs: dict[str, Any], k: int
    ) -> tuple[list[str], list[str]]:
        obj = str(attrs.get("class_name") or "object")
        claims = [c for c in answer.fields.get("claims") or () if c.get("category") != "none"]
        return claim_prompts(obj, claims, answer.fields.get("combine", "single"), k)

    def prediction_request(self, answer: Answer, attrs: dict[str, Any], k: int) -> str:
        obj = str(attrs.get("class_name") or "the object")
        claims = "\n".join(
            f"category: {c.get('category')}; high: {c.get('high')}; low: {c.get('low')}"
            for c in answer.fields.get("claims") or ()
        )
        return PREDICTION_REQUEST.format(
            k=k,
            what=f"images of a {obj} that the classifier's {obj!r} class should score HIGH",
            not_what=f"images of a {obj} it should score LOW (every image shows a {obj})",
            answer=(
                f"[BIAS DESCRIPTION]: {answer.description}\n[BIAS LABEL]: {answer.label}\n"
                f"[RELIANCE]:\n{claims}"
            ),
        )

    # -- evaluation -----------------------------------------------------------------------
    def score(self, scorer: Any, result: dict[str, Any]) -> dict[str, Any] | None:
        from maia_plugins.tasks.reliance_scoring import score_reliance

        return score_reliance(scorer, result)


class ClassUnderStudy:
    """The class under study: one output class of an image classifier. Score images for it
    with ``call_classifier``; ``class_name`` is what the class stands for.

    This is SAIA's ``call_classifier(images) -> (scores, images)``. A target whose own system
    has a ``call_classifier`` of another shape (maia's ImageNet heads return the top classes)
    is wrapped: its top classes are ``top_classes(images)``."""

    def __init__(self, inner: Any, unit: Any):
        self._inner = inner
        self.unit = unit
        self.layer = unit.layer
        self.class_index = unit.index
        self.class_name = str(getattr(inner, "class_name", None) or f"class {unit.index}")
        self.model_name = str(getattr(inner, "model_name", "") or "")
        self.threshold_source = "whole image (a class has no spatial map, so images are not masked)"

    def call_classifier(self, images: list[Any]) -> tuple[list[float], list[Any]]:
        """Score each image for the class under study.

        Args:
            images: a list of PIL images (a single image is also accepted).

        Returns:
            (scores, images). scores[i] is the classifier's score of this class for image i
            (its probability, from 0 to 1, for a softmax classifier). images[i] is image i as
            the model sees it (resized and center-cropped).

        Example:
            images = tools.text2image(["a zebra on grass", "a zebra on sand"])
            scores, seen = system.call_classifier(images)
            for s, img in zip(scores, seen):
                tools.display(img, f"score {s:.3f}")
        """
        scores, seen = self._inner.call_neuron(images)
        return [float(s) for s in scores], seen

    def top_classes(self, images: list[Any], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The classes the classifier predicts for each image, most probable first.

        Args:
            images: a list of PIL images.
            top_k: how many classes per image.

        Returns:
            top[i]: the top_k (class name, score) pairs for image i.

        Example:
            print(system.top_classes([img])[0])
        """
        call = getattr(self._inner, "call_classifier", None)
        if call is None:
            raise UserError("This classifier has no class names: top_classes is not available.")
        return call(images, top_k=top_k)[1]

    def __repr__(self) -> str:
        return f"<system: class {self.class_index} ({self.class_name}) of {self.model_name}>"


# -- parsing the [RELIANCE] block -----------------------------------------------------------------


def parse_reliance(block: str) -> tuple[list[dict[str, Any]], str]:
    """The claims of a ``[RELIANCE]`` block and how they combine (``single``, ``and``, ``or``,
    or ``none`` when the answer says the score relies on nothing but the object). Raises
    :class:`IncompleteAnswer` naming what is missing or malformed."""
    claims: list[dict[str, Any]] = []
    combine = None
    for raw in block.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*", "", raw).strip().strip("`")
        if not line or line.startswith("("):
            continue
        fields: dict[str, str] = {}
        for piece in re.split(r"[;|]", line):
            m = _PAIR.match(piece)
            if m and m.group(1).strip().lower() in _KEYS:
                fields[_KEYS[m.group(1).strip().lower()]] = m.group(2).strip()
        if set(fields) == {"combine"}:
            combine = fields["combine"].lower().strip(". ")
            if combine not in COMBINE:
                raise IncompleteAnswer(
                    f"In [RELIANCE], 'combine' is 'and' (both needed) or 'or' (either is enough), "
                    f"not {fields['combine']!r}."
                )
            continue
        if not fields:
            raise IncompleteAnswer(
                f"In [RELIANCE], the line {line[:80]!r} is not a claim; write one line per "
                f"reliance, like: {CLAIM_FORM}."
            )
        cat_text = fields.get("category", "")
        if cat_text.lower().strip(". ") in ("none", "nothing"):
            claims.append({"category": "none"})
            continue
        cat = words.category(cat_text) if cat_text else None
        if cat is None:
            raise IncompleteAnswer(
                f"In [RELIANCE], {'the category ' + repr(cat_text) + ' is not one of' if cat_text else 'a claim names no category; use one of'}: "
                f"{', '.join(words.ANSWER_CATEGORIES)} (or 'category: none')."
            )
        missing = [k for k in ("high", "low", "scores") if not fields.get(k)]
        if missing:
            raise IncompleteAnswer(
                f"In [RELIANCE], the {cat} claim has no {' and no '.join(repr(k) for k in missing)}; "
                f"each line names the category, the value that scores high, the value that scores "
                f"low and the measured scores, like: {CLAIM_FORM}."
            )
        numbers = [float(x) for x in _NUMBER.findall(fields["scores"])]
        if len(numbers) < 2:
            raise IncompleteAnswer(
                f"In [RELIANCE], the {cat} claim's scores must be two measured numbers, the mean "
                f"score of the high value and of the low value, like 'scores: 0.97 vs 0.10', not "
                f"{fields['scores']!r}."
            )
        claims.append(
            {
                "category": cat,
                "high": words.value(cat, fields["high"]),
                "low": words.value(cat, fields["low"]),
                "scores": numbers[:2],
                "said": {"high": fields["high"], "low": fields["low"]},
            }
        )
    real = [c for c in claims if c["category"] != "none"]
    if not claims:
        raise IncompleteAnswer(
            f"[RELIANCE] has no claim; write one line per reliance, like: {CLAIM_FORM} "
            "(or 'category: none')."
        )
    if len(real) > 1 and combine is None:
        raise IncompleteAnswer(
            f"[RELIANCE] has {len(real)} claims; add a line 'combine: and' if the score needs all "
            "of them, or 'combine: or' if any one is enough."
        )
    if not real:
        return [], "none"
    return real, combine if len(real) > 1 else "single"


def _fmt_scores(scores: Any) -> str:
    if isinstance(scores, list) and len(scores) >= 2:
        try:
            return f"{float(scores[0]):.3g} vs {float(scores[1]):.3g}"
        except (TypeError, ValueError):
            pass
    return str(scores or "")


# -- predictions from claims ---------------------------------------------------------------------


def claim_prompts(
    obj: str, claims: list[dict[str, Any]], combine: str, k: int
) -> tuple[list[str], list[str]]:
    """``k`` scenes prompts the claims predict high and ``k`` they predict low, each showing the
    object. One claim: its high value, and its low value with the category's other values.
    ``and``: every high value at once, against one (or every) claim's low values. ``or``: any
    one high value, against every claim's low value at once."""
    claims = [c for c in claims if c.get("category") in words.ANSWER_CATEGORIES]
    if not claims:
        return [], []
    alts = [words.alternatives(c["category"], c["high"], c.get("low", "")) for c in claims]
    alts = [a or [c["high"]] for a, c in zip(alts, claims)]
    if combine == "or":
        highs = [{c["category"]: c["high"]} for c in claims]
        lows = [
            {c["category"]: a[i % len(a)] for c, a in zip(claims, alts)}
            for i in range(max(len(a) for a in alts))
        ]
    else:
        highs = [{c["category"]: c["high"] for c in claims}]
        per_claim = []
        for c, a in zip(claims, alts):
            per_claim.append(
                [{**{d["category"]: d["high"] for d in claims}, c["category"]: alt} for alt in a]
            )
        # round-robin over the claims, so each is tested
        lows = [
            p[i] for i in range(max(len(p) for p in per_claim)) for p in per_claim if i < len(p)
        ]
    high = [words.scene_prompt(obj, highs[i % len(highs)]) for i in range(k)] if highs else []
    # The stated low value first, then the others in turn.
    low = [words.scene_prompt(obj, lows[i % len(lows)]) for i in range(k)] if lows else []
    return high, low
