"""The agent's prompts. The API section is generated from the live ``system`` and ``tools``
objects (their signatures and docstrings), never kept by hand."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

FINAL_FORMAT = "[DESCRIPTION]: <a sentence or two on what the unit detects>\n[LABEL]: <a short label, a few words>"


def _annotation(a: Any) -> str:
    if a is inspect.Parameter.empty:
        return ""
    if isinstance(a, str):
        return a
    return getattr(a, "__name__", None) or str(a).replace("typing.", "")


def format_signature(fn: Any) -> str:
    """``(images: list[Image.Image], k: int = 15) -> list[float]`` with string annotations unquoted."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(...)"
    params = []
    star_done = False
    for p in sig.parameters.values():
        ann = _annotation(p.annotation)
        if p.kind is p.VAR_POSITIONAL:
            text, star_done = f"*{p.name}", True
        elif p.kind is p.VAR_KEYWORD:
            text = f"**{p.name}"
        else:
            if p.kind is p.KEYWORD_ONLY and not star_done:
                params.append("*")
                star_done = True
            text = p.name
        if ann:
            text += f": {ann}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}" if ann else f"={p.default!r}"
        params.append(text)
    ret = _annotation(sig.return_annotation)
    return f"({', '.join(params)})" + (f" -> {ret}" if ret else "")


def _doc(obj: Any) -> str:
    return inspect.getdoc(obj) or "(no description)"


def _entry(prefix: str, name: str, fn: Any) -> str:
    # A tool may be a function, a bound method or a callable object (documented on __call__
    # or on its class).
    doc = _doc(fn) if inspect.isroutine(fn) else inspect.getdoc(type(fn).__call__) or _doc(type(fn))
    return f"{prefix}.{name}{format_signature(fn)}\n{textwrap.indent(doc, '    ')}"


def public_methods(obj: Any) -> list[tuple[str, Any]]:
    return [
        (name, getattr(obj, name))
        for name in dir(obj)
        if not name.startswith("_") and inspect.ismethod(getattr(obj, name, None))
    ]


def api_text(system: Any, tools: Any, implementations: dict[str, str] | None = None) -> str:
    """The API reference the agent reads: every public method of ``system`` and every tool,
    each tool with the implementation in use when it is not the capability's namesake."""
    lines = ["## system", _doc(type(system)), ""]
    for name, fn in public_methods(system):
        lines += [_entry("system", name, fn), ""]
    lines += ["## tools"]
    for name, fn in tools.items():
        entry = _entry("tools", name, fn)
        impl = (implementations or {}).get(name)
        if impl and impl != name:
            head, _, rest = entry.partition("\n")
            entry = f"{head}  [implementation: {impl}]\n{rest}"
        lines += [entry, ""]
    return "\n".join(lines).rstrip() + "\n"


DESCRIBE_ROLE = (
    "You are an interpretability researcher studying one unit of a vision model. Your job is "
    "to find out, by experiment, what visual concept makes the unit fire, and to describe it "
    "precisely."
)
DESCRIBE_GUIDANCE = """- Start from the images that activate the unit most, if a tool gives them, and form hypotheses.
- Test each hypothesis with new images that include and exclude the concept, and compare activations. Prefer experiments that could prove you wrong.
- Keep each experiment small and look at its results before the next one. Write one ```python block per reply.
- Be precise: say what the unit responds to and what it does not, and whether it is selective for a specific object, a part, a texture, a colour or a scene."""


def system_prompt(
    api: str,
    final_format: str = FINAL_FORMAT,
    *,
    role: str = DESCRIBE_ROLE,
    guidance: str = DESCRIBE_GUIDANCE,
    subject: str = "the unit",
) -> str:
    """The system prompt: the task's ``role`` and ``guidance`` around the generated API."""
    return f"""{role}

You run experiments by writing Python. Put the code of each experiment in one ```python block. It runs in a persistent session: variables you define stay available in later blocks. Everything you print, everything you pass to tools.display, and any error with its traceback is sent back to you. Only what you print or display reaches you, so display the images you want to see together with their activations.

Two objects are defined in the session: `system`, {subject}, and `tools`, your instruments. numpy is imported as `np` and PIL's `Image` is imported; besides them and Python's standard library, no package is installed, there is no network, and only /tmp is writable: get images from the tools, or make them with numpy and PIL. This is their API:

{api}
How to work:
{guidance}

When you are confident, reply with no code and give your final answer in exactly this form:
{final_format}
"""


def task_prompt(
    unit: str, layer: str, target: str, target_description: str, threshold_note: str
) -> str:
    return (
        f"Investigate unit {unit} of layer {layer} in the model {target} ({target_description}). "
        f"Masks in this session use the {threshold_note}. "
        "Find the visual concept that activates it. Begin with your first experiment."
    )


def correction(final_format: str = FINAL_FORMAT) -> str:
    return (
        "Your reply had neither a ```python code block nor a final answer. Either run an "
        "experiment by writing code in a ```python block, or, if you are done, answer exactly "
        "in this form:\n" + final_format
    )


CORRECTION = correction()


ANSWER_WITH_CODE = (
    "Your reply had code and a final answer; the code was run and the answer not taken. If you "
    "are done, reply with the final answer alone, with no code."
)


def incomplete_answer(problem: str, final_format: str = FINAL_FORMAT) -> str:
    """What the agent is told when its final answer is malformed: what is missing, the form."""
    return f"{problem} Give your final answer again, with no code, exactly in this form:\n{final_format}"


def final_request(rounds: int, final_format: str = FINAL_FORMAT) -> str:
    return (
        f"You have used all {rounds} rounds of experiments. Do not write more code. Based on what "
        f"you have found, give your final answer now, exactly in this form:\n{final_format}"
    )


def restart_note(reason: str) -> str:
    return (
        f"The sandbox was restarted because {reason}. All variables from earlier cells are lost; "
        "`system`, `tools`, `np` and `Image` are defined again. Re-create anything you still need."
    )
