"""The investigation loop: one subject, one backbone, one sandbox, until a final answer.

Each round asks the backbone, runs the ```python blocks of its reply in the sandbox, and
sends back what they printed and displayed, and any error. A reply with no code that gives the
task's final answer (``[DESCRIPTION]`` and ``[LABEL]`` for describe) ends the investigation;
one whose answer is malformed gets back what is missing. After ``max_rounds`` the backbone is
asked for its final answer. With reflection (``--reflect N``) each answer is checked by
prediction, and the agent investigates again when the check fails (see
:mod:`maia_core.loop.reflection`).
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
from maia_core.loop.reflection import Reflection
from maia_core.loop.reporter import Reporter, UnitNotSaved
from maia_core.loop.state import Investigation, Result
from maia_core.options import DEFAULT_MAX_ROUNDS
from maia_core.task import Answer, IncompleteAnswer, Task
from maia_core.task import parse_final as parse_final  # describe's parser, where it always was
from maia_core.transcript import Message, Part, TextPart

# After max_rounds, how many times to ask for the final answer before giving up.
FINAL_REQUESTS = 2

_CODE = re.compile(
    r"```[ \t]*(?:python|py|python3)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE
)


def extract_code(text: str) -> list[str]:
    """The ```python blocks of a reply, in order (an unterminated last block counts)."""
    return [block.strip("\n") for block in _CODE.findall(text) if block.strip()]


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
        task: Task | None = None,
        reflection: Reflection | None = None,
    ):
        self.backbone = backbone
        self.session = session
        self.reporter = reporter
        self.max_rounds = max_rounds
        self.describer = describer
        # describe's prompts and answer unless a task says otherwise
        self.task = task if task is not None else Task()
        self.reflection = reflection

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
        """Investigate ``inv.subject`` to the end. Backbone failures propagate to the caller."""
        task = self.task
        result = Result("incomplete", started_at=_now())
        inv.result = None
        start = time.perf_counter()
        try:
            if self.describer is not None:
                self.describer.begin(inv.unit)
            setup = self.session.begin(inv.subject)
            inv.threshold = setup.threshold_note
            inv.target_description = setup.target_description
            self._add(inv, Message.of("system", task.system_prompt(setup.api), kind="system"))
            brief = task.task_prompt(
                inv.subject,
                # The name system gives itself: a user's file path in a target spec
                # (synthetic:/home/me/set.json) is not the agent's to see.
                str(setup.attrs.get("model_name") or inv.target),
                setup.target_description,
                setup.threshold_note,
                dict(setup.attrs),
            )
            layer, unit = inv.subject.folder()
            self._add(
                inv,
                Message.of(
                    "user",
                    brief,
                    kind="task",
                    target=inv.target,
                    layer=layer,
                    unit=inv.unit.index if len(inv.subject.units) == 1 else unit,
                    task=task.name or "describe",
                ),
            )
            answer = self._investigate(inv, result)
            if answer is not None and self.reflection is not None:
                answer = self._reflect(inv, result, setup.attrs, answer)
            if answer is not None:
                result.status = "completed"
                result.description, result.label = answer.description, answer.label
                result.answer = dict(answer.fields)
        finally:
            result.wall_time_s = time.perf_counter() - start
            result.finished_at = _now()
            inv.result = result
        return result

    def _parse(self, text: str) -> tuple[Answer | None, str | None]:
        """The answer a reply gives, or what is wrong with the answer it attempts."""
        try:
            return self.task.parse_answer(text), None
        except IncompleteAnswer as exc:
            return None, str(exc)

    def _investigate(self, inv: Investigation, result: Result) -> Answer | None:
        """Rounds of experiments until a final answer (the task's), then, after
        ``max_rounds``, requests for it. None when the agent gives none."""
        fmt = self.task.answer_format
        final: Answer | None = None
        for round_no in range(1, self.max_rounds + 1):
            text = self._ask(inv, result, "experiment")
            blocks = extract_code(text)
            # A final answer counts when the reply runs no code: an answer next to code
            # would leave the code unrun.
            problem = None
            if not blocks:
                final, problem = self._parse(text)
                if final:
                    break
            if problem is not None:
                parts: list[Part] = [TextPart(prompts.incomplete_answer(problem, fmt), "note")]
                meta = {"round": result.rounds, "kind": "incomplete_answer"}
            elif not blocks:
                parts = [TextPart(prompts.correction(fmt), "note")]
                meta = {"round": result.rounds, "kind": "correction"}
            else:
                parts, seconds, restarts, records = self._run_code(blocks)
                answered, wrong = self._parse(text)
                if answered or wrong:
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
                parts.append(TextPart(prompts.final_request(self.max_rounds, fmt), "note"))
            self._add(inv, Message("user", parts, meta))

        problem = None
        for attempt in range(FINAL_REQUESTS if not final else 0):
            if attempt:
                request = (
                    prompts.incomplete_answer(problem, fmt)
                    if problem
                    else prompts.final_request(self.max_rounds, fmt)
                )
                self._add(
                    inv,
                    Message.of(
                        "user",
                        TextPart(request, "note"),
                        kind="incomplete_answer" if problem else "final_request",
                    ),
                )
            final, problem = self._parse(self._ask(inv, result, "final"))
            if final:
                break
        return final

    def _reflect(
        self, inv: Investigation, result: Result, attrs: dict[str, Any], answer: Answer
    ) -> Answer:
        """SAIA's self-reflection: check each answer by prediction; below the threshold the
        agent sees the check and investigates again, up to ``rounds`` times. The answer kept is
        the most predictive (the later one of a tie); every check is kept in the result."""
        reflection = self.reflection
        answers = [answer]
        cycles: list[dict[str, Any]] = []
        for cycle in range(1, reflection.rounds + 2):
            check = reflection.check(answer, attrs, cycle)
            if check.usage is not None:
                result.usage = result.usage + check.usage
                inv.spent_usd = result.usage.cost_usd or 0.0
            cycles.append(check.record(answer))
            if check.passed or cycle > reflection.rounds:
                break
            self._add(
                inv,
                Message(
                    "user",
                    check.message(self.task.answer_format, cycle, reflection.rounds),
                    {
                        "kind": "reflection",
                        "cycle": cycle,
                        "predictiveness": round(check.predictiveness, 4),
                    },
                ),
            )
            again = self._investigate(inv, result)
            if again is None:
                break
            answer = again
            answers.append(answer)
        kept = max(range(len(cycles)), key=lambda i: (cycles[i]["predictiveness"], i))
        result.reflection = reflection.summary(cycles, kept)
        return answers[kept]
