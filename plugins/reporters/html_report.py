"""The ``html`` reporter: a self-contained ``report.html`` per unit and ``index.html`` over all.

Images are inline (data URIs), code is highlighted with pygments, styles are inline, and
there is no script and no network link: a Content-Security-Policy forbids loading anything.
Every piece of agent and tool text is HTML-escaped.
"""

from __future__ import annotations

import functools
import html
import io
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from maia_core import hookimpl, signing
from maia_core.files import atomic_write_bytes, atomic_write_text, shown_path, text_name
from maia_core.images import data_uri, resize_longest
from maia_core.loop.reporter import Reporter
from maia_core.loop.results import holds_answer, read_result, result_from_json
from maia_core.loop.state import Investigation
from maia_core.task import Subject, task_named
from maia_core.transcript import ImagePart, Message, TextPart, transcript_from_json
from maia_core.units import Unit

THUMB = 112
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@functools.cache
def _pygments() -> tuple[Any, Any, Any]:
    """pygments' highlighter, Python lexer and HTML formatter, imported when a page is first
    written (not when maia starts: ``maia --help`` loads this plugin)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight, PythonLexer(), HtmlFormatter(cssclass="hl")


CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#dde2ea; --bg:#f6f7f9; --accent:#2f5fd0; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); margin: 0; }
main, header { max-width: 1100px; margin: 0 auto; padding: 16px 24px; }
header { background: #fff; border-bottom: 1px solid var(--line); max-width: none; }
header .inner { max-width: 1100px; margin: 0 auto; }
h1 { font-size: 22px; margin: 4px 0 12px; }
table.meta { border-collapse: collapse; }
table.meta th { text-align: left; color: var(--muted); font-weight: 500; padding: 2px 16px 2px 0; vertical-align: top; }
table.meta td { padding: 2px 0; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 13px; font-weight: 600; }
.completed { background: #dff3e4; color: #176b2c; } .incomplete { background: #fff1d6; color: #8a5a00; }
.failed { background: #fde2e1; color: #a11a14; } .running { background: #e3ebfb; color: #2f5fd0; }
.msg { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 14px 0; padding: 10px 14px; }
.msg .who { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin-bottom: 6px; }
.msg.assistant { border-left: 4px solid var(--accent); }
.prose { white-space: pre-wrap; word-wrap: break-word; margin: 6px 0; }
pre { white-space: pre-wrap; word-wrap: break-word; margin: 6px 0; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre.error { color: #a11a14; background: #fff5f5; padding: 8px; border-radius: 6px; }
pre.note { color: var(--muted); font-style: italic; }
.hl { background: #f8f8fb; border-radius: 6px; padding: 2px 10px; margin: 6px 0; }
.images { display: flex; flex-wrap: wrap; gap: 8px; margin: 6px 0; }
.images figure { margin: 0; max-width: 240px; }
.images img { max-width: 240px; max-height: 240px; border-radius: 4px; border: 1px solid var(--line); display: block; }
.images figcaption { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); margin-top: 2px; }
details > summary { cursor: pointer; color: var(--muted); }
.answer { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin-top: 12px; }
table.index { border-collapse: collapse; width: 100%; background: #fff; }
table.index th, table.index td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left; vertical-align: middle; }
table.index img { width: 64px; height: 64px; object-fit: cover; border-radius: 4px; }
a { color: var(--accent); }
.truth { margin-top: 6px; color: #176b2c; }
details.records { font-size: 13px; color: var(--muted); margin-top: 6px; }
table.claims, table.cycles { border-collapse: collapse; margin: 8px 0; background: #fff; }
table.claims th, table.claims td, table.cycles th, table.cycles td { border: 1px solid var(--line); padding: 3px 10px; text-align: left; }
.reflection { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin-top: 12px; }
.cycle { margin: 10px 0; }
.cycle .images img { width: 96px; height: 96px; object-fit: cover; }
.kept { background: #dff3e4; }
h2 { font-size: 17px; margin: 22px 0 8px; }
"""


@hookimpl
def register_reporters(register):
    register(
        "html", HtmlReporter, help="report.html per unit and results/index.html, self-contained"
    )


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}{_pygments()[2].get_style_defs('.hl')}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def render_text(text: str) -> str:
    """Prose escaped; ```python blocks highlighted; other fenced blocks as plain code."""
    out, pos = [], 0
    for m in _FENCE.finditer(text):
        if text[pos : m.start()].strip():
            out.append(f'<div class="prose">{html.escape(text[pos : m.start()].strip())}</div>')
        lang, code = m.group(1).lower(), m.group(2)
        if lang in ("python", "py", "python3"):
            highlight, lexer, formatter = _pygments()
            out.append(highlight(code, lexer, formatter))
        else:
            out.append(f"<pre>{html.escape(code)}</pre>")
        pos = m.end()
    if text[pos:].strip():
        out.append(f'<div class="prose">{html.escape(text[pos:].strip())}</div>')
    return "".join(out)


def render_parts(parts: list[Any]) -> str:
    """Output parts in order. An image followed by a one-line caption (as ``tools.display(img,
    "activation 3.1")`` makes) becomes a captioned figure; consecutive figures form a grid."""
    out: list[str] = []
    figures: list[str] = []

    def flush() -> None:
        if figures:
            out.append('<div class="images">' + "".join(figures) + "</div>")
            figures.clear()

    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(part, ImagePart):
            caption = ""
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            if (
                isinstance(nxt, TextPart)
                and nxt.source == "display"
                and len(nxt.text.strip().splitlines()) == 1
                and len(nxt.text) < 160
            ):
                caption = f"<figcaption>{html.escape(nxt.text.strip())}</figcaption>"
                i += 1
            figures.append(
                f'<figure><img alt="image" src="{data_uri(part.data, part.media_type)}">{caption}</figure>'
            )
        elif isinstance(part, TextPart) and part.text.strip():
            flush()
            cls = part.source if part.source in ("error", "note") else "out"
            out.append(f'<pre class="{cls}">{html.escape(part.text.rstrip())}</pre>')
        i += 1
    flush()
    return "".join(out)


def render_message(message: Message) -> str:
    kind = message.meta.get("kind", "")
    if message.role == "system":
        return f'<details class="msg"><summary>System prompt and API</summary><pre>{html.escape(message.text)}</pre></details>'
    if message.role == "assistant":
        who = f"Agent, round {message.meta['round']}" if "round" in message.meta else "Agent"
        return f'<section class="msg assistant"><div class="who">{html.escape(who)}</div>{render_text(message.text)}</section>'
    who = {
        "task": "Task",
        "result": "Execution result",
        "correction": "maia",
        "final_request": "maia",
        "incomplete_answer": "maia",
        "reflection": f"Self-check {message.meta.get('cycle', '')} (reflection)",
    }.get(kind, "User")
    records = render_records(message.meta.get("tools") or [])
    return f'<section class="msg user"><div class="who">{who}</div>{render_parts(message.parts)}{records}</section>'


def render_records(records: list[Any]) -> str:
    """What the tools recorded about their calls (implementation, seed, parameters), so an
    image can be traced to what made it and made again."""
    items = []
    for record in records:
        if not isinstance(record, dict):
            continue
        head = " ".join(str(record.get(k, "")) for k in ("tool", "implementation") if record.get(k))
        rest = ", ".join(
            f"{k}={json.dumps(v, ensure_ascii=False)[:200]}"
            for k, v in record.items()
            if k not in ("tool", "implementation")
        )
        items.append(f"<li><b>{html.escape(head)}</b> {html.escape(rest)}</li>")
    if not items:
        return ""
    return f'<details class="records"><summary>Tool calls ({len(items)})</summary><ul>{"".join(items)}</ul></details>'


def _fmt_cost(cost: float | None) -> str:
    return "n/a" if cost is None else f"${cost:.4f}"


def render_report(inv: Investigation) -> str:
    r = inv.to_json()
    usage = r["usage"]
    status = html.escape(r["status"])
    rows = [
        (
            "Target",
            f'{html.escape(inv.target)} <span style="color:var(--muted)">{html.escape(inv.target_description)}</span>',
        ),
        ("Backbone", html.escape(inv.backbone)),
        ("Status", f'<span class="badge {status}">{status}</span>'),
        ("Rounds", str(r["rounds"])),
        ("Wall time", f"{r['wall_time_s']:.1f} s"),
        ("Tokens", f"{usage['input_tokens']:,} in, {usage['output_tokens']:,} out"),
        ("Cost", _fmt_cost(usage["cost_usd"])),
        ("Mask threshold", html.escape(inv.threshold)),
    ]
    if inv.tools:
        rows.append(
            ("Tools", html.escape(", ".join(f"{c}: {i}" for c, i in sorted(inv.tools.items()))))
        )
    if r["sandbox_restarts"]:
        rows.append(("Sandbox restarts", str(r["sandbox_restarts"])))
    if r["error"]:
        rows.append(("Error", f'<pre class="error">{html.escape(r["error"])}</pre>'))
    task = task_named(inv.task)
    if inv.task != "describe":
        rows.insert(0, ("Task", html.escape(inv.task)))
    meta = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    answer = ""
    truth = ""
    if inv.ground_truth is not None:
        truth = f'<div class="truth"><b>Ground truth:</b> {html.escape(describe_truth(inv.ground_truth, task))}</div>'
    if r["description"] is not None:
        answer = (
            f'<div class="answer"><b>Label:</b> {html.escape(r["label"] or "")}'
            f'<div class="prose"><b>Description:</b> {html.escape(r["description"])}</div>'
            f"{task.answer_html(r)}{truth}</div>"
        )
    elif truth:
        answer = f'<div class="answer">{truth}</div>'
    title = _title(inv)
    body = (
        f'<header><div class="inner"><h1>{html.escape(title)}</h1><table class="meta">{meta}</table>{answer}'
        f"{render_reflection(r.get('reflection'))}</div></header>"
        f"<main>{''.join(render_message(m) for m in inv.messages)}</main>"
    )
    return _page(title, body)


def _title(inv: Investigation) -> str:
    if len(inv.subject.units) > 1:
        units = " and ".join(str(u) for u in inv.subject.units)
        return f"{inv.task}: units {units} in {inv.target}"
    head = f"Unit {inv.unit.index} of {inv.unit.layer} in {inv.target}"
    return head if inv.task == "describe" else f"{inv.task}: {head}"


def render_reflection(reflection: Any) -> str:
    """Each check of an answer by prediction: the answer, its predictiveness, the threshold
    and means, and every image with its prompt and score; the answer kept is marked."""
    if not isinstance(reflection, dict) or not isinstance(reflection.get("cycles"), list):
        return ""
    kept = reflection.get("kept")
    rows, figures = [], []
    for c in reflection["cycles"]:
        if not isinstance(c, dict):
            continue
        mark = ' class="kept"' if c.get("cycle") == kept else ""
        cells = [
            c.get("cycle"),
            c.get("label"),
            c.get("prompts"),
            _num(c.get("mean_high")),
            _num(c.get("mean_low")),
            _num(c.get("threshold")),
            _num(c.get("predictiveness")),
            "kept" if c.get("cycle") == kept else ("passed" if c.get("passed") else "failed"),
        ]
        rows.append(f"<tr{mark}>" + "".join(f"<td>{_text(v)}</td>" for v in cells) + "</tr>")
        thumbs = c.get("thumbnails") if isinstance(c.get("thumbnails"), list) else []
        for side in ("high", "low"):
            prompts = c.get(f"{side}_prompts") or []
            scores = c.get(f"{side}_scores") or []
            offset = 0 if side == "high" else len(c.get("high_prompts") or [])
            items = []
            for i, (prompt, score) in enumerate(zip(prompts, scores)):
                thumb = thumbs[offset + i] if offset + i < len(thumbs) else None
                img = (
                    f'<img alt="" src="data:image/jpeg;base64,{html.escape(str(thumb))}">'
                    if isinstance(thumb, str) and _BASE64.fullmatch(thumb)
                    else ""
                )
                items.append(
                    f"<figure>{img}<figcaption>{_text(prompt)}: {_num(score)}</figcaption></figure>"
                )
            figures.append(
                f'<div class="cycle"><b>Check {_text(c.get("cycle"))}, predicted {side}</b>'
                f'<div class="images">{"".join(items)}</div></div>'
            )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Check",
            "Answer checked",
            "Prompts",
            "Mean high",
            "Mean low",
            "Threshold",
            "Predictiveness",
            "",
        )
    )
    return (
        f'<div class="reflection"><b>Reflection</b> (up to {_text(reflection.get("rounds"))} '
        f"more investigation(s); threshold {_num(reflection.get('threshold'))}; "
        f"{_text(reflection.get('rule'))})"
        f'<table class="cycles"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f"<details><summary>Each check's images</summary>{''.join(figures)}</details></div>"
    )


_BASE64 = re.compile(r"[A-Za-z0-9+/]+=*")


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    return f"{value:.3g}"


def first_image(messages: list[Message]) -> ImagePart | None:
    for m in messages:
        if m.role == "user" and m.meta.get("kind") == "result":
            for p in m.parts:
                if isinstance(p, ImagePart):
                    return p
    return None


def _thumbnail(part: ImagePart) -> bytes:
    img = resize_longest(part.to_pil().convert("RGB"), THUMB)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def describe_truth(truth: Any, task: Any = None) -> str:
    """A ground truth in a few words, as the task says it (a synthetic neuron's ``or: dog,
    horse``); a pair's truths joined by ``|``."""
    if not isinstance(truth, dict):
        return str(truth)
    task = task if task is not None else task_named("describe")
    if isinstance(truth.get("units"), list):
        return " | ".join(
            task.truth_text(t) if isinstance(t, dict) else "unknown" for t in truth["units"]
        )
    try:
        return task.truth_text(truth)
    except Exception:  # noqa: BLE001 - a report shows whatever the results hold
        return json.dumps(truth)[:200]


INDEX_COLUMNS = (
    "",
    "Backbone",
    "Target",
    "Layer",
    "Unit",
    "Status",
    "Label",
    "Ground truth",
    "Rounds",
    "Cost",
)


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _sort_key(row: dict[str, Any]) -> tuple:
    unit = row.get("unit")
    return (
        _text(row.get("backbone")),
        _text(row.get("target")),
        _text(row.get("layer")),
        (0, unit, "")
        if isinstance(unit, int) and not isinstance(unit, bool)
        else (1, 0, _text(unit)),
    )


class IndexRows:
    """The index's rows, re-read only for the result files that changed.

    A folder whose name is not text (undecodable bytes, a line break) cannot be named in a
    page or linked: it is reported once on stderr and left out, never fatal."""

    def __init__(self, results: Path):
        self.results = results
        self._cache: dict[Path, tuple[float, dict[str, Any]]] = {}
        self._reported: set[Path] = set()

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        seen = set()
        for path in self.results.rglob("result.json"):
            if not text_name(path.relative_to(self.results)):
                if path not in self._reported:
                    self._reported.add(path)
                    sys.stderr.write(
                        f"maia: index.html leaves out {shown_path(path.parent)}: its name is not "
                        "text (rename the folder to list it).\n"
                    )
                continue
            seen.add(path)
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                row = read_result(path.parent)
                if row is None:
                    # Not a result maia wrote (or damaged): listed, marked, never trusted.
                    row = {
                        "status": "unreadable",
                        "error": "result.json is not a JSON object maia wrote",
                    }
                elif not signing.verified(row):
                    # Planted, edited, or written under another account: shown as data,
                    # marked, with no answer taken from it.
                    row = {
                        **row,
                        "status": "unverified",
                        "label": None,
                        "error": "not written by maia run here (no valid signature)",
                    }
                row = {**row, "_dir": path.parent}
                self._cache[path] = (mtime, row)
            rows.append(self._cache[path][1])
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        rows.sort(key=_sort_key)
        return rows


def render_index(results: Path, rows: list[dict[str, Any]] | None = None) -> str:
    """A table of units per task (describe first), each with its task's answer columns."""
    rows = IndexRows(results).rows() if rows is None else rows
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(str(row.get("task") or "describe"), []).append(row)
    order = sorted(by_task, key=lambda t: (t != "describe", t))
    sections = []
    for name in order:
        task = task_named(name)
        table = _index_table(results, by_task[name], task)
        heading = f"<h2>Task: {html.escape(name)}</h2>" if order != ["describe"] else ""
        sections.append(heading + table)
    body = (
        f'<header><div class="inner"><h1>maia results</h1><p>{len(rows)} units</p></div></header>'
        f"<main>{''.join(sections)}</main>"
    )
    return _page("maia results", body)


def _index_table(results: Path, rows: list[dict[str, Any]], task: Any) -> str:
    extra = tuple(task.index_columns)
    body_rows = []
    for row in rows:
        d: Path = row["_dir"]
        thumb = d / "thumb.jpg"
        img = (
            f'<img alt="" src="{data_uri(thumb.read_bytes(), "image/jpeg")}">'
            if thumb.is_file()
            else ""
        )
        link = "/".join(quote(p) for p in (d / "report.html").relative_to(results).parts)
        status = _text(row.get("status"))
        usage = row.get("usage")
        cost = usage.get("cost_usd") if isinstance(usage, dict) else None
        cost_text = (
            _fmt_cost(cost)
            if isinstance(cost, (int, float)) and not isinstance(cost, bool)
            else "n/a"
        )
        # A failed unit has no label; its row says why it failed instead.
        label = row.get("label") or (
            row.get("error") if row.get("status") in ("failed", "unreadable", "unverified") else ""
        )
        truth = (
            describe_truth(row["ground_truth"], task) if row.get("ground_truth") is not None else ""
        )
        try:
            cells_extra = [_text(c) for c in task.index_cells(row)] if row.get("label") else []
        except Exception:  # noqa: BLE001 - an index shows whatever the results hold
            cells_extra = []
        cells_extra += [""] * (len(extra) - len(cells_extra))
        unit = row.get("unit")
        units = row.get("units")
        if isinstance(units, list) and len(units) > 1:
            unit = "+".join(str(u.get("unit")) for u in units if isinstance(u, dict))
        cells = [
            img,
            _text(row.get("backbone")),
            _text(row.get("target")),
            _text(row.get("layer")),
            f'<a href="{link}">{_text(unit)}</a>',
            f'<span class="badge {status}">{status}</span>',
            _text(label),
            *cells_extra[: len(extra)],
            _text(truth),
            _text(row.get("rounds")),
            cost_text,
        ]
        body_rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    columns = (*INDEX_COLUMNS[:7], *extra, *INDEX_COLUMNS[7:])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns)
    return f'<table class="index"><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table>'


def investigation_from_disk(out_dir: Path) -> Investigation | None:
    """A finished unit rebuilt from its ``result.json`` and ``history.json`` (to re-render it)."""
    row = read_result(out_dir)
    try:
        history = json.loads((out_dir / "history.json").read_text())
        messages = transcript_from_json(history)
        unit = Unit(str(row["layer"]), int(row["unit"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    inv = Investigation(unit, str(row.get("target")), str(row.get("backbone")), out_dir, messages)
    inv.task = str(row.get("task") or "describe")
    units = row.get("units")
    if isinstance(units, list) and len(units) > 1:
        try:
            inv.subject = Subject(tuple(Unit(str(u["layer"]), int(u["unit"])) for u in units))
        except (KeyError, TypeError, ValueError):
            return None
    inv.threshold = str(row.get("threshold") or "")
    inv.target_description = str(row.get("target_description") or "")
    inv.ground_truth = row.get("ground_truth")
    inv.tools = row.get("tools") if isinstance(row.get("tools"), dict) else {}
    inv.result = result_from_json(row)
    return inv


# A report's header, which holds the answer, is in its first bytes; the transcript follows.
REPORT_HEAD = 256 * 1024


def _has_answer(report: Path, label: str | None) -> bool:
    """Whether ``report`` is the report of a completed unit with this label."""
    try:
        with report.open("rb") as f:
            head = f.read(REPORT_HEAD).decode("utf-8", "replace")
    except OSError:
        return False
    return f'<div class="answer"><b>Label:</b> {html.escape(label or "")}<div' in head


class HtmlReporter(Reporter):
    unit_files = True  # report.html is part of each unit's results

    def __init__(self, results: Path, **options: str):
        self.results = Path(results)
        self.index = IndexRows(self.results)

    def unit_finished(self, inv: Investigation) -> None:
        self._write_report(inv)
        self.write_index()

    def resume_unit(self, inv: Investigation) -> str | None:
        """A report that is missing, or is not this result's (another label), is rebuilt
        from the history, if the history ends with the result's answer."""
        if _has_answer(inv.out_dir / "report.html", inv.result.label):
            return None
        task = task_named(inv.task)
        rebuilt = (
            investigation_from_disk(inv.out_dir)
            if holds_answer(inv.out_dir, inv.result, task)
            else None
        )
        if rebuilt is None:
            return (
                "its report.html is missing (or not this result's) and no complete history.json "
                "can rebuild it"
            )
        self._write_report(rebuilt)
        return None

    def _write_report(self, inv: Investigation) -> None:
        atomic_write_text(inv.out_dir / "report.html", render_report(inv), errors="replace")
        image = first_image(inv.messages)
        if image is not None:
            atomic_write_bytes(inv.out_dir / "thumb.jpg", _thumbnail(image))

    def run_finished(self, run, investigations) -> None:
        self.write_index()

    def write_index(self) -> None:
        # The page shows text read from result.json files: a lone surrogate there is replaced,
        # not a reason to leave the index unwritten.
        atomic_write_text(
            self.results / "index.html",
            render_index(self.results, self.index.rows()),
            errors="replace",
        )
