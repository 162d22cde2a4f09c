"""The investigation loop: one unit, one backbone, one sandbox, until a final answer.

Each round asks the backbone, runs the ```python blocks of its reply in the sandbox, and
sends back what they printed and displayed, and any error. A reply with ``[DESCRIPTION]``
ends the investigation. After ``max_rounds`` the backbone is asked for its final answer.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any

from maia_core.backbone import Backbone, Usage
from maia_core.execution.sandbox import Session
from maia_core.loop import prompts
from maia_core.loop.describer import Describer, DescriberCall
from maia_core.loop.reporter import Reporter, UnitNotSaved
from maia_core.loop.state import Investigation, Result
from maia_core.options import DEFAULT_MAX_ROUNDS
from maia_core.transcript import Message, Part, TextPart

# After max_rounds, how many times to ask for the final answer before giving up.
FINAL_REQUESTS = 2

_CODE = re.compile(
    r"```[ \t]*(?:python|py|python3)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE
)
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
# The final answer starts a line (after optional markdown emphasis, quoting or a heading mark).
_DESCRIPTION = re.compile(
    r"^[ \t>#*_]*\[DESCRIPTION\]\**\s*:?\**\s*(.*?)(?=^[ \t>#*_]*\[LABEL\]|\Z)",
    re.DOTALL | re.MULTILINE,
)
_LABEL = re.compile(r"^[ \t>#*_]*\[LABEL\]\**\s*:?\**\s*(.+)", re.MULTILINE)


def extract_code(text: str) -> list[str]:
    """The ```python blocks of a reply, in order (an unterminated last block counts)."""
    return [block.strip("\n") for block in _CODE.findall(text) if block.strip()]


def parse_final(text: str) -> tuple[str, str] | None:
    """``(description, label)`` if the reply gives a final answer, else None.

    Only an answer outside code blocks counts, with ``[DESCRIPTION]`` starting a line: a reply
    that quotes the marker in passing, or prints it from code, is not an answer.
    """
    prose = _FENCE.sub("", text)
    d = _DESCRIPTION.search(prose)
    if not d:
        return None
    description = d.group(1).strip().strip("*").strip()
    label_match = _LABEL.search(prose, d.start())
    label = label_match.group(1).strip().strip("*").strip() if label_match else ""
    return description, label


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Loop:
    """Runs one investigation: a backbone, the unit's sandbox session, the reporters.

    Investigations run concurrently, each with its own ``Loop``; the backbone and the
    reporters are shared (the reporters serialise their events).
    """

    def __init__(
        self,
        backbone: Backbone,
        session: Session,
        reporter: Reporter,
        *,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        describer: Describer | None = None,
    ):
        self.backbone = backbone
        self.session = session
        self.reporter = reporter
        self.max_rounds = max_rounds
        self.describer = describer

    def _add(self, inv: Investigation, message: Message) -> None:
        inv.messages.append(message)
        self.reporter.message_added(inv, message)
        if inv.save_error is not None:
            # The transcript can no longer be saved: asking on would spend for nothing.
            raise UnitNotSaved(inv.save_error)

    def _ask(self, inv: Investigation, result: Result, kind: str) -> str:
        reply = self.backbone.complete(inv.messages)
        result.rounds += 1
        result.usage = result.usage + reply.usage
        inv.spent_usd = result.usage.cost_usd or 0.0
        inv.rounds_done = result.rounds
        result.rounds_usage.append({"round": result.rounds, **reply.usage.to_json()})
        meta = {"round": result.rounds, "kind": kind, "usage": reply.usage.to_json()}
        if reply.model:
            meta["model"] = reply.model
        meta.update(reply.meta)
        self._add(inv, Message.of("assistant", reply.text, **meta))
        return reply.text

    def _count_describer(self, inv: Investigation, result: Result, meta: dict[str, Any]) -> None:
        """Describer calls made by this round's code: recorded with its result, and their
        tokens and cost counted in the round's and the unit's usage."""
        calls: list[DescriberCall] = self.describer.take() if self.describer else []
        if not calls:
            return
        meta["describer"] = [c.to_json() for c in calls]
        used = Usage()
        for c in calls:
            used = used + c.usage
        result.usage = result.usage + used
        inv.spent_usd = result.usage.cost_usd or 0.0
        entry = result.rounds_usage[-1]
        keys = (
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "cache_read_tokens",
            "cache_write_tokens",
        )
        total = Usage(**{k: entry[k] for k in keys if k in entry}) + used
        entry.update(total.to_json(), describer=used.to_json())

    def _run_code(self, blocks: list[str]) -> tuple[list[Part], float, int, list[dict[str, Any]]]:
        parts: list[Part] = []
        seconds = 0.0
        self.host_seconds = 0.0
        restarts = 0
        records: list[dict[str, Any]] = []
        for i, code in enumerate(blocks):
            cell = self.session.run_cell(code)
            records.extend(cell.records)
            self.host_seconds += cell.host_seconds
            if cell.restarted and cell.restarted_before:
                parts.append(TextPart(prompts.restart_note(cell.restarted), "note"))
            parts.extend(cell.parts)
            seconds += cell.seconds
            if cell.restarted:
                restarts += 1
                if not cell.restarted_before:
                    parts.append(TextPart(prompts.restart_note(cell.restarted), "note"))
            if cell.error:
                if i + 1 < len(blocks):
                    parts.append(
                        TextPart(
                            f"[The remaining {len(blocks) - i - 1} code block(s) of your reply were not run.]",
                            "note",
                        )
                    )
                break
        if not parts:
            parts.append(
                TextPart(
                    "[The code ran and printed nothing. Print or display what you want to see.]",
                    "note",
                )
            )
        return parts, seconds, restarts, records

    def run(self, inv: Investigation) -> Result:
        """Investigate ``inv.unit`` to the end. Backbone failures propagate to the caller."""
        result = Result("incomplete", started_at=_now())
        inv.result = None
        start = time.perf_counter()
        try:
            if self.describer is not None:
                self.describer.begin(inv.unit)
            setup = self.session.begin(inv.unit)
            inv.threshold = setup.threshold_note
            inv.target_description = setup.target_description
            self._add(inv, Message.of("system", prompts.system_prompt(setup.api), kind="system"))
            task = prompts.task_prompt(
                str(inv.unit.index),
                inv.unit.layer,
                # The name system gives itself: a user's file path in a target spec
                # (synthetic:/home/me/set.json) is not the agent's to see.
                str(setup.attrs.get("model_name") or inv.target),
                setup.target_description,
                setup.threshold_note,
            )
            self._add(
                inv,
                Message.of(
                    "user",
                    task,
                    kind="task",
                    target=inv.target,
                    layer=inv.unit.layer,
                    unit=inv.unit.index,
                ),
            )

            final = None
            for round_no in range(1, self.max_rounds + 1):
                text = self._ask(inv, result, "experiment")
                blocks = extract_code(text)
                # A final answer counts when the reply runs no code: an answer next to code
                # would leave the code unrun.
                final = parse_final(text) if not blocks else None
                if final:
                    break
                if not blocks:
                    parts: list[Part] = [TextPart(prompts.CORRECTION, "note")]
                    meta = {"round": result.rounds, "kind": "correction"}
                else:
                    parts, seconds, restarts, records = self._run_code(blocks)
                    if parse_final(text):
                        parts.append(TextPart(prompts.ANSWER_WITH_CODE, "note"))
                    result.sandbox_restarts += restarts
                    meta = {
                        "round": result.rounds,
                        "kind": "result",
                        "seconds": round(seconds, 3),
                        "host_seconds": round(self.host_seconds, 3),
                    }
                    if records:
                        meta["tools"] = records
                    self._count_describer(inv, result, meta)
                if round_no == self.max_rounds:
                    parts.append(TextPart(prompts.final_request(self.max_rounds), "note"))
                self._add(inv, Message("user", parts, meta))

            for attempt in range(FINAL_REQUESTS if not final else 0):
                if attempt:
                    self._add(
                        inv,
                        Message.of(
                            "user",
                            TextPart(prompts.final_request(self.max_rounds), "note"),
                            kind="final_request",
                        ),
                    )
                final = parse_final(self._ask(inv, result, "final"))
                if final:
                    break
            if final:
                result.status = "completed"
                result.description, result.label = final
        finally:
            result.wall_time_s = time.perf_counter() - start
            result.finished_at = _now()
            inv.result = result
        return result
