"""``baseline``: a no-LLM investigator that runs real experiments through the same loop.

It reads the transcript like any backbone and answers with the next experiment, written as
code for the same ``system`` and ``tools`` an LLM agent gets, so its report shows every
experiment. It is the comparison point a backbone's score is shown against (as MILAN was in
MAIA's paper):

1. **Survey.** It renders every concept of a vocabulary with ``text2image`` (objects two to an
   image, colours as plain backgrounds, backgrounds alone) and measures the unit.
2. **Narrow.** The concepts of the images that drive the unit are rendered alone, three
   times each. When nothing drives it, the unit may need two things at once (an AND): it
   renders groups of objects on each colour and on grass, and colour pairs.
3. **Verify.** Concepts that drive it alone make a one-concept label, or an OR of two; a pair
   that drives it only together makes an AND, checked with each part alone. A causal test with
   ``edit_images`` replaces the concept and measures the drop.
4. **Answer** ``[DESCRIPTION]`` and ``[LABEL]``.

Options (``--backbone-option``): ``vocabulary`` (``scenes``, the concepts the offline scenes
text2image draws; or a text file with one concept per line, for FLUX), ``seed`` (the images'
seed, 0: the same images for every unit, which a host can cache).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from maia_core import hookimpl
from maia_core.backbone import Backbone, Reply
from maia_core.errors import BackboneError, UserError
from maia_core.options import as_int, reject_unknown
from maia_core.transcript import Message

COLOURS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
)
BACKGROUNDS = ("grass", "brick wall", "gravel", "space", "landscape")
# An image drives the unit when it reaches this share of the best activation (and is above 0).
SHARE = 0.5
MAX_CANDIDATES = 6
# Images measured per cell: well inside a cell's time limit on a CPU.
BLOCK = 128
# A second concept joins an OR when it drives the unit this much of the best...
OR_SHARE = 0.9
# ...and at least this much in every variant.
RELIABLE = 0.8
# Ways to draw one object, to see whether it drives the unit whatever its size and place.
VARIANTS = (
    "a {}",
    "a small {}",
    "a big {}",
    "a {} on the left",
    "two {}",
    "a {} on gravel",
    "a {} on a plain blue background",
)
_STOP = {"a", "an", "the", "of", "and", "or"}
_MARK = re.compile(r"^(SURVEY|SINGLES|PAIRS|VERIFY) (\{.*\})$", re.MULTILINE)


def _words(name: str) -> set[str]:
    return {w for w in name.lower().split() if w not in _STOP}


def _same_word(a: str, b: str) -> str | None:
    """The word two names share (a compound counts: "basketball" has "ball"), if any; the
    head nouns (last words) first, since "electric guitar" and "electric bass guitar" are
    guitars, not electrics."""
    heads = [(a.lower().split()[-1], b.lower().split()[-1])] if a.strip() and b.strip() else []
    for wa, wb in [*heads, *((x, y) for x in _words(a) for y in _words(b))]:
        if wa == wb or (min(len(wa), len(wb)) >= 4 and (wa.endswith(wb) or wb.endswith(wa))):
            return wa if len(wa) <= len(wb) else wb
    return None


def merge_lookalikes(
    names: list[str], folders: dict[str, set[str]] | None = None
) -> list[tuple[str, list[str]]]:
    """Group names of one concept; each group named by the word its members share, or by its
    strongest member. ``names`` come strongest first. ``folders`` gives the folders a concept's
    pictures are filed in: a dromedary filed under "camel" is a kind of camel."""
    folders = folders or {}
    groups: list[tuple[str, list[str]]] = []
    for name in names:
        for i, (label, members) in enumerate(groups):
            shared = _same_word(label, name)
            filed = any(label in folders.get(m, ()) or m in folders.get(label, ()) for m in [name])
            if shared or filed:
                new_label = (
                    shared
                    if shared and all(_same_word(shared, m) for m in [*members, name])
                    else label
                )
                groups[i] = (new_label, [*members, name])
                break
        else:
            groups.append((name, [name]))
    return groups


@hookimpl
def register_backbones(register):
    register(
        "baseline",
        make_baseline,
        help="A no-LLM investigator: a concept survey with text2image, narrowing, OR/AND tests and an edit_images check",
    )


def make_baseline(arg: str | None, **options: str) -> BaselineBackbone:
    reject_unknown(options, "Backbone baseline", ("vocabulary", "seed"))
    return BaselineBackbone(
        options.get("vocabulary", arg or "scenes"), as_int(options.get("seed", 0), "seed")
    )


def load_vocabulary(source: str, groups: bool = False) -> tuple[list[str], dict[str, set[str]]]:
    """Object concepts to survey: the scenes text2image's (by stamp label, and with ``groups``
    its group names too: "ball", "bird"), or a file's lines; and for each, the folders its
    pictures are filed in (scenes only)."""
    if source == "scenes":
        from maia_plugins.tools.scene_language import SceneLanguage

        language = SceneLanguage.open()
        vias = ("label", "group") if groups else ("label",)
        concepts = [c for c in language.vocabulary() if c.kind == "object" and c.via in vias]
        folders = {c.name: {s.split("/")[-2] for s in c.stamps if "/" in s} for c in concepts}
        return [c.name for c in concepts], folders
    path = Path(source)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(
            f"Baseline vocabulary {source!r} cannot be read ({exc.strerror or exc}); give scenes or a text file, one concept per line."
        ) from None
    words = [w.strip() for w in lines if w.strip() and not w.startswith("#")]
    if not words:
        raise UserError(f"Baseline vocabulary {source!r} holds no concepts.")
    return words, {}


def prompt_for(concept: str) -> str:
    if concept in COLOURS:
        return f"a plain {concept} background"
    if concept in BACKGROUNDS:
        return concept
    return f"a {concept}"


class BaselineBackbone(Backbone):
    model = "baseline"
    writes_prompts = False  # its --reflect uses the task's template predictions

    def __init__(self, vocabulary: str, seed: int = 0):
        self.name = "baseline"
        self.seed = seed
        # Colours and backgrounds are surveyed as such; an object of the same name ("orange")
        # would be drawn as the colour.
        objects, self.folders = load_vocabulary(vocabulary)
        self.objects = [o for o in objects if o not in COLOURS and o not in BACKGROUNDS]
        self.vocabulary = vocabulary
        self._reliance_baseline: Any = None

    def _reliance(self) -> Any:
        """The reliance investigator, with every object and group name as a partner."""
        if self._reliance_baseline is None:
            from maia_plugins.backbones.baseline_reliance import RelianceBaseline

            partners = self.objects
            if self.vocabulary == "scenes":
                names, _ = load_vocabulary("scenes", groups=True)
                partners = [o for o in names if o not in COLOURS and o not in BACKGROUNDS]
            self._reliance_baseline = RelianceBaseline(partners, self.seed)
        return self._reliance_baseline

    # -- reading the transcript ------------------------------------------------------------
    @staticmethod
    def _findings(messages: list[Message]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for m in messages:
            if m.role == "user":
                for kind, payload in _MARK.findall(m.text):
                    try:
                        found[kind] = json.loads(payload)
                    except ValueError:
                        continue
        return found

    def complete(self, messages: list[Message]) -> Reply:
        if any(m.meta.get("kind") == "describer" for m in messages[:1]):
            raise BackboneError(
                "the baseline cannot describe images; use --describer for describe_images"
            )
        task = next((m.meta.get("task") for m in messages if m.meta.get("kind") == "task"), None)
        if task == "reliance":
            return Reply(self._reliance().reply(messages), model="baseline")
        if task == "compare":
            from maia_plugins.backbones.baseline_compare import compare_reply

            return Reply(compare_reply(self, messages), model="baseline")
        if task not in (None, "describe"):
            raise BackboneError(
                f"the baseline investigates the describe, reliance and compare tasks, not {task!r}"
            )
        found = self._findings(messages)
        asked = sum(m.role == "assistant" for m in messages)
        if asked > len(found):
            # An experiment ended without its finding (an error, a time limit): answer with
            # what is known rather than try the same again.
            return Reply(self.answer(found.get("VERIFY", {"kind": "none"})), model="baseline")
        if "SURVEY" not in found:
            text = self.survey()
        elif "SINGLES" not in found and "PAIRS" not in found:
            text = self.narrow(found["SURVEY"])
        elif "VERIFY" not in found:
            text = self.verify(found)
        else:
            text = self.answer(found["VERIFY"])
        return Reply(text, model="baseline")

    # -- the experiments -------------------------------------------------------------------
    def _measured(
        self, intro: str, prompts: list[str], members: list[list[str]], analysis: str
    ) -> str:
        """A reply that renders ``prompts`` and measures the unit on them, a block of at most
        ``BLOCK`` images at a time (each block is a cell with its own time limit), then runs
        ``analysis`` on ``acts``, ``prompts`` and ``members``."""
        setup = (
            f"prompts = {json.dumps(prompts)}\n"
            f"members = {json.dumps(members)}\n"
            "acts = []\n\n"
            "def measure(batch):\n"
            "    out = []\n"
            "    for i in range(0, len(batch), 64):\n"
            f"        images = tools.text2image(batch[i:i + 64], seed={self.seed})\n"
            "        out += system.call_neuron(images)[0]\n"
            "    return out\n"
        )
        blocks = [setup]
        for start in range(0, len(prompts), BLOCK):
            blocks.append(
                f"acts += measure(prompts[{start}:{start + BLOCK}])\nprint(len(acts), 'of', len(prompts), 'measured')\n"
            )
        blocks.append("import json\n" + analysis)
        return intro + "\n\n" + "\n".join(f"```python\n{b}```" for b in blocks)

    def survey(self) -> str:
        pairs = [self.objects[i : i + 2] for i in range(0, len(self.objects), 2)]
        prompts = [" and ".join(prompt_for(o) for o in p) for p in pairs]
        prompts += [prompt_for(c) for c in (*COLOURS, *BACKGROUNDS)]
        members = [*pairs, *([c] for c in (*COLOURS, *BACKGROUNDS))]
        analysis = (
            "ranked = sorted(zip(acts, prompts, members), key=lambda t: -t[0])\n"
            "best = ranked[0][0]\n"
            f"firing = [(a, m) for a, p, m in ranked if a > 1e-6 and a >= {SHARE} * best][:{MAX_CANDIDATES}]\n"
            "print(f'{len(prompts)} images; the strongest:')\n"
            "for a, p, m in ranked[:8]:\n"
            "    print(f'  {a:.4f}  {p}')\n"
            "print('SURVEY ' + json.dumps({'best': best, 'firing': firing}))\n"
        )
        intro = (
            f"I will survey {len(self.objects)} object concepts (two to an image), "
            f"{len(COLOURS)} colours and {len(BACKGROUNDS)} backgrounds, and see which images "
            "drive the unit."
        )
        return self._measured(intro, prompts, members, analysis)

    def narrow(self, survey: dict[str, Any]) -> str:
        firing = survey.get("firing") or []
        candidates = list(dict.fromkeys(c for _, members in firing for c in members))[
            :MAX_CANDIDATES
        ]
        if candidates:
            prompts, members = [], []
            for c in candidates:
                if c in COLOURS or c in BACKGROUNDS:
                    variants = [prompt_for(c)] * 2
                else:
                    variants = [v.format(c) for v in VARIANTS]
                prompts += variants
                members += [[c]] * len(variants)
            analysis = (
                "alone = {}\n"
                "for a, m in zip(acts, members):\n"
                "    alone.setdefault(m[0], []).append(a)\n"
                "alone = {c: [sum(v) / len(v), min(v)] for c, v in alone.items()}\n"
                "for c, (mean, low) in sorted(alone.items(), key=lambda t: -t[1][0]):\n"
                "    print(f'  {c}: mean activation {mean:.4f}, lowest {low:.4f} over its variants')\n"
                "print('SINGLES ' + json.dumps(alone))\n"
            )
            intro = (
                f"These concepts were in the images that drove the unit: {', '.join(candidates)}. "
                "I will render each alone, in several sizes, places and backgrounds, to see which "
                "drive it by themselves, and how reliably."
            )
            return self._measured(intro, prompts, members, analysis)
        # Nothing drove it: perhaps it needs two things at once. Groups of objects on each
        # colour and on grass, and pairs of colours.
        groups = [self.objects[i : i + 4] for i in range(0, len(self.objects), 4)]
        partners = [*COLOURS, "grass"]
        prompts, members = [], []
        for partner in partners:
            where = "on grass" if partner == "grass" else f"on a plain {partner} background"
            for g in groups:
                prompts.append(" and ".join(prompt_for(o) for o in g) + f" {where}")
                members.append([*g, partner])
        for i, a in enumerate(COLOURS):
            for b in COLOURS[i + 1 :]:
                prompts.append(f"a big {b} ball on a plain {a} background")
                members.append([a, b])
        analysis = (
            "ranked = sorted(zip(acts, prompts, members), key=lambda t: -t[0])\n"
            "best = ranked[0][0]\n"
            f"firing = [(a, m) for a, p, m in ranked if a > 1e-6 and a >= {SHARE} * best][:{MAX_CANDIDATES}]\n"
            "for a, p, m in ranked[:6]:\n"
            "    print(f'  {a:.4f}  {p}')\n"
            "print('PAIRS ' + json.dumps({'best': best, 'firing': firing}))\n"
        )
        intro = (
            "No single concept drove the unit. It may need two at once, so I will show groups of "
            "objects on each colour and on grass, and pairs of colours."
        )
        return self._measured(intro, prompts, members, analysis)

    def verify(self, found: dict[str, Any]) -> str:
        if "SINGLES" in found:
            alone = {c: v if isinstance(v, list) else [v, v] for c, v in found["SINGLES"].items()}
            survey = found["SURVEY"]["firing"]
            drivers = self.drivers(alone)
            if not drivers:
                # The concepts drove it only together: an AND of the pair they came in.
                pair = next((m for _, m in survey if len(m) == 2), [next(iter(alone))])
                return self._verify_and(pair[0], pair[-1])
            if len(drivers) == 1:
                return self._verify_mono(drivers[0])
            return self._verify_or(*drivers[:2])
        firing = found["PAIRS"].get("firing") or []
        if not firing:
            return self._give_up()
        members = firing[0][1]
        partner = members[-1]
        objects = members[:-1] if len(members) > 2 else members[:1]
        if len(members) == 2 and members[0] in COLOURS:
            return self._verify_and(members[0], members[1], colours=True)
        return self._verify_group(objects, partner)

    def drivers(self, alone: dict[str, list[float]]) -> list[str]:
        """The concepts that drive the unit by themselves, as few and as general as explain it.

        Look-alikes are merged into one concept: names that share a word ("classical guitar",
        "electric guitar": guitar), and a concept filed under another's name (a dromedary's
        picture is filed under "camel"). A
        colour that drives the unit by itself explains the objects of that colour that do too
        (a red brick wall). A second concept makes an OR only if it drives the unit about as
        much as the first and reliably over its variants; a look-alike does not (a Christmas
        pudding half-passes for a strawberry, but not when small or on blue).
        """
        strong = [c for c, (mean, _) in alone.items() if mean > 1e-6]
        if not strong:
            return []
        colours = [c for c in strong if c in COLOURS]
        if colours:
            strong = colours
        clusters = merge_lookalikes(sorted(strong, key=lambda c: -alone[c][0]), self.folders)
        scored = [
            (name, max(alone[m][0] for m in members), max(alone[m][1] for m in members))
            for name, members in clusters
        ]
        scored.sort(key=lambda t: -t[1])
        best = scored[0][1]
        out = [scored[0][0]]
        for name, mean, low in scored[1:]:
            if mean >= OR_SHARE * best and low >= RELIABLE:
                out.append(name)
        return out

    def _probe(self, cases: dict[str, str], intro: str, kind: str, extra: str = "") -> str:
        code = (
            f"cases = {json.dumps(cases)}\n"
            "names = list(cases)\n"
            f"images = tools.text2image([cases[n] for n in names], seed={self.seed + 1})\n"
            "acts, masked = system.call_neuron(images)\n"
            "import json\n"
            "result = dict(zip(names, acts))\n"
            "for n, a, m in zip(names, acts, masked):\n"
            "    tools.display(m, f'{n}: activation {a:.4f}')\n"
            f"{extra}"
            f"print('VERIFY ' + json.dumps({{'kind': {kind!r}, **result}}))\n"
        )
        return f"{intro}\n\n```python\n{code}```"

    def _control(self, exclude: set[str]) -> str:
        return next(o for o in self.objects if o not in exclude and o not in ("ball",))

    def _verify_mono(self, c: str) -> str:
        control = self._control({c})
        extra = ""
        if c not in COLOURS and c not in BACKGROUNDS:
            extra = (
                f"edited, _ = tools.edit_images([images[0]], ['replace the {c} with a {control}'])\n"
                "edit_acts, edit_masked = system.call_neuron(edited)\n"
                "tools.display(edit_masked[1], f'after the edit: activation {edit_acts[1]:.4f}')\n"
                "result['edited'] = edit_acts[1]\n"
            )
        cases = {c: prompt_for(c), "control": prompt_for(control)}
        return self._probe(
            cases,
            f"Only {c} drives the unit by itself. I check it against a control, and replace it by "
            "editing to see whether the activation depends on it.",
            f"mono:{c}",
            extra,
        )

    def _verify_or(self, a: str, b: str) -> str:
        cases = {a: prompt_for(a), b: prompt_for(b), "control": prompt_for(self._control({a, b}))}
        return self._probe(
            cases,
            f"Both {a} and {b} drive the unit alone: an OR. I check each against a control.",
            f"or:{a}|{b}",
        )

    def _verify_and(self, a: str, b: str, colours: bool = False) -> str:
        if colours:
            cases = {
                "both": f"a big {b} ball on a plain {a} background",
                a: prompt_for(a),
                b: prompt_for(b),
            }
        else:
            cases = {
                "both": " and ".join(prompt_for(x) for x in (a, b)),
                a: prompt_for(a),
                b: prompt_for(b),
            }
        return self._probe(
            cases,
            f"{a} and {b} drove the unit only together. I check both together and each alone.",
            f"and:{a}|{b}",
        )

    def _verify_group(self, objects: list[str], partner: str) -> str:
        where = "on grass" if partner == "grass" else f"on a plain {partner} background"
        cases = {o: f"{prompt_for(o)} {where}" for o in objects}
        cases["alone"] = prompt_for(partner)
        for o in objects:
            cases[f"{o} alone"] = prompt_for(o)
        return self._probe(
            cases,
            f"The unit fired for a group of objects {where}. I show each object {where}, each alone, and {partner} alone.",
            f"group:{partner}|{'|'.join(objects)}",
        )

    def _give_up(self) -> str:
        return self._probe(
            {"plain": "a plain gray background"},
            "Nothing I showed drives the unit. A last control:",
            "none",
        )

    def _general(self, name: str) -> str:
        """A kind's name when the vocabulary has it ("sumatran tiger" is a tiger)."""
        head = name.split()[-1] if name.strip() else name
        return head if head != name and head in self.objects else name

    # -- the answer --------------------------------------------------------------------------
    def answer(self, verify: dict[str, Any]) -> str:
        kind, _, what = str(verify.get("kind", "none")).partition(":")
        acts = {k: v for k, v in verify.items() if k != "kind" and isinstance(v, (int, float))}
        if kind == "mono":
            drop = (
                f"; replacing it by editing drops the activation to {acts['edited']:.3f}"
                if "edited" in acts
                else ""
            )
            description = (
                f"The unit fires for {what}: an image of {what} activates it ({acts.get(what, 0):.3f}), "
                f"a control image does not ({acts.get('control', 0):.3f}){drop}."
            )
            label = self._general(what)
        elif kind == "or":
            a, b = what.split("|")
            description = f"The unit fires for {a} or for {b}: each alone activates it ({acts.get(a, 0):.3f}, {acts.get(b, 0):.3f}); a control does not ({acts.get('control', 0):.3f})."
            label = f"{self._general(a)} or {self._general(b)}"
        elif kind == "and":
            a, b = what.split("|")
            description = f"The unit fires only for {a} and {b} together ({acts.get('both', 0):.3f}); each alone does not ({acts.get(a, 0):.3f}, {acts.get(b, 0):.3f})."
            label = f"{self._general(a)} and {self._general(b)}"
        elif kind == "group":
            partner, *objects = what.split("|")
            on = {o: acts.get(o, 0.0) for o in objects}
            best = max(on, key=on.get)
            description = (
                f"The unit fires for {best} together with {partner} ({on[best]:.3f}); {best} alone "
                f"({acts.get(best + ' alone', 0):.3f}) and {partner} alone ({acts.get('alone', 0):.3f}) do not."
            )
            label = f"{self._general(best)} and {partner}"
        else:
            description = "No concept of the vocabulary, alone or in pairs, drives the unit."
            label = "unknown"
        return f"[DESCRIPTION]: {description}\n[LABEL]: {label}"
