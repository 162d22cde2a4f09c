"""The ``json`` reporter: ``history.json``, and MAIA's description.txt/label.txt.

``history.json`` is rewritten (atomically) after every message, so an interrupted
investigation keeps everything up to its last round. ``result.json``, the completion marker,
is written by the core after every reporter (:mod:`maia_core.loop.results`).
"""

from __future__ import annotations

import json
from pathlib import Path

from maia_core import hookimpl
from maia_core.files import atomic_write_text
from maia_core.loop.reporter import Reporter
from maia_core.loop.state import Investigation
from maia_core.transcript import Message, transcript_to_json


@hookimpl
def register_reporters(register):
    register(
        "json",
        JsonReporter,
        help="history.json, description.txt and label.txt per unit (result.json is the core's)",
    )


class JsonReporter(Reporter):
    def __init__(self, results: Path, **options: str):
        self.results = Path(results)
        # Messages never change once added: each is encoded once, so rewriting history.json
        # every round costs a write, not a re-encoding of every image so far.
        self._encoded: dict[int, list[str]] = {}

    def _history(self, inv: Investigation) -> None:
        encoded = self._encoded.setdefault(id(inv), [])
        for message in inv.messages[len(encoded) :]:
            encoded.append(json.dumps(message.to_json(), ensure_ascii=False))
        head = transcript_to_json(
            [], target=inv.target, layer=inv.unit.layer, unit=inv.unit.index, backbone=inv.backbone
        )
        head.pop("messages")
        text = (
            json.dumps(head, ensure_ascii=False)[:-1]
            + ', "messages": ['
            + ", ".join(encoded)
            + "]}"
        )
        atomic_write_text(inv.out_dir / "history.json", text)

    def unit_started(self, inv: Investigation) -> None:
        self._encoded.pop(id(inv), None)

    def message_added(self, inv: Investigation, message: Message) -> None:
        self._history(inv)

    def unit_finished(self, inv: Investigation) -> None:
        self._history(inv)
        self._encoded.pop(id(inv), None)
        result = inv.result
        if result.status == "completed":
            atomic_write_text(inv.out_dir / "description.txt", result.description + "\n")
            atomic_write_text(inv.out_dir / "label.txt", result.label + "\n")
