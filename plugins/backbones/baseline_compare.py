"""The baseline's ``compare`` investigation: the describe baseline on both units, then the
difference of what each was found to detect.

Each unit goes through the describe baseline's steps (survey, narrow, verify; see
:mod:`.baseline`) on the same images: every experiment renders the same prompts with the same
seed and measures both units with ``system.call_neurons``, reading one unit's activations at a
time (markers ``SURVEY1``... for unit 1, ``SURVEY2``... for unit 2). The answer names what both
detect, what only unit 1 does and what only unit 2 does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from maia_core.transcript import Message

_MARK = re.compile(r"^(SURVEY|SINGLES|PAIRS|VERIFY)([12]) (\{.*\})$", re.MULTILINE)
UNITS = (1, 2)


def findings(messages: list[Message]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {1: {}, 2: {}}
    for m in messages:
        if m.role == "user":
            for kind, unit, payload in _MARK.findall(m.text):
                try:
                    found[int(unit)][kind] = json.loads(payload)
                except ValueError:
                    continue
    return found


def for_unit(code: str, unit: int) -> str:
    """A describe baseline experiment made to read unit ``unit`` of the pair: its
    ``system.call_neuron(...)`` measures both units and keeps this one's activations; its
    markers carry the unit's number."""
    reader = (
        "```python\n"
        f"def _unit(images, _j={unit - 1}):\n"
        "    acts, masked = system.call_neurons(images)\n"
        "    return acts[_j], masked[_j]\n"
        "```\n"
    )
    code = code.replace("system.call_neuron(", "_unit(")
    code = re.sub(r"'(SURVEY|SINGLES|PAIRS|VERIFY) '", lambda m: f"'{m.group(1)}{unit} '", code)
    intro, sep, rest = code.partition("```python")
    return f"[unit {unit}] {intro.strip()}\n\n{reader}{sep}{rest}"


def compare_reply(baseline: Any, messages: list[Message]) -> str:
    """The next experiment (or the answer) of a compare investigation."""
    found = findings(messages)
    asked = sum(m.role == "assistant" for m in messages)
    done = sum(len(f) for f in found.values())
    reflections = sum(m.meta.get("kind") == "reflection" for m in messages)
    if asked - reflections > done or reflections:
        return answer(baseline, found)
    for unit in UNITS:
        f = found[unit]
        if "SURVEY" not in f:
            return for_unit(baseline.survey(), unit)
        if "SINGLES" not in f and "PAIRS" not in f:
            return for_unit(baseline.narrow(f["SURVEY"]), unit)
        if "VERIFY" not in f:
            return for_unit(baseline.verify(f), unit)
    return answer(baseline, found)


def concepts(verify: dict[str, Any]) -> tuple[str, list[str]]:
    """(mode, concepts) of a describe baseline's verified finding."""
    kind, _, what = str(verify.get("kind", "none")).partition(":")
    if kind in ("or", "and"):
        return kind, what.split("|")
    if kind == "mono":
        return "mono", [what]
    if kind == "group":
        partner, *objects = what.split("|")
        acts = {o: verify.get(o, 0.0) for o in objects}
        return "and", [max(acts, key=acts.get), partner] if acts else [partner]
    return "none", []


def answer(baseline: Any, found: dict[int, dict[str, Any]]) -> str:
    labels, sets, modes = [], [], []
    for unit in UNITS:
        verify = found[unit].get("VERIFY", {"kind": "none"})
        text = baseline.answer(verify)
        labels.append(text.split("[LABEL]:", 1)[-1].strip())
        mode, names = concepts(verify)
        modes.append(mode)
        sets.append([baseline._general(n) for n in names])
    shared = [c for c in sets[0] if c in sets[1]]
    only = [[c for c in s if c not in shared] for s in sets]
    parts = []
    if shared:
        parts.append(f"Both units respond to {' and '.join(shared)}.")
    for i, names in enumerate(only):
        other = 2 - i
        if names:
            need = (
                " as well"
                if modes[i] == "and" and shared
                else (" alone" if modes[i] == "or" else "")
            )
            parts.append(
                f"Unit {i + 1} responds to {' and '.join(names)}{need}, and unit {other} does not."
            )
    if modes[0] != modes[1] and shared and not any(only):
        parts.append(f"Unit 1 combines them as {modes[0]}, unit 2 as {modes[1]}.")
    if not parts:
        parts.append("I found no concept that separates the two units.")
    parts.append(f"Unit 1: {labels[0]}. Unit 2: {labels[1]}.")
    return f"[DIFFERENCE]: {' '.join(parts)}\n[LABEL 1]: {labels[0]}\n[LABEL 2]: {labels[1]}"
