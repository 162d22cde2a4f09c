"""``eval.html``: the evaluation in one self-contained page.

The summary table, the plots, then every unit (by target, layer and unit) with each backbone's
label, description, scores, ground truth and the top positive and negative images side by
side, linked to that backbone's ``report.html``. As maia's other reports: no script, no network
(the same Content-Security-Policy), images as data URIs, every piece of text escaped.
"""

from __future__ import annotations

import base64
import binascii
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from maia_core.files import atomic_write_text
from maia_core.images import data_uri
from maia_plugins.evaluation.plots import PANELS, REFERENCE_LABEL, SUMMARY
from maia_plugins.evaluation.summary import (
    LEGEND,
    MISSING,
    display_rows,
    fmt,
    number,
    shown_backbone,
    summarize,
    target_key,
)
from maia_plugins.reporters.html_report import CSP, CSS, describe_truth

EVAL_CSS = """
h2 { font-size: 18px; margin: 28px 0 10px; }
h3 { font-size: 16px; margin: 0 0 4px; }
.scroll { overflow-x: auto; }
table.index td, table.index th { font-size: 13px; white-space: nowrap; }
.note { color: var(--muted); font-size: 13px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots figure { margin: 0; flex: 0 1 520px; max-width: 100%; }
.plots img { width: 100%; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
.plots figcaption { color: var(--muted); font-size: 13px; }
section.unit { margin: 22px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; margin-top: 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .head { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.card .label { font-weight: 600; margin: 6px 0 2px; word-wrap: break-word; }
table.scores { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
table.scores th { text-align: left; color: var(--muted); font-weight: 500; padding: 1px 12px 1px 0; vertical-align: top; white-space: nowrap; }
table.scores td { padding: 1px 0; }
.thumbs { display: flex; gap: 8px; margin-top: 6px; }
.thumbs figure { margin: 0; }
.thumbs img { width: 112px; height: 112px; object-fit: contain; background: #f0f1f4; border-radius: 4px; border: 1px solid var(--line); display: block; }
.thumbs figcaption { font-size: 12px; color: var(--muted); }
.yes { color: #176b2c; font-weight: 600; } .no { color: #a11a14; font-weight: 600; }
ul.prompts { margin: 2px 0 6px; padding-left: 18px; font-size: 13px; }
"""
CAPTIONS = {
    "summary_panel": "a) mean activation on positive and negative images, b) tool usage, c) rounds",
    "activation_means": (
        "a) Mean activation on positive (+) and negative (_) images, every image pooled. "
        f"Grey: {REFERENCE_LABEL} (other models and renderer)."
    ),
    "tool_usage": "b) % of each backbone's investigations that called each tool",
    "rounds": "c) Rounds per investigation (box: quartiles; line: median; triangle: mean)",
    "task_scores": (
        "Tasks other than describe: reliance claims against the planted truth (category, value, "
        "both parts of AND/OR), predictiveness on held-out renders and the truth's own (ceiling); "
        "compare answers that name what differs"
    ),
}
STATUSES = ("completed", "incomplete", "failed", "running")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: str) -> str:
    # html_report._page carries pygments' styles and no room for ours; same head otherwise.
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}{EVAL_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _unit_key(record: dict[str, Any]) -> tuple:
    unit = record.get("unit")
    numeric = isinstance(unit, int) and not isinstance(unit, bool)
    return (
        target_key(record.get("target")),
        str(record.get("task") or "describe"),
        str(record.get("layer")),
        (0, unit, "") if numeric else (1, 0, str(unit)),
        _subject(record),
    )


def _subject(record: dict[str, Any]) -> str:
    """A pair's units (compare), as ``layer4=122 + layer4=210``; one unit's as nothing."""
    units = record.get("units")
    if not isinstance(units, list) or len(units) < 2:
        return ""
    return " + ".join(f"{u.get('layer')}={u.get('unit')}" for u in units if isinstance(u, dict))


def _yes(value: Any) -> str:
    return '<span class="yes">yes</span>' if value else '<span class="no">no</span>'


def report_link(value: Any, root: Path) -> str | None:
    """The href of a unit's report: relative to ``root`` (eval.html's folder), only if the file
    is there. ``value`` may be relative to ``root`` or absolute under it; anything else (another
    folder, a URL, a missing file) gives no link."""
    if not isinstance(value, str) or not value.strip():
        return None
    root = root.resolve()
    path = Path(value)
    try:
        rel = (path if path.is_absolute() else root / path).resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    if not (root / rel).is_file():
        return None
    return "/".join(quote(part) for part in rel.parts)


def _thumbnail(value: Any) -> str | None:
    """A data URI for a base64 image from the record; None unless it decodes to an image."""
    if not isinstance(value, str) or not value:
        return None
    try:
        data = base64.b64decode(value, validate=True)
        return data_uri(data)  # sniffs the type; raises ValueError for what is not an image
    except (binascii.Error, ValueError):
        return None


def render_summary(records: list[dict[str, Any]]) -> str:
    headers, cells = display_rows(summarize(records))
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in cells)
    return (
        f'<div class="scroll"><table class="index"><thead><tr>{head}</tr></thead>'
        f'<tbody>{body}</tbody></table></div><p class="note">{_e(LEGEND)}</p>'
    )


def render_plots(plots: Sequence[str | Path]) -> str:
    paths = [Path(p) for p in plots if Path(p).suffix.lower() == ".png" and Path(p).is_file()]
    # The panels alone are larger and more legible than the combined figure, which repeats them.
    if any(p.name in PANELS for p in paths):
        paths = [p for p in paths if p.name != SUMMARY]
    figures = []
    for p in paths:
        caption = CAPTIONS.get(p.stem, p.stem)
        figures.append(
            f'<figure><img alt="{_e(p.stem)}" src="{data_uri(p.read_bytes(), "image/png")}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return f'<div class="plots">{"".join(figures)}</div>' if figures else ""


def _row(name: str, value: str) -> str:
    return f"<tr><th>{_e(name)}</th><td>{value}</td></tr>"


def _prompts(predictive: dict[str, Any]) -> str:
    pos, neg = predictive.get("positive_prompts"), predictive.get("negative_prompts")
    if not isinstance(pos, list) and not isinstance(neg, list):
        return ""
    pos, neg = pos if isinstance(pos, list) else [], neg if isinstance(neg, list) else []

    def items(prompts: list[Any]) -> str:
        return "".join(f"<li>{_e(p)}</li>" for p in prompts)

    how = ", ".join(
        _e(f"{k} {predictive[k]}") for k in ("prompts", "text2image", "seed") if predictive.get(k) is not None
    )  # fmt: skip
    return (
        f"<details><summary>Prompts ({len(pos)} + {len(neg)}{', ' + how if how else ''})</summary>"
        f'<b>Positive</b><ul class="prompts">{items(pos)}</ul>'
        f'<b>Negative</b><ul class="prompts">{items(neg)}</ul></details>'
    )


def _scores(record: dict[str, Any]) -> str:
    rows = []
    predictive = record.get("predictive")
    if isinstance(predictive, dict):
        p = number(predictive.get("p_value"))
        rows += [
            _row("AUC", _e(fmt(predictive.get("auc")))),
            _row("MAD", _e(fmt(predictive.get("mad")))),
            _row("p (one-sided)", _e(MISSING if p is None else f"{p:.2g}")),
            _row(
                "Mean pos / neg",
                _e(
                    f"{fmt(predictive.get('mean_pos'))} / {fmt(predictive.get('mean_neg'))}"
                    f" ({predictive.get('n_pos', '?')} + {predictive.get('n_neg', '?')} images)"
                ),
            ),
        ]
    if isinstance(predictive, dict) and number(predictive.get("predictiveness")) is not None:
        rows.append(_row("Predictiveness", _e(fmt(predictive.get("predictiveness")))))
    truth = record.get("ground_truth")
    if isinstance(truth, dict) and truth.get("kind") == "planted":
        rows += [
            _row(
                "Category",
                f"{_yes(truth.get('category_right'))} (planted: {_e(truth.get('category'))})",
            ),
            _row("Value", f"{_yes(truth.get('value_right'))} (planted: {_e(truth.get('value'))})"),
        ]
        if (number(truth.get("parts")) or 0) > 1:
            rows.append(
                _row(
                    "Parts found",
                    _e(f"{truth.get('parts_found')} of {truth.get('parts')} ({truth.get('mode')})"),
                )
            )
        if number(truth.get("ceiling")) is not None:
            rows.append(_row("Ceiling (truth)", _e(fmt(truth.get("ceiling")))))
    if isinstance(truth, dict) and isinstance(truth.get("names_difference"), bool):
        differ = ", ".join(map(str, truth.get("differ") or ())) or "nothing"
        rows.append(
            _row("Difference named", f"{_yes(truth['names_difference'])} (differ: {_e(differ)})")
        )
    if isinstance(truth, dict) and truth.get("kind") != "planted":
        if isinstance(truth.get("exact"), bool) and "matched" in truth:
            matched = truth.get("matched")
            names = (
                ", ".join(map(str, matched)) if isinstance(matched, list) and matched else "nothing"
            )
            mark = (
                '<span class="yes">yes</span>' if truth["exact"] else '<span class="no">no</span>'
            )
            rows.append(_row("Exact", f"{mark} (label matches {_e(names)})"))
        if number(truth.get("similarity")) is not None:
            rows.append(_row("Similarity", _e(fmt(truth.get("similarity")))))
        detection = truth.get("detection")
        if isinstance(detection, dict):
            text = ", ".join(
                f"{name} {fmt(detection.get(key))}"
                for key, name in (
                    ("f1", "F1"),
                    ("iou", "IoU"),
                    ("auprc", "AUPRC"),
                    ("pearson", "r"),
                )
            )
            if detection.get("n") is not None:
                text += (
                    f" ({detection.get('n_present', '?')} of {detection.get('n')} images show it)"
                )
            rows.append(_row("Detection", _e(text)))
    rows.append(
        _row("Rounds", _e(record.get("rounds") if record.get("rounds") is not None else MISSING))
    )
    return f'<table class="scores">{"".join(rows)}</table>'


def _thumbs(record: dict[str, Any]) -> str:
    thumbs = record.get("thumbnails")
    if not isinstance(thumbs, dict):
        return ""
    figures = []
    for side in ("positive", "negative"):
        uri = _thumbnail(thumbs.get(side))
        if uri:
            figures.append(
                f'<figure><img alt="{side} image" src="{uri}">'
                f"<figcaption>top {side}</figcaption></figure>"
            )
    return f'<div class="thumbs">{"".join(figures)}</div>' if figures else ""


def render_card(record: dict[str, Any], root: Path) -> str:
    status = str(record.get("status") or "unknown")
    badge = f'<span class="badge {status if status in STATUSES else ""}">{_e(status)}</span>'
    href = report_link(record.get("report"), root)
    link = f'<a href="{_e(href)}">report</a>' if href else ""
    label = record.get("label")
    description = record.get("description")
    desc = (
        f'<details><summary>Description</summary><div class="prose">{_e(description)}</div></details>'
        if description
        else ""
    )
    predictive = record.get("predictive")
    prompts = _prompts(predictive) if isinstance(predictive, dict) else ""
    skipped = (
        f'<div class="note">Not scored: {_e(record["skipped"])}</div>'
        if record.get("skipped")
        else ""
    )
    return (
        f'<div class="card"><div class="head"><b>{_e(shown_backbone(record))}</b>{badge}{link}</div>'
        f'<div class="label">{_e(label) if label else MISSING}</div>{desc}{skipped}'
        f"{_scores(record)}{prompts}{_thumbs(record)}</div>"
    )


def render_units(records: list[dict[str, Any]], root: Path) -> str:
    units: dict[tuple, list[dict[str, Any]]] = {}
    for record in sorted(records, key=_unit_key):
        units.setdefault(_unit_key(record), []).append(record)
    sections = []
    for group in units.values():
        first = group[0]
        task = str(first.get("task") or "describe")
        title = f"{first.get('target')} · {first.get('layer')} · unit {first.get('unit')}"
        if _subject(first):
            title = f"{first.get('target')} · {_subject(first)}"
        if task != "describe":
            title += f" · {task}"
        truth = next(
            (r["ground_truth"] for r in group if isinstance(r.get("ground_truth"), dict)), None
        )
        if isinstance(truth, dict) and truth.get("truth"):
            said = f"{truth['truth']} (alpha {truth.get('alpha')})"
        elif (
            isinstance(truth, dict)
            and isinstance(truth.get("concepts"), list)
            and truth.get("differ") is not None
        ):
            said = " | ".join(", ".join(map(str, c)) for c in truth["concepts"])
        else:
            said = describe_truth(truth) if truth else ""
        truth_html = f'<div class="truth"><b>Ground truth:</b> {_e(said)}</div>' if truth else ""
        cards = "".join(
            render_card(r, root)
            for r in sorted(group, key=lambda r: (str(r.get("backbone")), r.get("reflect") or 0))
        )
        sections.append(
            f'<section class="unit"><h3>{_e(title)}</h3>{truth_html}<div class="cards">{cards}</div></section>'
        )
    return "".join(sections)


def render_eval(
    records: Iterable[dict[str, Any]], root: Path, plots: Sequence[str | Path] = ()
) -> str:
    """The page as a string; ``root`` is the folder it will live in (for the report links)."""
    records = [r for r in records if isinstance(r, dict)]
    backbones = sorted({str(r.get("backbone")) for r in records})
    targets = sorted({str(r.get("target")) for r in records}, key=target_key)
    how = sorted(
        {
            f"{p.get('prompts')} prompts, rendered by {p.get('text2image')}"
            if p.get("text2image")
            else f"{p.get('prompts')} prompts"
            for p in (r.get("predictive") for r in records)
            if isinstance(p, dict) and p.get("prompts")
        }
    )
    facts = f"{len(records)} investigations; backbones: {', '.join(backbones) or MISSING}; targets: {', '.join(targets) or MISSING}."
    if how:
        facts += f" Predictive evaluation: {'; '.join(how)}."
    plots_html = render_plots(plots)
    body = (
        f'<header><div class="inner"><h1>maia evaluation</h1><p>{_e(facts)}</p></div></header><main>'
        f"<h2>Summary</h2>{render_summary(records)}"
        + (f"<h2>Plots</h2>{plots_html}" if plots_html else "")
        + f"<h2>Units</h2>{render_units(records, root) or '<p class=note>No units.</p>'}</main>"
    )
    return _page("maia evaluation", body)


def render_eval_html(
    records: Iterable[dict[str, Any]], out_path: str | Path, plots: Sequence[str | Path] = ()
) -> Path:
    """Write ``eval.html`` at ``out_path`` atomically; ``plots`` are PNG files to embed."""
    out_path = Path(out_path)
    # Text from result.json files: a lone surrogate is replaced, never a reason not to write.
    return atomic_write_text(
        out_path, render_eval(records, out_path.parent, plots), errors="replace"
    )
