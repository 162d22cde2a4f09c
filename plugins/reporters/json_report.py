"""The ``json`` reporter: ``history.json``, ``result.json``, and MAIA's description.txt/label.txt.

``history.json`` is rewritten (atomically) after every message, so an interrupted
investigation keeps everything up to its last round.
"""

from __future__ import annotations

from pathlib import Path

from maia_core import __version__, hookimpl
from maia_core.files import atomic_write_json, atomic_write_text
from maia_core.investigation import Investigation
from maia_core.reporter import Reporter
from maia_core.transcript import Message, transcript_to_json


@hookimpl
def register_reporters(register):
    register(
        "json",
        JsonReporter,
        help="history.json, result.json, description.txt and label.txt per unit",
    )


class JsonReporter(Reporter):
    def __init__(self, results: Path, **options: str):
        self.results = Path(results)

    def _history(self, inv: Investigation) -> None:
        atomic_write_json(
            inv.out_dir / "history.json",
            transcript_to_json(
                inv.messages,
                target=inv.target,
                layer=inv.unit.layer,
                unit=inv.unit.index,
                backbone=inv.backbone,
            ),
            indent=None,
        )

    def message_added(self, inv: Investigation, message: Message) -> None:
        self._history(inv)

    def unit_finished(self, inv: Investigation) -> None:
        self._history(inv)
        result = inv.result
        if result.status == "completed":
            atomic_write_text(inv.out_dir / "description.txt", result.description + "\n")
            atomic_write_text(inv.out_dir / "label.txt", result.label + "\n")
        # result.json last: its "completed" status is what a re-run checks to skip the unit.
        atomic_write_json(
            inv.out_dir / "result.json", {**inv.to_json(), "maia_version": __version__}
        )
