"""The describer: the backbone that tools such as ``describe_images`` ask, and its accounts.

It lives in the main process, which holds the keys; in the process sandbox a tool's request
travels from the worker over the sandbox channel to :meth:`Describer.__call__`. Each call is
recorded (prompt, reply, usage) so the loop can store it with the round's result, count its
tokens and cost in the unit's usage, and so a replay of ``history.json`` can answer the same
request with the same reply.

A describer request is marked by ``meta["kind"] == "describer"`` on its first message, with
``call`` (its 0-based number within the unit), ``layer`` and ``unit``. Backbones that replay
recordings use the mark; the others ignore meta.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maia_core.backbone import Backbone, Usage
from maia_core.errors import UserError
from maia_core.transcript import Message
from maia_core.units import Unit

DESCRIBER_KIND = "describer"


@dataclass
class DescriberCall:
    call: int
    prompt: str
    images: int
    reply: str
    usage: Usage = field(default_factory=Usage)
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "call": self.call,
            "prompt": self.prompt,
            "images": self.images,
            "reply": self.reply,
            "usage": self.usage.to_json(),
        }
        if self.model:
            d["model"] = self.model
        return d


class Describer:
    """The ``ask_backbone`` callable given to the sandbox: answers tools with ``backbone``."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.unit: Unit | None = None
        self.calls: list[DescriberCall] = []
        self._count = 0
        self._fatal: UserError | None = None

    def begin(self, unit: Unit) -> None:
        """A new investigation: numbering restarts, nothing is pending."""
        self.unit = unit
        self.calls = []
        self._count = 0
        self._fatal = None

    def __call__(self, messages: list[Message]) -> str:
        if not messages:
            raise ValueError("a describer request needs at least one message")
        call = self._count
        self._count += 1
        mark = {"kind": DESCRIBER_KIND, "call": call}
        if self.unit is not None:
            mark.update(layer=self.unit.layer, unit=self.unit.index)
        request = [
            Message(messages[0].role, messages[0].parts, {**messages[0].meta, **mark}),
            *messages[1:],
        ]
        try:
            reply = self.backbone.complete(request)
        except UserError as exc:
            # A rejected key is the whole run's problem, not this cell's: the loop re-raises it.
            self._fatal = exc
            raise
        self.calls.append(
            DescriberCall(
                call,
                "\n".join(m.text for m in request if m.role != "system").strip(),
                sum(len(m.images) for m in request),
                reply.text,
                reply.usage,
                reply.model,
            )
        )
        return reply.text

    def take(self) -> list[DescriberCall]:
        """The calls since the last ``take``; raises the user error a call hit, if any."""
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        calls, self.calls = self.calls, []
        return calls
