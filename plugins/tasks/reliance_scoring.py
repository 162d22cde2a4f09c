"""``maia eval`` for ``reliance`` answers: the claims against the planted truth, and by prediction.

- **Ground truth** (planted-reliance models, ``reliance:<set>``; the truth the run recorded):
  the category and the value of each claim by exact match against each planted condition,
  values read in the scenes' words (``grey`` is ``gray``; a co-occurring ``tennis ball`` is a
  ``ball``); for AND/OR models how many of the two conditions the claims name (SAIA's tables
  7-8: both, one, none) and whether they combine them the same way; MiniLM similarity between
  the claims and the truth beside it.
- **Predictiveness on held-out renders from the claim**, as SAIA measures it: the claims'
  template prompts (the object with the high value; with the low value and the category's other
  values) rendered with a seed reflection never used, scored by the class, and the share of
  images on their predicted side of the midpoint of the two groups' medians. The ground
  truth's own claims, scored the same way, are the ceiling. For a model with no planted truth
  (an ImageNet class) only the predictiveness.
"""

from __future__ import annotations

from typing import Any

from maia_core.task import Subject
from maia_core.units import Unit
from maia_plugins.tasks import reliance_words as words
from maia_plugins.tasks.reliance import claim_prompts


def truth_claims(truth: dict[str, Any]) -> list[dict[str, str]]:
    """A planted truth's conditions as claims: the value that holds scores high."""
    out = []
    for c in truth.get("conditions") or ():
        if not isinstance(c, dict):
            continue
        cat, value = str(c.get("category")), str(c.get("value"))
        if cat == "relation" and c.get("object"):
            value = f"{value} {c['object']}"
        out.append({"category": cat, "high": value, "low": words.other_value(cat, value) or ""})
    return out


def _head(text: str) -> str:
    return text.lower().split()[-1] if text.strip() else ""


def same_value(category: str, said: str, truth: str) -> bool:
    """Whether a claimed value is the planted one, in the scenes' words. An object matches by
    its head noun (a ``tennis ball`` is a ``ball``), a relation by its word and its object."""
    said, truth = words.value(category, said), words.value(category, truth)
    if said == truth:
        return True
    if category == "cooccurrence":
        return _head(said) == _head(truth)
    if category == "relation":
        rel_s = next((r for r in words.RELATION_WORDS if said.startswith(r + " ")), None)
        rel_t = next((r for r in words.RELATION_WORDS if truth.startswith(r + " ")), None)
        return rel_s is not None and rel_s == rel_t and _head(said) == _head(truth)
    return False


def claims_text(obj: str, claims: list[dict[str, Any]], combine: str) -> str:
    """Claims said the way the planted truth's label says them."""
    joiner = f" {combine} " if combine in ("and", "or") else " and "
    said = joiner.join(f"{c['category'].replace('_', ' ')} {c['high']}" for c in claims)
    return f"{obj}, relying on {said}" if said else f"{obj}, relying on nothing"


def score_reliance(scorer: Any, result: dict[str, Any]) -> dict[str, Any]:
    answer = result.get("answer") if isinstance(result.get("answer"), dict) else {}
    claims = [
        c
        for c in answer.get("claims") or ()
        if isinstance(c, dict) and c.get("category") in words.ANSWER_CATEGORIES
    ]
    combine = str(answer.get("combine") or "single")
    subject = Subject.of(Unit(result["layer"], result["unit"]))
    obj = str(scorer.attrs(subject).get("class_name") or "object")
    out: dict[str, Any] = {"predictive": None, "ground_truth": None}
    high, low = claim_prompts(obj, claims, combine, scorer.n)
    if high and low:
        out["predictive"] = scorer.predictive(subject, high, low, scorer.seed)
        out["_thumbnails"] = out["predictive"].pop("_thumbnails")
    truth = result.get("ground_truth")
    if not isinstance(truth, dict) or truth.get("kind") != "planted":
        return out
    planted = truth_claims(truth)
    mode = str(truth.get("mode") or "single")
    found_category = [any(c["category"] == t["category"] for c in claims) for t in planted]
    found_value = [
        any(
            c["category"] == t["category"] and same_value(t["category"], str(c["high"]), t["high"])
            for c in claims
        )
        for t in planted
    ]
    exact = all(found_value) and len(claims) == len(planted) and combine == mode
    ceiling = None
    t_high, t_low = claim_prompts(obj, planted, mode, scorer.n)
    if t_high and t_low:
        ceiling = scorer.predictive(subject, t_high, t_low, scorer.seed)
        ceiling.pop("_thumbnails", None)
    out["ground_truth"] = {
        "kind": "planted",
        "mode": mode,
        "alpha": truth.get("alpha"),
        "category": truth.get("category"),
        "value": truth.get("value"),
        "truth": truth.get("label"),
        "claimed": claims_text(obj, claims, combine),
        # the first (for a single model, the only) condition, as SAIA scores a single model
        "category_right": found_category[0] if found_category else False,
        "value_right": found_value[0] if found_value else False,
        # every condition of an AND/OR model
        "parts": len(planted),
        "parts_found": sum(found_value),
        "categories_found": sum(found_category),
        "combine_right": combine == mode,
        "exact": bool(exact),
        "similarity": scorer.similarity(claims_text(obj, claims, combine), str(truth.get("label"))),
        "ceiling": ceiling.get("predictiveness") if ceiling else None,
        "ceiling_predictive": ceiling,
    }
    return out
