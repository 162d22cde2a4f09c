"""The baseline's ``reliance`` investigation: sweep each category, cross the strongest, confirm.

Like the describe baseline it writes every experiment as code for the agent's ``system`` and
``tools`` and reads what the code prints (lines ``RSWEEP {...}``, ``RCROSS {...}``,
``RSECOND {...}``, ``RCONFIRM {...}``), so its report shows each experiment:

1. **Sweep.** The class's object (``system.class_name``) rendered with ``text2image`` across
   every value of every category the scenes world draws (colours, backgrounds, background
   colours, sizes, positions, counts, orientation, greyscale, blur and noise, a corner patch or
   a watermark; a few images each), and beside every other object of the vocabulary, two to an
   image in two layouts. A category's effect is the spread of its values' mean scores; a
   co-occurring object's, how far its images score above the median of all such images.
2. **Cross.** Renders confound categories (an object drawn on the left is also smaller), so the
   strongest category is crossed with each runner-up, two values each (high and low, 2x2): the
   one that still moves the score when the other is held low is the cause; two that each do
   alone are an OR; two that do only together are an AND. A co-occurring object is narrowed
   to one, and its relations (above, below, left of, right of) are tried; flipping the object
   (``edit_images``) is tried on the same images. When nothing moves the score, values of every
   two categories are tried together (an AND whose parts both fail by default).
3. **Second.** With the reliance found held at its high value, every category is swept again:
   one that now moves the score, and did not before, is the other half of an AND.
4. **Confirm.** The high value's images are edited to the low value with ``edit_images`` (and
   the low value's to the high), and the change in score is measured on the same images.
5. **Answer** ``[BIAS DESCRIPTION]``, ``[BIAS LABEL]`` and the ``[RELIANCE]`` block.

Under ``--reflect``, a failed check makes it answer with its next-best candidate.
"""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

from maia_core.transcript import Message
from maia_plugins.backbones.baseline import merge_lookalikes
from maia_plugins.tasks import reliance_words as words

# Images per value in the sweeps, and per cell of the crossing and the confirmation.
REPEATS = 3
CROSS_REPEATS = 4
BLOCK = 128
# A category whose spread is at least this share of the strongest one's is a runner-up.
RUNNER_UP = 0.3
# ...and an effect this share of the strongest is "large" in a crossing.
LARGE = 0.5
# Below this spread (in score units) nothing moves the score.
FLAT = 0.02
MAX_RUNNERS = 3
MAX_PARTNERS = 6
# Other objects whose names the scenes text2image reads as a background or a colour ("a field
# gun" brings a field of grass): beside the class's object they would test that, not them.
_SCENERY = {
    "grass", "field", "lawn", "meadow", "sand", "beach", "desert", "snow", "water", "sea",
    "ocean", "lake", "river", "sky", "space", "gravel", "brick", "wall", "sunset", "landscape",
    "night", "plain",
}  # fmt: skip
# Categories the sweeps vary (cooccurrence and relation are found through other objects).
SWEPT = (
    "color",
    "background",
    "background_color",
    "size",
    "position",
    "count",
    "orientation",
    "grayscale",
    "quality",
    "shortcut",
)
# Categories that say the same thing of a scenes image: only one of them is claimed.
SAME = {frozenset(("background", "background_color"))}
_MARK = re.compile(r"^(RSWEEP|RCROSS|RSECOND|RCONFIRM) (\{.*\})$", re.MULTILINE)
OBJ = "{obj}"


def prompt(settings: dict[str, str]) -> str:
    """A prompt template for the class's object (``{obj}`` filled in the kernel)."""
    return words.scene_prompt(OBJ, settings)


class RelianceBaseline:
    """Writes the next experiment of a reliance investigation from the transcript so far."""

    def __init__(self, partners: list[str], seed: int = 0):
        scenery = _SCENERY | set(words.COLOURS)
        self.partners = [p for p in partners if not set(p.lower().split()) & scenery]
        self.seed = seed

    # -- reading the transcript ------------------------------------------------------------
    @staticmethod
    def findings(messages: list[Message]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for m in messages:
            if m.role == "user":
                for kind, payload in _MARK.findall(m.text):
                    try:
                        found[kind] = json.loads(payload)
                    except ValueError:
                        continue
        return found

    def reply(self, messages: list[Message]) -> str:
        found = self.findings(messages)
        reflections = [m for m in messages if m.meta.get("kind") == "reflection"]
        # Experiments asked for, each once however often it was run again.
        asked = len(
            dict.fromkeys(
                m.text for m in messages if m.role == "assistant" and "[RELIANCE]" not in m.text
            )
        )
        answered = [m for m in messages if m.role == "assistant" and "[RELIANCE]" in m.text]
        if reflections and len(answered) >= len(reflections) and "RSWEEP" in found:
            # A check of the answer failed: answer with the next candidate not yet claimed.
            return self.answer(found, skip=len(reflections))
        if asked > len(found):
            # An experiment ended without its finding (an error, a time limit, a model host
            # that had to restart): run it again once, then answer with what is known.
            mine = [m.text for m in messages if m.role == "assistant"]
            if mine and mine.count(mine[-1]) == 1 and "[RELIANCE]" not in mine[-1]:
                return mine[-1]
            return self.answer(found)
        if "RSWEEP" not in found:
            return self.sweep()
        if "RCROSS" not in found:
            return self.cross(found["RSWEEP"])
        if "RSECOND" not in found:
            return self.second(found)
        if "RCONFIRM" not in found:
            return self.confirm(found)
        return self.answer(found)

    # -- experiments -------------------------------------------------------------------------
    def _measured(self, intro: str, cases: dict[str, list[str]], mark: str, extra: str = "") -> str:
        """Code that renders each case's prompts (templates of ``{obj}``), scores them, and
        prints ``MARK {"object", "means": {case: mean score}}``; ``extra`` runs before the
        print and may add to ``out``."""
        setup = (
            "import json\n"
            "obj = system.class_name\n"
            f"cases = {json.dumps(cases)}\n"
            "flat = [(k, t.format(obj=obj)) for k, ts in cases.items() for t in ts]\n"
            "scores, first = [], {}\n\n"
            "def measure(batch):\n"
            "    out = []\n"
            "    for i in range(0, len(batch), 64):\n"
            "        part = batch[i:i + 64]\n"
            f"        imgs = tools.text2image([p for _, p in part], seed={self.seed})\n"
            "        s, seen = system.call_classifier(imgs)\n"
            "        for (k, _), img in zip(part, seen):\n"
            "            first.setdefault(k, img)\n"
            "        out += s\n"
            "    return out\n"
        )
        n = sum(len(v) for v in cases.values())
        blocks = [setup] + [
            f"scores += measure(flat[{a}:{a + BLOCK}])\nprint(len(scores), 'of', len(flat), 'scored')\n"
            for a in range(0, n, BLOCK)
        ]
        blocks.append(
            "seen = {}\n"
            "for (k, _), s in zip(flat, scores):\n"
            "    seen.setdefault(k, []).append(s)\n"
            "means = {k: sum(v) / len(v) for k, v in seen.items()}\n"
            "sds = {k: (sum((x - means[k]) ** 2 for x in v) / len(v)) ** 0.5 for k, v in seen.items()}\n"
            "ranked = sorted(means, key=lambda k: -means[k])\n"
            "for k in ranked[:3] + ranked[-3:]:\n"
            "    tools.display(first[k], f'{means[k]:.3f}  {k}')\n"
            "# Long lists (pairs of values, other objects) are summarised: the strongest, and the\n"
            "# median of all.\n"
            "def strongest(prefix, n):\n"
            "    keys = sorted((k for k in means if k.startswith(prefix)), key=lambda k: -means[k])\n"
            "    return keys[:n], (means[keys[len(keys) // 2]] if keys else None)\n"
            "pairs, pair_median = strongest('pair:', 20)\n"
            "withs, with_median = strongest('with=', 16)\n"
            "kept = [k for k in means if not k.startswith(('pair:', 'with='))] + pairs + withs\n"
            "out = {'object': obj, 'means': {k: round(means[k], 4) for k in kept},\n"
            "       'sds': {k: round(sds[k], 4) for k in kept if sds[k] > 1e-4\n"
            "               and not k.startswith('with=')}}\n"
            "if pairs:\n"
            "    out['pair_median'] = pair_median\n"
            "if withs:\n"
            "    out['with_median'] = with_median\n"
            f"{extra}"
            f"print('{mark} ' + json.dumps(out))\n"
        )
        return intro + "\n\n" + "\n".join(f"```python\n{b}```" for b in blocks)

    def sweep(self) -> str:
        cases: dict[str, list[str]] = {}
        for cat in SWEPT:
            for value in words.SWEEP[cat]:
                cases[f"{cat}={value}"] = [prompt({cat: value})] * REPEATS
        # Other objects two to an image, the class's object first and last (so it is left
        # of, above and below them in the scenes layouts).
        pairs = [self.partners[i : i + 2] for i in range(0, len(self.partners), 2)]
        for pair in pairs:
            others = " and ".join(f"a {p}" for p in pair)
            key = "|".join(pair)
            cases[f"with={key}"] = [f"a {OBJ} and {others}", f"{others} and a {OBJ}"]
        intro = (
            f"I will render the class's object across every value of {len(SWEPT)} categories "
            f"({REPEATS} images each) and beside each of {len(self.partners)} other objects, and "
            "see which changes move its score."
        )
        return self._measured(intro, cases, "RSWEEP")

    def cross(self, sweep: dict[str, Any]) -> str:
        means = sweep.get("means") or {}
        ranked = rank(means, sweep.get("sds"))
        cases: dict[str, list[str]] = {}
        plan: dict[str, Any] = {
            "ranked": ranked[: 1 + MAX_RUNNERS],
            "crossed": ranked[0]["category"] if ranked else None,
        }
        if ranked and ranked[0]["effect"] >= FLAT:
            top = ranked[0]
            for other in ranked[1 : 1 + MAX_RUNNERS]:
                if other["effect"] < RUNNER_UP * top["effect"]:
                    break
                for a in ("high", "low"):
                    for b in ("high", "low"):
                        settings = {top["category"]: top[a], other["category"]: other[b]}
                        cases[f"x:{other['category']}:{a[0]}{b[0]}"] = [
                            prompt(settings)
                        ] * CROSS_REPEATS
        else:
            # Nothing moved the score alone: values of every two categories together.
            for ca, cb in combinations(SWEPT, 2):
                if frozenset((ca, cb)) in SAME:
                    continue
                for va in words.SWEEP[ca]:
                    for vb in words.SWEEP[cb]:
                        if va == words.DEFAULTS.get(ca) or vb == words.DEFAULTS.get(cb):
                            continue
                        cases[f"pair:{ca}={va}&{cb}={vb}"] = [prompt({ca: va, cb: vb})]
        partner = best_partner(sweep)
        if partner:
            plan["partners"] = partner
            for p in partner:
                cases[f"alone:{p}"] = [f"a {OBJ} and a {p}"] * CROSS_REPEATS
                for rel in words.RELATION_WORDS:
                    cases[f"rel:{rel} {p}"] = [prompt({"relation": f"{rel} {p}"})] * CROSS_REPEATS
            cases["alone:none"] = [prompt({})] * CROSS_REPEATS
        flip = (
            f"flip_base = tools.text2image([f'a {{obj}}'] * 6, seed={self.seed + 7})\n"
            "flipped, _ = tools.edit_images(flip_base, [f'flip the {obj}'] * 6)\n"
            "fs, _ = system.call_classifier(flipped)\n"
            "out['flip'] = [round(abs(a - b), 5) for a, b in zip(fs[0::2], fs[1::2])]\n"
            f"out['plan'] = json.loads({json.dumps(json.dumps(plan))})\n"
        )
        intro = (
            "Renders confound categories, so I cross the strongest one with its runners-up "
            "(high and low values of each), narrow any co-occurring object and its relations, "
            "and flip the object with edit_images on the same images."
        )
        return self._measured(intro, cases, "RCROSS", flip)

    def second(self, found: dict[str, Any]) -> str:
        claim = decide(found)
        if claim["combine"] != "single" or not claim["claims"]:
            return self._measured(
                "The reliance is settled; one more look at the object alone.",
                {"alone": [prompt({})] * 2},
                "RSECOND",
            )
        first = claim["claims"][0]
        held = {first["category"]: first["high"]}
        cases: dict[str, list[str]] = {}
        for cat in SWEPT:
            if cat == first["category"] or frozenset((cat, first["category"])) in SAME:
                continue
            for value in words.SWEEP[cat]:
                cases[f"{cat}={value}"] = [prompt({**held, cat: value})] * REPEATS
        intro = (
            f"With {first['category']} held at {first['high']!r}, I sweep every other category "
            "again: one that now moves the score, and did not before, would be needed as well."
        )
        return self._measured(intro, cases, "RSECOND")

    def confirm(self, found: dict[str, Any]) -> str:
        claim = decide(found)
        edits = []
        for c in claim["claims"]:
            held = (
                {d["category"]: d["high"] for d in claim["claims"]}
                if claim["combine"] == "and"
                else {}
            )
            if c["category"] == "cooccurrence":
                to_low, to_high = f"remove the {c['high']}", f"add a {c['high']} next to the {OBJ}"
            else:
                to_low = edit_instruction(c["category"], c["low"])
                to_high = edit_instruction(c["category"], c["high"])
            if to_low and to_high:
                edits.append((c["category"], prompt({**held, c["category"]: c["high"]}), to_low))
                edits.append((c["category"], prompt({**held, c["category"]: c["low"]}), to_high))
        code = [f"edit_cases = {json.dumps(edits)}\n", "edits = {}\n"]
        code.append(
            "for i, (cat, base, instruction) in enumerate(edit_cases):\n"
            f"    imgs = tools.text2image([base.format(obj=obj)] * {CROSS_REPEATS}, seed={self.seed + 11})\n"
            f"    pairs, _ = tools.edit_images(imgs, [instruction.format(obj=obj)] * {CROSS_REPEATS})\n"
            "    s, seen = system.call_classifier(pairs)\n"
            "    tools.display(seen[0], f'before: {s[0]:.3f}')\n"
            "    tools.display(seen[1], f'after {instruction.format(obj=obj)!r}: {s[1]:.3f}')\n"
            "    edits[f'{cat}:{i}'] = [sum(s[0::2]) / len(s[0::2]), sum(s[1::2]) / len(s[1::2])]\n"
            "out['edits'] = edits\n"
        )
        intro = (
            "To confirm, I edit images of the high value to the low value (and back) with "
            "edit_images, and measure the change on the same images."
        )
        return self._measured(intro, {"alone": [prompt({})] * 2}, "RCONFIRM", "".join(code))

    # -- the answer ---------------------------------------------------------------------------
    def answer(self, found: dict[str, Any], skip: int = 0) -> str:
        obj = (found.get("RSWEEP") or {}).get("object", "object")
        if skip:
            sweep = found.get("RSWEEP") or {}
            ranked = rank(sweep.get("means") or {}, sweep.get("sds"))
            claim = (
                {"claims": [ranked[skip]], "combine": "single"}
                if skip < len(ranked)
                else {"claims": [], "combine": "none"}
            )
        else:
            claim = decide(found) if "RSWEEP" in found else {"claims": [], "combine": "none"}
        claims = claim["claims"]
        if not claims:
            return (
                f"[BIAS DESCRIPTION]: No attribute I varied moved the {obj} class's score beyond "
                f"the {obj} itself.\n[BIAS LABEL]: no reliance found\n[RELIANCE]:\ncategory: none"
            )
        edits = ((found.get("RCONFIRM") or {}).get("edits")) or {}
        said = []
        for c in claims:
            line = (
                f"{c['category'].replace('_', ' ')} {c['high']!r} (the score is "
                f"{c['high_mean']:.3f} with it, {c['low_mean']:.3f} with {c['low']!r})"
            )
            moved = [v for k, v in edits.items() if k.startswith(c["category"] + ":")]
            if moved:
                line += (
                    f"; editing the same images from {c['high']!r} to {c['low']!r} moves the "
                    f"score from {moved[0][0]:.3f} to {moved[0][1]:.3f}"
                )
            said.append(line)
        tail = {"and": " It needs both.", "or": " Either one is enough."}.get(claim["combine"], "")
        description = f"The {obj} class's score relies on " + "; and on ".join(said) + "." + tail
        label = f" {claim['combine']} ".join(
            f"{c['category'].replace('_', ' ')} {c['high']}" for c in claims
        )
        block = "\n".join(
            f"category: {c['category']}; high: {c['high']}; low: {c['low']}; "
            f"scores: {c['high_mean']:.3f} vs {c['low_mean']:.3f}"
            for c in claims
        )
        if len(claims) > 1:
            block += f"\ncombine: {claim['combine']}"
        return (
            f"[BIAS DESCRIPTION]: {description}\n[BIAS LABEL]: {obj} with {label}\n"
            f"[RELIANCE]:\n{block}"
        )


# -- deciding --------------------------------------------------------------------------------------


def _noise(sds: dict[str, float], keys: list[str], n: int) -> float:
    """Twice the standard error of a mean of ``n`` images, from the values' spread within."""
    if not keys:
        return 0.0
    rms = (sum(float(sds.get(k, 0.0)) ** 2 for k in keys) / len(keys)) ** 0.5
    return 2 * rms / n**0.5


def rank(
    means: dict[str, float], sds: dict[str, float] | None = None, n: int = REPEATS
) -> list[dict[str, Any]]:
    """Each swept category's effect, strongest first: the spread of its values' mean scores,
    less the noise of a mean (an object the renderer mirrors at random scores differently
    for the same prompt, and a few images per value then spread by chance). Of two
    categories that say the same thing (background, background colour), the one whose high
    values are fewer."""
    sds = sds or {}
    by_cat: dict[str, dict[str, float]] = {}
    for key, mean in means.items():
        cat, sep, value = key.partition("=")
        if sep and cat in SWEPT:
            by_cat.setdefault(cat, {})[value] = float(mean)
    out = []
    for cat, values in by_cat.items():
        if len(values) < 2:
            continue
        high = max(values, key=values.get)
        low = min(values, key=values.get)
        spread = values[high] - values[low]
        # Of values tied at the bottom, the scene's default (what an image shows unasked).
        lows = [v for v in values if values[v] <= values[low] + 0.1 * spread]
        default = words.DEFAULTS.get(cat)
        low = default if default in lows and default != high else low
        highs = [v for v in values if values[v] >= values[high] - 0.25 * spread]
        noise = _noise(sds, [f"{cat}={v}" for v in values], n)
        out.append(
            {
                "category": cat,
                "high": high,
                "low": low,
                "spread": spread,
                "effect": spread - noise,
                "high_mean": values[high],
                "low_mean": values[low],
                "highs": len(highs),
                "values": len(values),
            }
        )
    out.sort(key=lambda r: (-round(r["effect"], 3), r["highs"]))
    kept: list[dict[str, Any]] = []
    for r in out:
        twin = next((k for k in kept if frozenset((k["category"], r["category"])) in SAME), None)
        if twin is None:
            kept.append(r)
        elif (r["highs"], r["category"] != "background_color") < (
            twin["highs"],
            twin["category"] != "background_color",
        ) and r["effect"] >= 0.8 * twin["effect"]:
            # Fewer high values explain more; on a tie the colour, which a named background
            # of that colour (a red brick wall, a blue sky) also has.
            kept[kept.index(twin)] = r
    return kept


def best_partner(sweep: dict[str, Any]) -> list[str]:
    """The other objects of the image that scored furthest above the median of all such
    images (the sweep's ``with_median``), when any stands out: those to narrow."""
    means, sds = sweep.get("means") or {}, sweep.get("sds")
    groups = {k[5:]: v for k, v in means.items() if k.startswith("with=")}
    median = sweep.get("with_median")
    if not groups or not isinstance(median, (int, float)):
        return []
    top = max(groups, key=groups.get)
    effects = [r["effect"] for r in rank(means, sds)]
    lift = groups[top] - median
    if lift < FLAT or (effects and lift < RUNNER_UP * max(effects)):
        return []
    # Every pair about as strong: look-alikes of one object (a basketball, a tennis ball).
    tied = sorted((g for g in groups if groups[g] >= groups[top] - 0.1 * lift), key=groups.get)
    names = [n for g in reversed(tied) for n in g.split("|")]
    return list(dict.fromkeys(names))[:MAX_PARTNERS]


def _candidate(
    cat: str, high: str, low: str, spread: float, high_mean: float, noise: float = 0.0
) -> dict[str, Any]:
    return {
        "category": cat,
        "high": high,
        "low": low,
        "spread": spread,
        "effect": spread - noise,
        "high_mean": high_mean,
        "low_mean": high_mean - spread,
        "highs": 1,
        "values": 2,
    }


def partner_candidate(cross: dict[str, Any]) -> dict[str, Any] | None:
    """A co-occurring object (its presence raises the score), or the relation to it (where it
    is raises it more)."""
    cmeans, csds = cross.get("means") or {}, cross.get("sds") or {}
    partners = (cross.get("plan") or {}).get("partners") or []
    if not partners or "alone:none" not in cmeans:
        return None
    base = cmeans["alone:none"]
    best = max(partners, key=lambda p: cmeans.get(f"alone:{p}", -1))
    lift = cmeans.get(f"alone:{best}", base) - base
    # Look-alikes that raise it as much are one object, named by the word they share.
    strong = [p for p in partners if cmeans.get(f"alone:{p}", base) - base >= 0.8 * lift]
    strong.sort(key=lambda p: -cmeans.get(f"alone:{p}", base))
    name, members = merge_lookalikes(strong)[0] if strong else (best, [best])
    noise = _noise(csds, [f"alone:{best}", "alone:none"], CROSS_REPEATS)
    rels = {r: cmeans.get(f"rel:{r} {best}") for r in words.RELATION_WORDS}
    rels = {r: v for r, v in rels.items() if v is not None}
    if rels:
        rhigh, rlow = max(rels, key=rels.get), min(rels, key=rels.get)
        rspread = rels[rhigh] - rels[rlow]
        rnoise = _noise(csds, [f"rel:{r} {best}" for r in rels], CROSS_REPEATS)
        if rspread - rnoise >= max(LARGE * lift, FLAT):
            low = words.OPPOSITE[rhigh]
            return _candidate(
                "relation",
                f"{rhigh} {name}",
                f"{low} {name}",
                rels[rhigh] - rels.get(low, rels[rlow]),
                rels[rhigh],
                rnoise,
            )
    if lift - noise >= FLAT:
        return _candidate("cooccurrence", name, "none", lift, base + lift, noise)
    return None


def decide(found: dict[str, Any]) -> dict[str, Any]:
    """The claims the findings so far support: ``{"claims": [...], "combine": ...}``."""
    sweep_found = found.get("RSWEEP") or {}
    sweep = sweep_found.get("means") or {}
    cross = found.get("RCROSS") or {}
    cmeans = cross.get("means") or {}
    ranked = rank(sweep, sweep_found.get("sds"))
    candidates: list[dict[str, Any]] = list(ranked)
    partner_claim = partner_candidate(cross)
    if partner_claim is not None:
        candidates.append(partner_claim)
    flip = cross.get("flip") or []
    if flip:
        mean = sum(flip) / len(flip)
        sd = (sum((f - mean) ** 2 for f in flip) / len(flip)) ** 0.5
        top_score = max(sweep.values(), default=0.0)
        candidates.append(
            _candidate(
                "orientation", "flipped", "upright", mean, top_score, 2 * sd / len(flip) ** 0.5
            )
        )
    candidates.sort(key=lambda r: (-round(r["effect"], 3), r["highs"]))
    if not candidates or candidates[0]["effect"] < FLAT:
        pair = best_pair(cmeans, cross.get("pair_median"))
        return pair or {"claims": [], "combine": "none"}
    top = candidates[0]
    big = LARGE * top["effect"]
    # Another object (or where it is) that raises the score by itself, beside a category that
    # does too: either is enough.
    if (
        top is partner_claim
        and ranked
        and ranked[0]["effect"] >= big
        and not _confounded(top, ranked[0])
    ):
        return {"claims": [top, ranked[0]], "combine": "or"}
    if (
        partner_claim is not None
        and top is not partner_claim
        and partner_claim["effect"] >= big
        and not _confounded(top, partner_claim)
    ):
        return {"claims": [top, partner_claim], "combine": "or"}
    chosen = top
    combine = "single"
    partner = None
    crossed = (cross.get("plan") or {}).get("crossed")
    for other in ranked if top["category"] == crossed else ():
        if other["category"] == top["category"] or _confounded(top, other):
            continue
        cells = {ab: cmeans.get(f"x:{other['category']}:{ab}") for ab in ("hh", "hl", "lh", "ll")}
        if any(v is None for v in cells.values()):
            continue
        a_alone = cells["hl"] - cells["ll"]
        b_alone = cells["lh"] - cells["ll"]
        if a_alone >= big and b_alone >= big:
            combine, partner = "or", other
            break
        if a_alone < big and b_alone >= big:
            chosen = other  # the runner-up carries the effect; the top one was a confound
            break
        if a_alone < big and b_alone < big and cells["hh"] - cells["ll"] >= big:
            combine, partner = "and", other
            break
    claims = [chosen] + ([partner] if partner is not None else [])
    if combine == "single":
        second = found.get("RSECOND") or {}
        held = rank(second.get("means") or {}, second.get("sds"))
        base = {r["category"]: r["effect"] for r in ranked}
        for r in held:
            if r["category"] == chosen["category"] or _confounded(chosen, r):
                continue
            # A planted-like condition holds for one value (or few) of a category: most values
            # low. A category most of whose values stay high only has a value that undoes the
            # first reliance (an orange background hides a red corner patch).
            selective = r["values"] < 4 or r["highs"] <= r["values"] // 2
            if (
                selective
                and r["effect"] >= LARGE * chosen["effect"]
                and base.get(r["category"], 0) < RUNNER_UP * r["effect"]
            ):
                return {"claims": [chosen, r], "combine": "and"}
    return {"claims": claims, "combine": combine}


# Categories whose renders cannot vary apart: a greyscale image has no colour; several
# instances are smaller and spread over the image; a big object cannot be off-centre.
CONFOUNDED = {
    frozenset(("color", "grayscale")),
    frozenset(("background_color", "grayscale")),
    frozenset(("position", "count")),
    frozenset(("size", "count")),
    frozenset(("size", "position")),
    # a rotated image puts the top at the bottom, and one object above another below it
    frozenset(("position", "orientation")),
    frozenset(("relation", "orientation")),
    # another object in the image makes the class's object smaller and moves it aside
    frozenset(("position", "relation")),
    frozenset(("position", "cooccurrence")),
    frozenset(("size", "relation")),
    frozenset(("size", "cooccurrence")),
}


def _confounded(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return frozenset((a["category"], b["category"])) in CONFOUNDED


def best_pair(cmeans: dict[str, float], median: float | None) -> dict[str, Any] | None:
    """From values of two categories tried together: the pair that scores far above the
    rest (their median), an AND of both (when any stands out)."""
    pairs = {k[5:]: v for k, v in cmeans.items() if k.startswith("pair:")}
    if not pairs or median is None:
        return None
    top = max(pairs, key=pairs.get)
    if pairs[top] - median < FLAT:
        return None
    claims = []
    for part in top.split("&"):
        cat, _, value = part.partition("=")
        low = words.DEFAULTS.get(cat) or words.other_value(cat, value) or ""
        claims.append(_candidate(cat, value, low, pairs[top] - median, pairs[top]))
    return {"claims": claims, "combine": "and"}


def edit_instruction(cat: str, value: str) -> str | None:
    """A scenes ``edit_images`` instruction that sets ``cat`` to ``value`` on an image of the
    object, or None where edits cannot (count, relation)."""
    if cat == "color":
        return f"make the {OBJ} {value}"
    if cat == "background":
        return f"change the background to {value if value != 'plain' else 'plain gray'}"
    if cat == "background_color":
        return f"change the background to plain {value}"
    if cat == "size":
        return f"make the {OBJ} {'much bigger' if value == 'large' else 'tiny'}"
    if cat == "position":
        where = {"left": "to the left", "right": "to the right", "top": "up", "bottom": "down"}
        return f"move the {OBJ} {where[value]}" if value in where else None
    if cat == "orientation":
        return {
            "rotated": "turn the image upside down",
            "upright": "remove the rotation",
            "flipped": f"flip the {OBJ}",
        }.get(value)
    if cat == "grayscale":
        return (
            "make the image black and white"
            if value == "grayscale"
            else "make the image colourful again"
        )
    if cat == "quality":
        return {
            "blurred": "blur the image",
            "noisy": "add noise",
            "sharp": "remove the blur and remove the noise",
        }.get(value)
    if cat == "shortcut":
        return {
            "corner patch": "add a red patch in the top left corner",
            "watermark": "add a watermark",
            "none": "remove the patch and remove the watermark",
        }.get(value)
    return None
