"""The evaluation summary: one row per backbone and target, as a CSV and a terminal table.

The input is the per-unit records that ``maia eval`` writes as ``eval.json`` next to each
unit's ``result.json`` (plain dicts; missing keys are tolerated)::

    {"backbone": "claude", "target": "synthetic:offline", "layer": "mono", "unit": 3,
     "label": "zebra", "description": "...", "status": "completed", "rounds": 7,
     "cost_usd": 0.12,                      # null when the backbone's price is unknown
     "tools_used": {"text2image": 4, "edit_images": 1},   # calls per tool in the transcript
     "predictive": null | {"prompts": "template", "n": 7, "text2image": "scenes", "seed": 123,
         "positive_prompts": ["..."], "negative_prompts": ["..."],
         "positive": [0.91, ...], "negative": [0.0, ...],   # one activation per image
         "mean_pos": 0.8, "mean_neg": 0.0, "auc": 1.0, "mad": null, "p_value": 0.001,
         "n_pos": 7, "n_neg": 7},
     "ground_truth": null | {"mode": "or", "concepts": ["dog", "horse"], "matched": ["dog"],
         "exact": false, "similarity": 0.83,
         "detection": {"f1": 0.8, "iou": 0.67, "auprc": 0.9, "pearson": 0.7, "n": 30,
                       "n_present": 12, "n_fired": 10, "fire_threshold": 0.0}},
     "thumbnails": {"positive": "<base64 JPEG>" | null, "negative": "<base64 JPEG>" | null},
     "report": "/abs/results/claude/synthetic-offline/mono/3/report.html"}
    # "report" is optional: absolute, or relative to eval.html's folder; eval.html links it
    # only when the file exists under that folder. Other keys ("notes", "evaluator_usage",
    # detection "prompts", "_dir") are carried along and ignored here.

Undefined scores are ``null`` (``metrics.*_scores`` never write NaN); here NaN, infinities,
booleans and non-numbers are treated as missing alike. Every mean is over the units where the
value exists, and each comes with its count (``*_n``), so a mean over 3 of 20 units shows.
Units that were not scored (failed, no label) count in ``units``, ``completed``, rounds and
cost, not in the scores. Units ``maia eval`` could not score (their record has ``"skipped"``:
why) are counted in ``skipped`` too.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from maia_core.files import atomic_write_text

# The target families of MAIA's paper, matched by substring of our target names (after
# dropping "-" and "_", so "resnet_152" matches too). Used to order targets like MAIA's plot
# and to pick its published reference numbers; the first match wins.
FAMILIES = (
    ("ResNet-152", ("resnet152",)),
    ("DINO", ("dino",)),
    ("CLIP", ("clip",)),
    ("Synthetic", ("synthetic",)),
)
SIGNIFICANCE = 0.05

# The CSV's columns, in order. Means are over the units that have the value; *_n counts them.
COLUMNS = (
    "backbone",
    "target",
    "task",  # describe, reliance, compare, ...
    "reflect",  # the run's --reflect N
    "units",  # records for this backbone and target
    "completed",  # of which the investigation completed
    "scored",  # of which have a predictive evaluation
    "skipped",  # of which maia eval could not score (a bad result.json, a target it cannot load)
    "auc_mean",
    "auc_n",
    "mad_mean",
    "mad_n",
    "significant_pct",  # % of units with a one-sided Mann-Whitney p below 0.05
    "significant_n",  # units with a p-value
    "mean_pos_pooled",  # MAIA's panel a: every positive image's activation, pooled over units
    "mean_neg_pooled",
    "images_pos",
    "images_neg",
    "mean_pos_units",  # the mean of per-unit means (each unit weighs the same)
    "mean_neg_units",
    "unit_means_n",
    "exact_pct",  # ground truth only: % of labels that name exactly the true concepts
    "exact_n",
    "similarity_mean",  # label-to-truth text similarity
    "similarity_n",
    "f1_mean",
    "f1_n",
    "iou_mean",
    "iou_n",
    "auprc_mean",
    "auprc_n",
    "pearson_mean",
    "pearson_n",
    # reliance, on planted models: % whose first claim names the planted category; its value
    "category_pct",
    "category_n",
    "value_pct",
    "value_n",
    # ...and on AND/OR models: % whose claims name both conditions (SAIA's tables 7-8)
    "both_pct",
    "both_n",
    # reliance and compare: predictiveness on held-out renders (share of images on the
    # predicted side of the midpoint of the medians); the planted truth's own is the ceiling
    "predictiveness_mean",
    "predictiveness_n",
    "ceiling_mean",
    "ceiling_n",
    # compare: % of answers whose [DIFFERENCE] names every concept that differs
    "difference_pct",
    "difference_n",
    "rounds_mean",
    "rounds_n",
    "cost_usd",  # the sum of the known costs; empty when none is known
    "cost_n",  # units whose cost is known
)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, NaN, inf, a bool, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def family(target: Any) -> str | None:
    """The MAIA paper family a target belongs to (``"ResNet-152"``...), or None."""
    name = str(target or "").lower().replace("-", "").replace("_", "")
    for fam, needles in FAMILIES:
        if any(n in name for n in needles):
            return fam
    return None


def target_key(target: Any) -> tuple:
    """Sort key: MAIA's order (ResNet-152, DINO, CLIP, Synthetic) first, then by name."""
    names = [f for f, _ in FAMILIES]
    fam = family(target)
    return (names.index(fam) if fam else len(names), str(target))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)):
        return []
    return [v for v in map(number, values) if v is not None]


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _name(value: Any) -> str:
    return "?" if value is None else str(value)


def reflect_of(record: dict[str, Any]) -> int:
    value = record.get("reflect")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def shown_backbone(record: dict[str, Any]) -> str:
    """A backbone as the table, plots and cards name it: with ``+reflect N`` when it
    reflected."""
    n = reflect_of(record)
    return _name(record.get("backbone")) + (f" +reflect {n}" if n else "")


def group(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records by (backbone, target), in table order; a backbone with reflection apart."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if isinstance(record, dict):
            key = (shown_backbone(record), _name(record.get("target")))
            groups.setdefault(key, []).append(record)
    return {k: groups[k] for k in sorted(groups, key=lambda k: (target_key(k[1]), k[0]))}


def task_groups(records: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Records by (backbone, target, task, reflect), in table order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        if isinstance(record, dict):
            key = (
                _name(record.get("backbone")),
                _name(record.get("target")),
                str(record.get("task") or "describe"),
                reflect_of(record),
            )
            groups.setdefault(key, []).append(record)
    return {
        k: groups[k]
        for k in sorted(
            groups, key=lambda k: (target_key(k[1]), k[2] != "describe", k[2], k[0], k[3])
        )
    }


def pooled_means(records: list[dict[str, Any]]) -> tuple[float | None, float | None, int, int]:
    """MAIA's pooled means: every image's activation over all units, positive and negative."""
    pos = [v for r in records for v in _numbers(_dict(r.get("predictive")).get("positive"))]
    neg = [v for r in records for v in _numbers(_dict(r.get("predictive")).get("negative"))]
    return _mean(pos), _mean(neg), len(pos), len(neg)


def unit_mean(predictive: dict[str, Any], side: str) -> float | None:
    """A unit's mean activation on one side ("pos" or "neg"): as stored, else from the list."""
    stored = number(predictive.get(f"mean_{side}"))
    if stored is not None:
        return stored
    return _mean(_numbers(predictive.get("positive" if side == "pos" else "negative")))


def _summarize_group(
    backbone: str,
    target: str,
    records: list[dict[str, Any]],
    task: str = "describe",
    reflect: int = 0,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "backbone": backbone,
        "target": target,
        "task": task,
        "reflect": reflect,
        "units": len(records),
    }
    row["completed"] = sum(r.get("status") == "completed" for r in records)
    predictive = [p for p in (r.get("predictive") for r in records) if isinstance(p, dict)]
    row["scored"] = len(predictive)
    row["skipped"] = sum(bool(r.get("skipped")) for r in records)

    def mean_of(values: list[Any], key: str) -> None:
        present = [v for v in map(number, values) if v is not None]
        row[f"{key}_mean"], row[f"{key}_n"] = _mean(present), len(present)

    mean_of([p.get("auc") for p in predictive], "auc")
    mean_of([p.get("mad") for p in predictive], "mad")
    ps = [v for v in (number(p.get("p_value")) for p in predictive) if v is not None]
    row["significant_pct"] = 100.0 * sum(v < SIGNIFICANCE for v in ps) / len(ps) if ps else None
    row["significant_n"] = len(ps)

    pos, neg, n_pos, n_neg = pooled_means(records)
    row.update(mean_pos_pooled=pos, mean_neg_pooled=neg, images_pos=n_pos, images_neg=n_neg)
    # A unit counts in the mean of means only with both sides, so the two stay comparable.
    pairs = [(unit_mean(p, "pos"), unit_mean(p, "neg")) for p in predictive]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    row["mean_pos_units"] = _mean([a for a, _ in pairs])
    row["mean_neg_units"] = _mean([b for _, b in pairs])
    row["unit_means_n"] = len(pairs)

    truths = [t for t in (r.get("ground_truth") for r in records) if isinstance(t, dict)]
    exact = [t["exact"] for t in truths if isinstance(t.get("exact"), bool)]
    row["exact_pct"] = 100.0 * sum(exact) / len(exact) if exact else None
    row["exact_n"] = len(exact)
    mean_of([t.get("similarity") for t in truths], "similarity")
    detections = [_dict(t.get("detection")) for t in truths]
    for key in ("f1", "iou", "auprc", "pearson"):
        mean_of([d.get(key) for d in detections], key)

    planted = [t for t in truths if t.get("kind") == "planted"]
    share_of([t.get("category_right") for t in planted], "category", row)
    share_of([t.get("value_right") for t in planted], "value", row)
    pairs = [t for t in planted if (number(t.get("parts")) or 0) > 1]
    share_of([t.get("parts_found") == t.get("parts") for t in pairs], "both", row)
    mean_of([p.get("predictiveness") for p in predictive], "predictiveness")
    mean_of([t.get("ceiling") for t in planted], "ceiling")
    share_of([t.get("names_difference") for t in truths], "difference", row)

    mean_of([r.get("rounds") for r in records], "rounds")
    costs = [v for v in (number(r.get("cost_usd")) for r in records) if v is not None]
    row["cost_usd"] = math.fsum(costs) if costs else None
    row["cost_n"] = len(costs)
    return row


def share_of(values: list[Any], key: str, row: dict[str, Any]) -> None:
    """``row[key_pct]``: the % of the booleans among ``values`` that are true; ``key_n``."""
    flags = [v for v in values if isinstance(v, bool)]
    row[f"{key}_pct"] = 100.0 * sum(flags) / len(flags) if flags else None
    row[f"{key}_n"] = len(flags)


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per backbone, target, task and --reflect (keys: ``COLUMNS``), ordered by target,
    task, then backbone."""
    return [
        _summarize_group(b, t, rs, task, n) for (b, t, task, n), rs in task_groups(records).items()
    ]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))  # full enough, without 0.30000000000000004
    return str(value)


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """``rows`` as CSV (header ``COLUMNS``; empty cell = not available), written atomically."""
    return atomic_write_text(path, csv_text(rows), errors="replace")


# -- display (the terminal table and eval.html share these) -----------------------------------

MISSING = "–"


def fmt(value: Any, digits: int = 2) -> str:
    v = number(value)
    return MISSING if v is None else f"{v:.{digits}f}"


def _with_n(value: Any, n: Any, full: Any = None, digits: int = 2, suffix: str = "") -> str:
    """A mean, with its count in brackets unless it covers all ``full`` units."""
    v = number(value)
    if v is None:
        return MISSING
    text = f"{v:.{digits}f}{suffix}"
    return text if full is not None and n == full else f"{text} ({n})"


def fmt_cost(row: dict[str, Any]) -> str:
    cost, n, units = number(row.get("cost_usd")), row.get("cost_n") or 0, row.get("units")
    if cost is None:
        return "n/a"
    return f"${cost:.2f}" if n == units else f"${cost:.2f} ({n} of {units} known)"


def _pair_text(row: dict[str, Any], a: str, b: str) -> str:
    return f"{fmt(row.get(a))} / {fmt(row.get(b))}"


def display_rows(
    rows: list[dict[str, Any]], *, compact: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the summary, as eval.html (and, ``compact``, the terminal)
    shows it. Columns with no value in any row are left out (ground truth on a run with none).
    """
    columns: list[tuple[str, str, Any]] = [
        ("Backbone", "Backbone", shown_backbone),
        ("Target", "Target", lambda r: str(r.get("target")) + (f" ({r['task']})" if r.get("task") not in (None, "describe") else "")),
        ("Completed", "Completed", lambda r: f"{r.get('completed', 0)}/{r.get('units', 0)}"),
        ("Not scored (skipped)", "Skipped", lambda r: str(r["skipped"]) if r.get("skipped") else MISSING),
        ("AUC", "AUC", lambda r: _with_n(r.get("auc_mean"), r.get("auc_n"), r.get("scored"))),
        ("MAD", "MAD", lambda r: _with_n(r.get("mad_mean"), r.get("mad_n"), r.get("scored"))),
        ("p<0.05", "p<0.05 (% of units)", lambda r: _with_n(r.get("significant_pct"), r.get("significant_n"), r.get("scored"), 0, "%")),
        ("Pos / neg (pooled)", "", lambda r: _pair_text(r, "mean_pos_pooled", "mean_neg_pooled")),
        ("", "Pos (mean activation)", lambda r: fmt(r.get("mean_pos_pooled"))),
        ("", "Neg (mean activation)", lambda r: fmt(r.get("mean_neg_pooled"))),
        ("Pos / neg (unit means)", "", lambda r: _pair_text(r, "mean_pos_units", "mean_neg_units")),
        ("Exact", "Exact match", lambda r: _with_n(r.get("exact_pct"), r.get("exact_n"), r.get("scored"), 0, "%")),
        # The other ground-truth scores exist where the ground truth does (exact_n units).
        ("Similarity", "Similarity", lambda r: _with_n(r.get("similarity_mean"), r.get("similarity_n"), r.get("exact_n"))),
        ("F1", "F1", lambda r: _with_n(r.get("f1_mean"), r.get("f1_n"), r.get("exact_n"))),
        ("IoU", "IoU", lambda r: _with_n(r.get("iou_mean"), r.get("iou_n"), r.get("exact_n"))),
        ("AUPRC", "AUPRC", lambda r: _with_n(r.get("auprc_mean"), r.get("auprc_n"), r.get("exact_n"))),
        ("Category", "Category right", lambda r: _with_n(r.get("category_pct"), r.get("category_n"), r.get("scored"), 0, "%")),
        ("Value", "Value right", lambda r: _with_n(r.get("value_pct"), r.get("value_n"), r.get("scored"), 0, "%")),
        ("Both parts (AND/OR)", "Both parts", lambda r: _with_n(r.get("both_pct"), r.get("both_n"), None, 0, "%")),
        ("Predictiveness", "Predictiveness", lambda r: _with_n(r.get("predictiveness_mean"), r.get("predictiveness_n"), r.get("scored"))),
        ("Ceiling (truth)", "Ceiling", lambda r: _with_n(r.get("ceiling_mean"), r.get("ceiling_n"), r.get("category_n"))),
        ("Difference named", "Difference", lambda r: _with_n(r.get("difference_pct"), r.get("difference_n"), r.get("scored"), 0, "%")),
        ("Rounds", "Rounds", lambda r: _with_n(r.get("rounds_mean"), r.get("rounds_n"), r.get("units"), 1)),
        ("Cost", "Cost", fmt_cost),
    ]  # fmt: skip
    if compact:  # the terminal: short headers, and the unit means left to the CSV and HTML
        columns = [(short, short, f) for _, short, f in columns if short]
    else:
        columns = [c for c in columns if c[0]]
    cells = [[f(r) for _, _, f in columns] for r in rows]
    keep = [
        i
        for i in range(len(columns))
        if i < 3 or columns[i][0] == "Cost" or any(row[i] != MISSING for row in cells)
    ]
    return [columns[i][0] for i in keep], [[row[i] for i in keep] for row in cells]


LEGEND = (
    "Means over the units that have the value; (k) = over k units only. AUC: P(a positive image "
    "out-scores a negative one), 0.5 = chance. MAD: (mean pos - mean neg) / std neg. p<0.05: % of "
    "units whose positives beat negatives at one-sided Mann-Whitney p<0.05. Pos / neg (pooled): "
    "mean activation over every image, as MAIA plots it. Exact, Similarity, F1, IoU, AUPRC: "
    "against the ground truth. Category, Value: reliance claims against the planted condition; "
    "Both parts: AND/OR models whose claims name both conditions. Predictiveness: the share of "
    "held-out renders on the side the answer predicts (Ceiling: the planted truth's own). "
    "Difference named: compare answers that name every concept that differs."
)


def rich_table(rows: list[dict[str, Any]]):
    """The summary as a ``rich.table.Table`` for the terminal: one column per backbone and
    target, one row per score. Transposed from the CSV because a benchmark compares a few
    backbones on many scores, which fits an 80-column terminal this way round."""
    from rich import box
    from rich.table import Table

    headers, cells = display_rows(rows, compact=True)
    table = Table(
        title="maia eval",
        caption="(k): over k units only. Pos, Neg: every image pooled, as MAIA plots.",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    table.add_column("", style="bold", no_wrap=True)
    for row in cells:
        table.add_column(f"{row[0]}\n{row[1]}", justify="right", overflow="fold")
    for i, name in enumerate(headers[2:], start=2):
        table.add_row(name, *(row[i] for row in cells))
    return table
