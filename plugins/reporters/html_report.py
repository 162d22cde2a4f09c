"""The ``html`` reporter: a self-contained ``report.html`` per unit and ``index.html`` over all.

Images are inline (data URIs), code is highlighted with pygments, styles are inline, and
there is no script and no network link: a Content-Security-Policy forbids loading anything.
Every piece of agent and tool text is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from maia_core import hookimpl
from maia_core.files import atomic_write_bytes, atomic_write_text
from maia_core.images import data_uri, resize_longest
from maia_core.loop.investigation import Investigation
from maia_core.loop.reporter import Reporter
from maia_core.transcript import ImagePart, Message, TextPart

THUMB = 112
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_FORMATTER = HtmlFormatter(cssclass="hl")

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
        f"<title>{html.escape(title)}</title><style>{CSS}{_FORMATTER.get_style_defs('.hl')}</style></head>"
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
            out.append(highlight(code, PythonLexer(), _FORMATTER))
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
    }.get(kind, "User")
    return f'<section class="msg user"><div class="who">{who}</div>{render_parts(message.parts)}</section>'


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
    if r["sandbox_restarts"]:
        rows.append(("Sandbox restarts", str(r["sandbox_restarts"])))
    if r["error"]:
        rows.append(("Error", f'<pre class="error">{html.escape(r["error"])}</pre>'))
    meta = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    answer = ""
    if r["description"] is not None:
        answer = (
            f'<div class="answer"><b>Label:</b> {html.escape(r["label"] or "")}'
            f'<div class="prose"><b>Description:</b> {html.escape(r["description"])}</div></div>'
        )
    title = f"Unit {inv.unit.index} of {inv.unit.layer} in {inv.target}"
    body = (
        f'<header><div class="inner"><h1>{html.escape(title)}</h1><table class="meta">{meta}</table>{answer}</div></header>'
        f"<main>{''.join(render_message(m) for m in inv.messages)}</main>"
    )
    return _page(title, body)


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


def _sort_key(row: dict[str, Any]) -> tuple:
    return (
        str(row.get("backbone")),
        str(row.get("target")),
        str(row.get("layer")),
        int(row.get("unit") or 0),
    )


def render_index(results: Path) -> str:
    rows = []
    for path in results.rglob("result.json"):
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        row["_dir"] = path.parent
        rows.append(row)
    rows.sort(key=_sort_key)
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
        status = html.escape(str(row.get("status")))
        cost = (row.get("usage") or {}).get("cost_usd")
        # A failed unit has no label; its row says why it failed instead.
        label = row.get("label") or (row.get("error") if row.get("status") == "failed" else "")
        body_rows.append(
            "<tr>"
            f"<td>{img}</td><td>{html.escape(str(row.get('backbone')))}</td><td>{html.escape(str(row.get('target')))}</td>"
            f'<td>{html.escape(str(row.get("layer")))}</td><td><a href="{link}">{html.escape(str(row.get("unit")))}</a></td>'
            f'<td><span class="badge {status}">{status}</span></td><td>{html.escape(str(label or ""))}</td>'
            f"<td>{row.get('rounds', '')}</td><td>{_fmt_cost(cost)}</td>"
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("", "Backbone", "Target", "Layer", "Unit", "Status", "Label", "Rounds", "Cost")
    )
    body = (
        f'<header><div class="inner"><h1>maia results</h1><p>{len(rows)} units</p></div></header>'
        f'<main><table class="index"><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table></main>'
    )
    return _page("maia results", body)


class HtmlReporter(Reporter):
    def __init__(self, results: Path, **options: str):
        self.results = Path(results)

    def unit_finished(self, inv: Investigation) -> None:
        atomic_write_text(inv.out_dir / "report.html", render_report(inv))
        image = first_image(inv.messages)
        if image is not None:
            atomic_write_bytes(inv.out_dir / "thumb.jpg", _thumbnail(image))
        self.write_index()

    def run_finished(self, run, investigations) -> None:
        self.write_index()

    def write_index(self) -> None:
        atomic_write_text(self.results / "index.html", render_index(self.results))
