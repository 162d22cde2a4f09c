"""The ``json`` reporter: ``history.json``, and MAIA's description.txt/label.txt.

``history.json`` is rewritten (atomically) after every message, so an interrupted
investigation keeps everything up to its last round. ``result.json``, the completion marker,
is written by the core after every reporter (:mod:`maia_core.loop.results`). Before a
completed unit is skipped, its history must be there (the core checks that it ends with the
answer), and a label or description that is missing or differs is written again from it.
"""

from __future__ import annotations

from pathlib import Path

from maia_core import hookimpl
from maia_core.files import atomic_write_text, json_text
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
    unit_files = True  # history.json, label.txt and description.txt are the unit's

    def __init__(self, results: Path, **options: str):
        self.results = Path(results)
        # Messages never change once added: each is encoded once, so rewriting history.json
        # every round costs a write, not a re-encoding of every image so far.
        self._encoded: dict[int, list[str]] = {}

    def _history(self, inv: Investigation, sync: bool = True) -> None:
        encoded = self._encoded.setdefault(id(inv), [])
        for message in inv.messages[len(encoded) :]:
            encoded.append(json_text(message.to_json()))
        head = transcript_to_json(
            [], target=inv.target, layer=inv.unit.layer, unit=inv.unit.index, backbone=inv.backbone
        )
        head.pop("messages")
        text = json_text(head)[:-1] + ', "messages": [' + ", ".join(encoded) + "]}"
        atomic_write_text(inv.out_dir / "history.json", text, sync=sync)

    def unit_started(self, inv: Investigation) -> None:
        self._encoded.pop(id(inv), None)

    def message_added(self, inv: Investigation, message: Message) -> None:
        # A checkpoint to watch the unit by: a unit that stops before it finishes is studied
        # again, so this need not survive a crash of the machine (no fsync: 0.3 ms a message
        # on a fast disk, far more on a spinning or network one); the write at its end does.
        self._history(inv, sync=False)

    def unit_finished(self, inv: Investigation) -> None:
        self._history(inv)
        self._encoded.pop(id(inv), None)
        result = inv.result
        if result.status == "completed":
            self._answer(inv)

    @staticmethod
    def _answer(inv: Investigation) -> None:
        """MAIA's description.txt and label.txt, each written unless it already says so."""
        for name, text in (
            ("description.txt", inv.result.description),
            ("label.txt", inv.result.label or ""),
        ):
            path = inv.out_dir / name
            try:
                same = path.read_text(encoding="utf-8") == text + "\n"
            except (OSError, ValueError):
                same = False
            if not same:
                atomic_write_text(path, text + "\n")

    def resume_unit(self, inv: Investigation) -> str | None:
        if not (inv.out_dir / "history.json").is_file():
            return "its history.json is missing"
        self._answer(inv)  # the core checked that the history ends with this answer
        return None
