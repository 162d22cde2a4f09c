"""The evaluation plots, in the layout of MAIA's ``evaluation/plots.py`` (1 x 3 panels).

a) Activation on positive ("+") and negative ("_") images, one x position per target and one
   series per backbone, joined by a vertical segment: the mean over every image of every unit
   (pooled, as MAIA plots it). MAIA's published GPT-4V numbers are drawn in grey at the targets
   of the same family (ResNet-152, DINO, CLIP, Synthetic): published, not measured here, and
   on MAIA's own models and renderer, so a point of comparison rather than a baseline.
b) Tool usage: the % of each backbone's investigations that called each tool at least once.
c) Rounds per investigation, per backbone (box plot; the triangle is the mean).

``write_plots`` writes ``summary_panel.png`` (the three together) and each panel alone, and, for
tasks other than describe, ``task_scores.png`` (reliance's category, value and both-parts
accuracy, predictiveness and its ceiling; compare's difference named). It uses
matplotlib's object API on an Agg canvas, imported when called: no pyplot, so no global backend
is switched and nothing needs a display.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from maia_core.files import atomic_write_bytes
from maia_plugins.evaluation.summary import (
    family,
    group,
    number,
    pooled_means,
    shown_backbone,
    target_key,
)

# MAIA (ICML 2024) with GPT-4V, from its evaluation/plots.py: (mean positive, mean negative).
MAIA_REFERENCE = {
    "ResNet-152": (3.357, 1.239),
    "DINO": (1.820, -0.155),
    "CLIP": (3.329, 1.804),
    "Synthetic": (0.563, 0.228),
}
REFERENCE_LABEL = "MAIA paper (GPT-4V), reference: published numbers, not measured here"
REFERENCE_COLOR = "0.6"
SUMMARY = "summary_panel.png"
PANELS = ("activation_means.png", "tool_usage.png", "rounds.png")
MAX_TOOLS = 12
DPI = 100


def _short(text: Any, limit: int = 28) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def panel_data(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What the panels show, computed from the records (no matplotlib)."""
    groups = group(records)
    backbones = sorted({b for b, _ in groups})
    targets = sorted({t for _, t in groups}, key=target_key)
    means = {}
    for key, recs in groups.items():
        pos, neg, n_pos, n_neg = pooled_means(recs)
        if pos is not None or neg is not None:
            means[key] = (pos, neg)
    reference = {}
    for t in targets:
        fam = family(t)
        if fam in MAIA_REFERENCE:
            reference[t] = (fam, *MAIA_REFERENCE[fam])

    by_backbone: dict[str, list[dict[str, Any]]] = {b: [] for b in backbones}
    for (b, _), recs in groups.items():
        by_backbone[b].extend(recs)
    investigations: dict[str, int] = {}
    usage: dict[str, dict[str, float]] = {}
    for b, recs in by_backbone.items():
        # Only records that carry a tool count are investigations we can speak for.
        used = [r["tools_used"] for r in recs if isinstance(r.get("tools_used"), dict)]
        investigations[b] = len(used)
        names = {name for u in used for name, count in u.items() if (number(count) or 0) > 0}
        usage[b] = {
            name: 100.0 * sum((number(u.get(name)) or 0) > 0 for u in used) / len(used)
            for name in names
        }
    overall: dict[str, float] = {}
    for pcts in usage.values():
        for name, pct in pcts.items():
            overall[name] = overall.get(name, 0.0) + pct
    tools = sorted(overall, key=lambda name: (-overall[name], name))[:MAX_TOOLS]
    rounds = {
        b: [v for v in (number(r.get("rounds")) for r in recs) if v is not None]
        for b, recs in by_backbone.items()
    }
    return {
        "backbones": backbones,
        "targets": targets,
        "means": means,
        "reference": reference,
        "tools": tools,
        "tool_usage": usage,
        "investigations": investigations,
        "rounds": rounds,
    }


def _color(backbones: list[str], b: str) -> str:
    return f"C{backbones.index(b) % 10}"


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_means(ax: Any, data: dict[str, Any]) -> None:
    from matplotlib.lines import Line2D

    ax.set_title("a) Activation on positive vs negative images", loc="left", fontsize=11)
    backbones, targets, means = data["backbones"], data["targets"], data["means"]
    shown_targets = [t for t in targets if any((b, t) in means for b in backbones)]
    if not shown_targets:
        _empty(ax, "no predictive scores")
        return
    series = backbones + (["__reference__"] if data["reference"] else [])
    step = 0.7 / len(series)

    def x_of(i_target: int, name: str) -> float:
        return i_target + (series.index(name) - (len(series) - 1) / 2) * step

    def draw(x: float, pos: float | None, neg: float | None, color: str, gid: str) -> None:
        if pos is not None and neg is not None:
            ax.plot([x, x], [neg, pos], color=color, lw=1.5, gid=f"segment:{gid}")
        if pos is not None:
            ax.plot(
                [x], [pos], marker="+", ms=14, mew=2.2, ls="none", color=color, gid=f"pos:{gid}"
            )
        if neg is not None:
            ax.plot(
                [x], [neg], marker="_", ms=14, mew=2.2, ls="none", color=color, gid=f"neg:{gid}"
            )

    for i, t in enumerate(shown_targets):
        for b in backbones:
            if (b, t) in means:
                draw(x_of(i, b), *means[(b, t)], _color(backbones, b), f"{b}:{t}")
        if t in data["reference"]:
            _, pos, neg = data["reference"][t]
            draw(x_of(i, "__reference__"), pos, neg, REFERENCE_COLOR, f"reference:{t}")
    handles = [Line2D([], [], color=_color(backbones, b), lw=2, label=_short(b)) for b in backbones]
    if any(t in data["reference"] for t in shown_targets):
        handles.append(Line2D([], [], color=REFERENCE_COLOR, lw=2, label=REFERENCE_LABEL))
    handles += [
        Line2D([], [], marker="+", ms=10, mew=2, ls="none", color="k", label="positive images"),
        Line2D([], [], marker="_", ms=10, mew=2, ls="none", color="k", label="negative images"),
    ]
    ax.legend(
        handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False
    )
    ax.set_xticks(range(len(shown_targets)))
    ax.set_xticklabels([_short(t, 22) for t in shown_targets], rotation=15, ha="right", fontsize=9)
    ax.set_xlim(-0.6, len(shown_targets) - 0.4)
    ax.set_ylabel("mean activation (all images pooled)")
    ax.grid(axis="y", alpha=0.3)


def draw_tools(ax: Any, data: dict[str, Any]) -> None:
    ax.set_title("b) Tool usage", loc="left", fontsize=11)
    backbones = [b for b in data["backbones"] if data["investigations"].get(b)]
    tools = data["tools"]
    if not backbones or not tools:
        _empty(ax, "no tool calls recorded")
        return
    height = 0.8 / len(backbones)
    for j, b in enumerate(backbones):
        ys = [i - 0.4 + height * (j + 0.5) for i in range(len(tools))]
        values = [data["tool_usage"][b].get(t, 0.0) for t in tools]
        bars = ax.barh(ys, values, height=height * 0.95, color=_color(data["backbones"], b),
                       label=f"{_short(b)} (n={data['investigations'][b]})")  # fmt: skip
        for bar, t in zip(bars, tools):
            bar.set_gid(f"tool:{b}:{t}")
    ax.set_yticks(range(len(tools)))
    ax.set_yticklabels([_short(t, 24) for t in tools], fontsize=9)
    ax.invert_yaxis()  # the most used tool on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of investigations that called the tool")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def draw_rounds(ax: Any, data: dict[str, Any]) -> None:
    ax.set_title("c) Rounds per investigation", loc="left", fontsize=11)
    backbones = [b for b in data["backbones"] if data["rounds"].get(b)]
    if not backbones:
        _empty(ax, "no rounds recorded")
        return
    values = [data["rounds"][b] for b in backbones]
    positions = list(range(1, len(backbones) + 1))
    parts = ax.boxplot(values, positions=positions, widths=0.5, showmeans=True, patch_artist=True)
    for box, median, b in zip(parts["boxes"], parts["medians"], backbones):
        box.set_facecolor(_color(data["backbones"], b))
        box.set_alpha(0.5)
        median.set_color("k")
        median.set_gid(f"rounds:{b}")
    ax.set_xticks(positions)
    ax.set_xticklabels(
        [f"{_short(b, 20)}\n(n={len(v)})" for b, v in zip(backbones, values)], fontsize=9
    )
    ax.set_ylabel("rounds")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)


DRAW = (draw_means, draw_tools, draw_rounds)


def _describe(fig: Any) -> dict[str, Any]:
    """What a figure holds, for tests and callers: artist ids, legend texts, tick labels."""
    gids, legend, ticks = [], [], []
    for ax in fig.axes:
        gids += [a.get_gid() for a in ax.get_children() if a.get_gid()]
        if ax.get_legend() is not None:
            legend += [t.get_text() for t in ax.get_legend().get_texts()]
        ticks += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    return {"gids": gids, "legend": legend, "ticks": ticks}


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


TASKS_PANEL = "task_scores.png"
TASK_BARS = (
    ("category_pct", "category right", 1.0),
    ("value_pct", "value right", 1.0),
    ("both_pct", "both parts (AND/OR)", 1.0),
    ("predictiveness_mean", "predictiveness x100", 100.0),
    ("ceiling_mean", "ceiling (truth) x100", 100.0),
    ("difference_pct", "difference named", 1.0),
    ("exact_pct", "exact", 1.0),
)


def task_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary rows of tasks other than describe (reliance, compare...)."""
    from maia_plugins.evaluation.summary import summarize

    return [r for r in summarize(records) if r.get("task") not in (None, "describe")]


def draw_tasks(ax: Any, rows: list[dict[str, Any]]) -> None:
    """One group of bars per backbone (with its --reflect) and task: the task's scores in %."""
    ax.set_title("Task scores (%)", loc="left", fontsize=11)
    keys = [k for k in TASK_BARS if any(number(r.get(k[0])) is not None for r in rows)]
    if not rows or not keys:
        _empty(ax, "no task scores")
        return
    width = 0.8 / len(keys)
    for j, (key, name, scale) in enumerate(keys):
        xs, ys = [], []
        for i, r in enumerate(rows):
            v = number(r.get(key))
            if v is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(v * scale)
        for bar in ax.bar(xs, ys, width=width, label=name, color=f"C{j}"):
            bar.set_gid(f"task:{key}")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [
            _short(
                f"{shown_backbone(r)}\n{r['target']} ({r['task']})",
                40,
            )
            for r in rows
        ],
        fontsize=8,
    )
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)


def write_plots(
    records: Iterable[dict[str, Any]], out_dir: str | Path, *, drawn: dict[str, Any] | None = None
) -> list[Path]:
    """Write ``summary_panel.png`` and the three panels alone under ``out_dir``; their paths.

    ``drawn``, when given, is filled per file stem with what the figure holds (artist ids such
    as ``reference:<target>``, legend texts, tick labels), so callers can check it without
    reading pixels. Without matplotlib it warns and writes nothing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        # matplotlib is an optional extra; the scores, the CSV and eval.html do not need it.
        warnings.warn(
            "matplotlib is not installed (pip install 'maia[photos]'): no plots written",
            stacklevel=2,
        )
        return []

    records = list(records)
    data = panel_data(records)
    out = Path(out_dir)
    paths = []
    fig = Figure(figsize=(18, 5.5))
    for ax, draw in zip(fig.subplots(1, 3), DRAW):
        draw(ax, data)
    fig.subplots_adjust(wspace=0.35)
    paths.append(_save(fig, out / SUMMARY))
    if drawn is not None:
        drawn[Path(SUMMARY).stem] = _describe(fig)
    for name, draw in zip(PANELS, DRAW):
        fig = Figure(figsize=(7, 5.5))
        draw(fig.subplots(), data)
        paths.append(_save(fig, out / name))
        if drawn is not None:
            drawn[Path(name).stem] = _describe(fig)
    rows = task_rows(records)
    if rows:  # reliance, compare...: their own scores
        fig = Figure(figsize=(max(7, 2 + 1.6 * len(rows)), 5.5))
        draw_tasks(fig.subplots(), rows)
        paths.append(_save(fig, out / TASKS_PANEL))
        if drawn is not None:
            drawn[Path(TASKS_PANEL).stem] = _describe(fig)
    return paths
