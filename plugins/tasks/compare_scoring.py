"""``maia eval`` for ``compare`` answers.

- **Ground truth** (pairs of units whose concepts are known: synthetic neurons, whose truth the
  run recorded): whether ``[DIFFERENCE]`` names every concept that differs between the two
  units (``zebra`` vs ``zebra AND grass``: grass), read with the scenes matcher; whether each
  ``[LABEL n]`` names exactly its unit's concepts; MiniLM similarity of the labels to the
  truths beside them.
- **Predictive**: prompts from label 1 predicted to drive unit 1 more than unit 2, and from
  label 2 the reverse, rendered and scored as the task scores a pair (unit 1's activation minus
  unit 2's), with the same scores as every task.
"""

from __future__ import annotations

from typing import Any

from maia_core.task import Answer, Subject
from maia_core.units import Unit
from maia_plugins.tasks.compare import CompareTask


def score_compare(scorer: Any, result: dict[str, Any]) -> dict[str, Any]:
    answer = result.get("answer") if isinstance(result.get("answer"), dict) else {}
    labels = [str(x) for x in answer.get("labels") or ()][:2]
    difference = str(answer.get("difference") or result.get("description") or "")
    units = [
        Unit(str(u["layer"]), int(u["unit"]))
        for u in result.get("units") or ()
        if isinstance(u, dict) and "layer" in u and "unit" in u
    ]
    out: dict[str, Any] = {"predictive": None, "ground_truth": None}
    if len(units) != 2 or len(labels) != 2:
        return out
    subject = Subject(tuple(units))
    high, low = CompareTask().predictions(
        Answer(difference, " | ".join(labels), answer), {}, scorer.n
    )
    out["predictive"] = scorer.predictive(subject, high, low, scorer.seed)
    out["_thumbnails"] = out["predictive"].pop("_thumbnails")
    truth = result.get("ground_truth")
    truths = truth.get("units") if isinstance(truth, dict) else None
    if (
        not isinstance(truths, list)
        or len(truths) != 2
        or not all(isinstance(t, dict) and isinstance(t.get("concepts"), list) for t in truths)
    ):
        return out
    concepts = [{str(c).lower() for c in t["concepts"]} for t in truths]
    differ = sorted(concepts[0] ^ concepts[1])
    named = set(scorer.concepts(difference))
    exact = [set(scorer.concepts(label)) == c for label, c in zip(labels, concepts)]
    out["ground_truth"] = {
        "concepts": [sorted(c) for c in concepts],
        "modes": [t.get("mode") for t in truths],
        "differ": differ,
        "named": sorted(named),
        "names_difference": bool(differ) and set(differ) <= named,
        "labels_exact": exact,
        "exact": all(exact),
        "similarity": sum(
            scorer.similarity(label, " ".join(sorted(c))) for label, c in zip(labels, concepts)
        )
        / 2,
    }
    return out
