"""``maia eval``: score every finished unit under results folders, and write ``eval.json``.

For each unit (a ``result.json`` that says ``completed``):

- **Predictive evaluation**, MAIA's protocol: ``n`` prompts for images that should drive the
  unit and ``n`` for images that should not are written from its label, by an evaluator
  backbone (``--evaluator``; MAIA's instructions) or from templates (``--prompts template``,
  no LLM). The text2image in use renders them, the unit's activations are measured, and the
  means, CoSy's AUC and normalised mean difference, and a one-sided Mann-Whitney p-value are
  kept with the prompts and the seed, so the evaluation can be replayed.
- **Ground truth**, where the target knows it (synthetic neurons): exact concept match (the
  label mapped to concepts by the scenes text2image's own matcher), label-truth similarity
  (MiniLM cosine, as CLIP-Dissect measures it) and a detection score on rendered scenes (F1,
  IoU and AUPRC between the unit firing and the labelled concepts' presence).

No agent code runs here, so the models are loaded in this process (one model host per target),
and the evaluator backbone is called from it. Each unit's ``eval.json`` is written atomically;
a re-run skips units that have one (``--force`` redoes them), and ``--chunk I/N`` splits the
units over machines.

A unit that cannot be scored (a ``result.json`` maia did not write, a target, option, layer or
unit the evaluator cannot load, a folder whose name is not text) does not stop the others: it
is a :class:`Skipped` (its folder and the reason), handed to ``on_skip``, and its record says
``"skipped"``. Checks that make a unit unscorable raise :class:`CannotScore`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maia_core.errors import UserError, check_count
from maia_core.files import (
    atomic_write_json,
    check_writable,
    no_space,
    shown_path,
    text_name,
)
from maia_core.loop.investigation import extract_code
from maia_core.loop.results import read_result
from maia_core.units import Unit, chunk, expand, parse_chunk

DEFAULT_N = 7
# Prompts per side: each is an image rendered and measured, for every unit.
MAX_N = 100
# The evaluator's instructions, after MAIA's evaluation/eval.py (its protocol, our wording).
POSITIVE = (
    "You will receive a label describing the concept or concepts that a neuron of a vision "
    "model detects. Write a list of {n} prompts for a text-to-image model, to generate images "
    "that should activate the neuron as much as possible. Each prompt describes the content of "
    "one image, and nothing else. If the label names several concepts (for example joined by "
    "'or'), spread the prompts over them. Write one prompt per line, with no numbering.\n\n"
    "Label: {label}"
)
NEGATIVE = (
    "You will receive a label describing the concept or concepts that a neuron of a vision "
    "model detects. Write a list of {n} prompts for a text-to-image model, to generate images "
    "that should NOT activate the neuron, because their content is unrelated to the label. "
    "Do not use any word or content related to the label. Each prompt describes the content "
    "of one image, and nothing else. Write one prompt per line, with no numbering.\n\n"
    "Label: {label}"
)
TEMPLATES = (
    "{label}",
    "a {label}",
    "a photo of {label}",
    "{label} in the center",
    "a big {label}",
    "two {label}",
    "{label} on a plain white background",
)
# Controls for the template negatives when the text2image has no vocabulary of its own.
COMMON_OBJECTS = (
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
    "a guitar",
    "a backpack",
    "a cactus",
    "a mushroom",
    "a helicopter",
    "a snail",
    "a cupcake",
)
# Below this MiniLM similarity to the label, a vocabulary concept is unrelated to it.
UNRELATED = 0.3
_LIST_MARK = re.compile(r"^\s*(?:[-*•]+|\d+[.)]|\(\d+\))\s*")


# -- finding the units -------------------------------------------------------------------------


@dataclass
class Skipped:
    """A unit that could not be scored: its folder and why (one line each, counted as not
    scored; ``maia eval`` exits 1 when there is any)."""

    unit_dir: Path
    reason: str

    def line(self) -> str:
        return f"maia eval: skipped {shown_path(self.unit_dir)}: {self.reason}"


class CannotScore(Exception):
    """This unit cannot be scored; the message says why. The other units are scored."""


def check_folders(folders: Iterable[str | Path]) -> list[Path]:
    """The results folders as paths; a one-line error for one that is missing or a file."""
    checked = [Path(folder) for folder in folders]
    for folder in checked:
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise UserError(
                f"Results folder {shown_path(folder)!r} {what}; give the folder maia run wrote (e.g. results/)."
            )
    return checked


def find_units(
    folders: Iterable[str | Path],
    on_skip: Callable[[Skipped], None] | None = None,
    key: bytes | None = None,
) -> list[tuple[Path, dict[str, Any]]]:
    """Every unit folder with a ``result.json`` under ``folders``, sorted, with its result.
    A folder whose name is not text, or whose ``result.json`` maia did not write (no valid
    signature by ``key``, the user's own by default), is handed to ``on_skip``."""
    from maia_core import signing

    found: dict[Path, dict[str, Any]] = {}
    skipped: dict[Path, Skipped] = {}
    folders = check_folders(folders)
    for folder in folders:
        for path in folder.rglob("result.json"):
            unit_dir = path.parent
            result = read_result(unit_dir)
            if not text_name(unit_dir.relative_to(folder)):
                reason = "its name is not text (undecodable bytes or a control character); rename the folder to score it"
            elif result is None:
                reason = "its result.json is not a JSON object maia wrote"
            elif not signing.verified(result, key):
                reason = (
                    "its result.json was not written by maia run here (no valid signature): it "
                    "is treated as data and not scored; for results written under another "
                    "account, pass that account's key with --results-key"
                )
            elif not (
                isinstance(result.get("unit"), int)
                and not isinstance(result.get("unit"), bool)
                and isinstance(result.get("layer"), str)
            ):
                reason = "its result.json names no layer and unit"
            else:
                found[unit_dir.resolve()] = result
                continue
            skipped.setdefault(unit_dir.resolve(), Skipped(unit_dir, reason))
    for skip in skipped.values():
        if on_skip is not None:
            on_skip(skip)
    if not found and not skipped:
        raise UserError(f"No results under {', '.join(map(str, folders))}: run maia run first.")
    return sorted(
        found.items(),
        key=lambda kv: (
            str(kv[1].get("backbone")),
            str(kv[1].get("target")),
            kv[1]["layer"],
            kv[1]["unit"],
        ),
    )


# -- prompts -----------------------------------------------------------------------------------


def parse_prompts(reply: str, n: int) -> list[str]:
    """The prompts of an evaluator's reply: one per line, list marks and quotes removed."""
    out = []
    for line in reply.splitlines():
        line = _LIST_MARK.sub("", line).strip().strip('"').strip()
        if line and not line.endswith(":"):
            out.append(line)
    return out[:n]


def llm_prompts(backbone: Any, label: str, n: int) -> tuple[list[str], list[str], dict[str, Any]]:
    """Positive and negative prompts written by the evaluator backbone, and what it cost."""
    from maia_core.backbone import Usage
    from maia_core.transcript import Message

    prompts, usage = [], Usage()
    for instructions in (POSITIVE, NEGATIVE):
        reply = backbone.complete([Message.of("user", instructions.format(n=n, label=label))])
        usage = usage + reply.usage
        parsed = parse_prompts(reply.text, n)
        if not parsed:
            raise CannotScore(
                f"the evaluator answered no prompts for its label {label!r}: {reply.text[:200]!r}"
            )
        prompts.append(parsed)
    return prompts[0], prompts[1], usage.to_json()


def template_prompts(
    label: str, n: int, controls: list[str], seed: int
) -> tuple[list[str], list[str]]:
    """Positives from templates around the label; negatives from ``controls`` (prompts of
    concepts unrelated to it), chosen by ``seed``."""
    import random

    positives = [TEMPLATES[i % len(TEMPLATES)].format(label=label) for i in range(n)]
    rng = random.Random(seed)
    negatives = rng.sample(controls, min(n, len(controls)))
    return positives, negatives


def unit_seed(base: int, result: dict[str, Any]) -> int:
    """One seed per unit, the same whichever backbone labelled it, so backbones are compared
    on the same negatives and the same noise."""
    key = f"{base}/{result.get('target')}/{result['layer']}/{result['unit']}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFF


# -- the evaluator -----------------------------------------------------------------------------


class Evaluator:
    """Scores units of one target with one model host (loaded in this process)."""

    def __init__(
        self,
        target: str,
        target_options: dict[str, str],
        bases: list[list[str]],
        *,
        text2image: str | None,
        tool_options: dict[str, dict[str, str]],
        device: str,
        precision: str,
        task: str = "describe",
    ):
        from maia_core.execution.host import ModelHost
        from maia_core.execution.specs import WorldSpec

        tools = [f"text2image={text2image}" if text2image else "text2image"]
        self.host = ModelHost(
            WorldSpec(
                target=target,
                target_options=dict(target_options),
                bases=[tuple(b) for b in bases],
                tools=tools,
                tool_options=tool_options,
                device=device,
                precision=precision,
                task=task,
            )
        )
        self.t2i = self.host.tool_objects["text2image"]
        self.implementation = self.host.implementations["text2image"]
        self._scenes: Any = None

    def scenes(self) -> Any:
        """The scenes text2image (for ground truth: its matcher and its annotated renders)."""
        if self.implementation == "scenes":
            return self.t2i
        if self._scenes is None:
            from maia_plugins.tools.scenes_tools import ScenesText2Image

            self._scenes = ScenesText2Image(self.host.ctx, size="224")
        return self._scenes

    def controls(self, label: str) -> list[str]:
        """Prompts of concepts unrelated to ``label``, for template negatives."""
        language = getattr(self.t2i, "language", None)
        if language is None:
            candidates = [(p, p.split(" ", 1)[1]) for p in COMMON_OBJECTS]
        else:
            candidates = [
                (f"a {c.name}", c.name)
                for c in language.vocabulary()
                if c.kind == "object" and c.via == "label"
            ]
        sims = similarities(label, [name for _, name in candidates])
        matched = set(label_concepts(self.scenes().language, label))
        return [
            p
            for (p, name), s in zip(candidates, sims)
            if s < UNRELATED and name.lower() not in matched
        ]

    def check(self, unit: Unit) -> None:
        """A layer the target has, and a unit in its range, as ``maia run`` checks them."""
        target = self.host.target
        try:
            info = target.require_layer(unit.layer)
            expand({unit.layer: [unit.index]}, {unit.layer: info}, target.name)
        except UserError as exc:
            raise CannotScore(exc.message) from None

    def measure(self, unit: Unit, images: list[Any]) -> tuple[list[float], list[Any]]:
        session = self.host.open(unit, None)
        acts, masked = session.system.call_neuron(images)
        return [float(a) for a in acts], masked

    def predictive(
        self, unit: Unit, label: str, *, prompts: str, n: int, seed: int, evaluator: Any
    ) -> dict[str, Any]:
        from maia_core.task import predictiveness
        from maia_plugins.evaluation.metrics import predictive_scores

        usage = None
        if prompts == "llm":
            positives, negatives, usage = llm_prompts(evaluator, label, n)
        else:
            positives, negatives = template_prompts(label, n, self.controls(label), seed)
        images, notes = self.t2i.generate(positives + negatives, seed)
        acts, masked = self.measure(unit, images)
        pos, neg = acts[: len(positives)], acts[len(positives) :]
        out = {
            "prompts": prompts,
            "n": n,
            "text2image": self.implementation,
            "seed": seed,
            "positive_prompts": positives,
            "negative_prompts": negatives,
            "positive": pos,
            "negative": neg,
            **predictive_scores(pos, neg),
        }
        out["predictiveness"], out["threshold"] = predictiveness(pos, neg)
        if notes:
            out["notes"] = notes
        if usage is not None:
            out["evaluator_usage"] = usage
        best_pos = max(range(len(pos)), key=pos.__getitem__) if pos else None
        best_neg = max(range(len(neg)), key=neg.__getitem__) if neg else None
        out["_thumbnails"] = {
            "positive": masked[best_pos] if best_pos is not None else None,
            "negative": masked[len(positives) + best_neg] if best_neg is not None else None,
        }
        return out

    def ground_truth(
        self, unit: Unit, label: str, truth: dict[str, Any], seed: int
    ) -> dict[str, Any]:
        """The label against the unit's known concepts."""
        from maia_plugins.evaluation.metrics import detection_scores

        scenes = self.scenes()
        concepts = [str(c).lower() for c in truth.get("concepts") or []]
        matched = label_concepts(scenes.language, label)
        out: dict[str, Any] = {
            "mode": truth.get("mode"),
            "concepts": concepts,
            "matched": matched,
            "exact": bool(matched) and set(matched) == set(concepts),
            "similarity": similarities(" ".join(concepts), [label])[0],
        }
        # Detection: scenes showing the true concepts, the labelled ones, both, and controls;
        # does the unit fire exactly where the labelled concepts are?
        kinds = {c.name.lower(): c.kind for c in scenes.language.vocabulary()}
        prompts = []
        for name in dict.fromkeys(concepts + matched):
            prompts += [concept_prompt(name, kinds.get(name, "object"))] * 3
        if len(concepts) > 1:
            prompts += [together(concepts, kinds)] * 3
        if len(matched) > 1:
            prompts += [together(matched, kinds)] * 3
        prompts += self.controls(label)[:12]
        rendered = scenes.render(prompts, seed)
        acts, _ = self.measure(unit, [img for img, _ in rendered])
        need_all = " and " in f" {label.lower()} "
        presence = []
        for _, annotation in rendered:
            present = set(annotation.get("concepts") or []) | set(annotation.get("colors") or [])
            present.add(str((annotation.get("background") or {}).get("label") or ""))
            hits = [m in present for m in matched]
            presence.append(bool(hits) and (all(hits) if need_all else any(hits)))
        out["detection"] = detection_scores(acts, presence)
        out["detection"]["prompts"] = prompts
        return out

    def close(self) -> None:
        self.host.close()


class Scorer:
    """What a task's ``score`` hook gets (see :meth:`maia_core.task.Task.score`): the run's
    target, its task and the text2image, loaded here, and the evaluation's settings. Nothing
    here reads a results file: the task gets the unit's signed ``result.json`` beside it."""

    def __init__(self, ev: Evaluator, *, n: int, seed: int, prompts: str, evaluator: Any):
        self.ev = ev
        self.n = n  # prompts per side
        self.seed = seed  # this unit's seed (the same for every backbone)
        self.prompts = prompts  # "template" or "llm"
        self.evaluator = evaluator  # the evaluator backbone, with --evaluator

    def render_and_measure(
        self, subject: Any, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        """Render ``prompts`` with the text2image in use and score them with the run's task."""
        return self.ev.host.render_and_measure(subject, list(prompts), int(seed))

    def attrs(self, subject: Any) -> dict[str, Any]:
        """``system``'s plain attributes for ``subject`` (a class's ``class_name``...)."""
        return dict(self.ev.host.open(subject, None).setup().attrs)

    def similarity(self, a: str, b: str) -> float:
        """MiniLM cosine similarity of two texts."""
        return similarities(a, [b])[0]

    def concepts(self, text: str) -> list[str]:
        """The scenes concepts a text names, each part of a compound matched on its own."""
        return label_concepts(self.ev.scenes().language, text)

    def predictive(
        self, subject: Any, high: list[str], low: list[str], seed: int
    ) -> dict[str, Any]:
        """Prompts predicted high and low, rendered and scored: MAIA's and CoSy's scores,
        the predictiveness (the share of images on their predicted side of the midpoint of
        the two medians), and the best image of each side (``_thumbnails``)."""
        from maia_core.task import predictiveness
        from maia_plugins.evaluation.metrics import predictive_scores

        scores, images = self.render_and_measure(subject, [*high, *low], seed)
        pos, neg = scores[: len(high)], scores[len(high) :]
        share, threshold = predictiveness(pos, neg)

        def best(xs: list[float], offset: int) -> Any:
            return images[offset + max(range(len(xs)), key=xs.__getitem__)] if xs else None

        return {
            "prompts": "template",
            "n": len(high),
            "text2image": self.ev.implementation,
            "seed": seed,
            "positive_prompts": list(high),
            "negative_prompts": list(low),
            "positive": pos,
            "negative": neg,
            **predictive_scores(pos, neg),
            "predictiveness": share,
            "threshold": threshold,
            "_thumbnails": {"positive": best(pos, 0), "negative": best(neg, len(pos))},
        }


def reflect_rounds(result: dict[str, Any]) -> int:
    """The ``--reflect N`` a unit was studied with (0 without reflection)."""
    reflection = result.get("reflection")
    rounds = reflection.get("rounds") if isinstance(reflection, dict) else 0
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else 0


_JOINERS = re.compile(
    r",|;|\bor\b|\band\b|\bas well as\b|\btogether with\b|\bwith\b", re.IGNORECASE
)


def label_concepts(language: Any, label: str) -> list[str]:
    """The concepts a label names, by the text2image matcher, each part of a compound label
    ("red or blue", "a dog and grass") matched on its own so no part is lost."""
    names: list[str] = []
    for part in [label, *_JOINERS.split(label)]:
        part = part.strip()
        if part:
            names += [c.name.lower() for c in language.match(part)]
    return list(dict.fromkeys(names))


def concept_prompt(name: str, kind: str) -> str:
    """A scenes prompt that shows one concept."""
    if kind == "color":
        return f"a plain {name} background"
    if kind == "background":
        return name
    return f"a {name}"


def together(names: list[str], kinds: dict[str, str]) -> str:
    objects = [n for n in names if kinds.get(n, "object") == "object"]
    colours = [n for n in names if kinds.get(n) == "color"]
    backgrounds = [n for n in names if kinds.get(n) == "background"]
    text = " and ".join(f"a {o}" for o in objects) or "a ball"
    if backgrounds:
        text += f" on {backgrounds[0]}"
    elif colours:
        text += f" on a plain {colours[0]} background"
        if len(colours) > 1:
            text = (
                f"a {colours[1]} {text[2:]}"
                if objects
                else f"a {colours[1]} ball on a plain {colours[0]} background"
            )
    return text


_encoder: Any = None


def similarities(text: str, others: list[str]) -> list[float]:
    """MiniLM cosine similarity of ``text`` to each of ``others`` (all-MiniLM-L6-v2, offline)."""
    global _encoder
    if not others:
        return []
    if _encoder is None:
        from maia_plugins.tools.scene_language import default_encoder

        _encoder = default_encoder()
    vectors = _encoder.encode([text, *others])
    return [float(v) for v in vectors[1:] @ vectors[0]]


def tool_usage(unit_dir: Path) -> dict[str, int]:
    """Calls per tool in the agent's code (``tools.<name>(``), from its transcript."""
    try:
        history = json.loads((unit_dir / "history.json").read_text())
    except (OSError, ValueError):
        return {}
    counts: dict[str, int] = {}
    for message in history.get("messages") or ():
        if message.get("role") != "assistant":
            continue
        text = "\n".join(
            p.get("text", "") for p in message.get("parts") or () if isinstance(p, dict)
        )
        for code in extract_code(text):
            for name in re.findall(r"\btools\.(\w+)\s*\(", code):
                counts[name] = counts.get(name, 0) + 1
    return counts


def thumbnail(image: Any, side: int = 112) -> str | None:
    if image is None:
        return None
    from maia_core.images import resize_longest

    buf = io.BytesIO()
    resize_longest(image.convert("RGB"), side).save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- the command's work ------------------------------------------------------------------------


def check_options(prompts: str, evaluator_given: bool, n: int) -> None:
    """The options of an evaluation, each a one-line error, before any work."""
    if prompts not in ("template", "llm"):
        raise UserError(f"--prompts must be template or llm, not {prompts!r}.")
    if prompts == "llm" and not evaluator_given:
        raise UserError(
            "--prompts llm needs an evaluator backbone: --evaluator claude (or any backbone)."
        )
    check_count(n, "--n", 1, MAX_N, "prompts per side, each an image rendered for every unit")


def evaluate(
    folders: list[Path],
    *,
    prompts: str = "template",
    evaluator: Any = None,
    n: int = DEFAULT_N,
    text2image: str | None = None,
    tool_options: dict[str, dict[str, str]] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    chunk_spec: str | None = None,
    force: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    key: bytes | None = None,
    targets: dict[str, dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Score the units under ``folders``; returns every unit's record (old and new). Units
    that cannot be scored go to ``on_skip`` and are not scored; the others are.

    Every file under ``folders`` is data. A unit is scored only when its ``result.json`` is
    signed (``key``: the user's own by default); its target is rebuilt from that record,
    except a ``python:`` target, which names code to import: that one only from ``targets``
    (``--target`` on the command line: spec -> options). Ground truth comes from the record,
    and a set file that changed since the run stops its units. An ``eval.json`` is reused
    only when this evaluation signed it, for this ``result.json``."""
    check_options(prompts, evaluator is not None, n)
    targets = targets or {}

    def skip(unit_dir: Path, result: dict[str, Any] | None, reason: str) -> None:
        if result is not None:
            records.append({**_record(unit_dir, result), "skipped": reason})
        if on_skip is not None:
            on_skip(Skipped(unit_dir, reason))

    records: list[dict[str, Any]] = []
    units = find_units(folders, on_skip, key)
    if chunk_spec:
        units = chunk(units, *parse_chunk(chunk_spec))
    todo: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for unit_dir, result in units:
        existing = _read_eval(unit_dir, result, key)
        if existing is not None and not force:
            records.append(existing)
        elif result.get("status") == "completed" and result.get("label"):
            target = str(result.get("target"))
            options = result.get("target_options") or {}
            if target in targets:
                options = targets[target] or options
            elif target.startswith("python:"):
                skip(
                    unit_dir,
                    result,
                    f"its target {target} names code to import, and maia eval runs no code a "
                    f"results file names; to score it, pass the target yourself: --target {target} "
                    "(with --target-option KEY=VALUE as for maia run)",
                )
                continue
            group = (
                target,
                json.dumps(options, sort_keys=True),
                json.dumps(result.get("bases") or []),
                str(result.get("task") or "describe"),
            )
            todo.setdefault(group, []).append((unit_dir, result))
        else:
            records.append(_record(unit_dir, result))  # listed, not scored
    # Where eval.json goes must be writable: told now, not after an hour of scoring.
    for group in todo.values():
        for unit_dir, _ in group:
            check_writable(
                unit_dir,
                "The unit folder",
                "eval.json is written there: make it writable, or run maia eval on a copy of the results you can write",
                probe_bytes=0,
            )
    for (target, options, bases, task), group in todo.items():
        try:
            target_options, target_bases = json.loads(options), json.loads(bases)
            if not isinstance(target_options, dict):
                raise UserError("its result.json's target_options is not a JSON object.")
            if not isinstance(target_bases, list) or not all(
                isinstance(b, list) and len(b) == 2 and all(isinstance(x, str) for x in b)
                for b in target_bases
            ):
                raise UserError("its result.json's bases is not a list of [layer, file] pairs.")
            ev = Evaluator(
                str(target),
                {str(k): str(v) for k, v in target_options.items()},
                target_bases,
                text2image=text2image,
                tool_options=tool_options or {},
                device=device,
                precision=precision,
                task=task,
            )
        except UserError as exc:
            for unit_dir, result in group:
                skip(unit_dir, result, f"its target {target} cannot be loaded: {exc.message}")
            continue
        try:
            now = ev.host.provenance()
            for unit_dir, result in group:
                then = result.get("provenance") or {}
                if then.get("sha256") != now.get("sha256"):
                    skip(
                        unit_dir,
                        result,
                        f"the set file {now.get('set') or then.get('set')} changed since the run "
                        "(its SHA-256 differs from the one recorded), so its ground truth is not "
                        "the run's; restore the file, or run the units again",
                    )
                    continue
                if progress:
                    progress(
                        f"{result.get('backbone')} {target} {result['layer']}={result['unit']}"
                    )
                try:
                    records.append(
                        score_unit(
                            ev,
                            unit_dir,
                            result,
                            prompts=prompts,
                            n=n,
                            seed=seed,
                            evaluator=evaluator,
                            key=key,
                        )
                    )
                except CannotScore as exc:
                    skip(unit_dir, result, str(exc))
        finally:
            ev.close()
    return records


def _read_eval(
    unit_dir: Path, result: dict[str, Any], key: bytes | None = None
) -> dict[str, Any] | None:
    """The unit's ``eval.json``, if an evaluation signed it for this very ``result.json``;
    anything else there (planted, stale, edited) is scored again."""
    from maia_core import signing

    try:
        data = json.loads((unit_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    if not signing.verified(data, key) or data.get("result") != signing.fingerprint(result):
        return None
    data = {k: v for k, v in data.items() if k != signing.FIELD}
    data["_dir"] = str(unit_dir)
    return data


def _record(unit_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
    record = {
        "backbone": result.get("backbone"),
        "target": result.get("target"),
        "layer": result["layer"],
        "unit": result["unit"],
        "task": str(result.get("task") or "describe"),
        "reflect": reflect_rounds(result),
        "units": result.get("units") if isinstance(result.get("units"), list) else None,
        "label": result.get("label"),
        "description": result.get("description"),
        "status": result.get("status"),
        "rounds": result.get("rounds"),
        "cost_usd": usage.get("cost_usd"),
        "tools_used": tool_usage(unit_dir),
        "predictive": None,
        "ground_truth": None,
        "_dir": str(unit_dir),
    }
    return record


def score_unit(
    ev: Evaluator,
    unit_dir: Path,
    result: dict[str, Any],
    *,
    prompts: str,
    n: int,
    seed: int,
    evaluator: Any,
    key: bytes | None = None,
) -> dict[str, Any]:
    from maia_core import signing
    from maia_core.task import task_named

    record = _record(unit_dir, result)
    unit = Unit(result["layer"], result["unit"])
    ev.check(unit)
    label = str(result["label"])
    s = unit_seed(seed, result)
    # A task scores its own answers (reliance's claims, compare's difference); describe's
    # are scored here. Either way the truth is the one the run recorded (signed with the
    # result), not the set file as it is now.
    scored = task_named(record["task"]).score(
        Scorer(ev, n=n, seed=s, prompts=prompts, evaluator=evaluator), result
    )
    if scored is not None:
        thumbs = scored.pop("_thumbnails", {})
        record.update(scored)
        record["thumbnails"] = {k: thumbnail(v) for k, v in thumbs.items()}
    else:
        predictive = ev.predictive(unit, label, prompts=prompts, n=n, seed=s, evaluator=evaluator)
        thumbs = predictive.pop("_thumbnails")
        record["predictive"] = predictive
        record["thumbnails"] = {k: thumbnail(v) for k, v in thumbs.items()}
        truth = result.get("ground_truth")
        if isinstance(truth, dict):
            record["ground_truth"] = ev.ground_truth(unit, label, truth, s)
    saved = {k: v for k, v in record.items() if not k.startswith("_")}
    saved["result"] = signing.fingerprint(result)
    try:
        atomic_write_json(unit_dir / "eval.json", signing.sign(saved, key))
    except OSError as exc:
        if no_space(exc):
            raise  # a full disk stops the evaluation, with one line
        raise CannotScore(f"its eval.json cannot be written ({exc.strerror or exc})") from None
    return record
