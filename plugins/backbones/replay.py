"""The ``replay`` backbone: plays back the assistant turns of a recorded transcript.

``--backbone replay:PATH``, where PATH is

- a ``history.json`` written by maia (or MAIA's own history.json, OpenAI-style messages);
- a JSON list of strings, one per assistant turn;
- a results folder: each unit replays ``<PATH>/<layer>/<unit>/history.json``.

The n-th reply of an investigation is the n-th recorded assistant turn, so replaying a
past run re-executes its code against the target and reproduces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maia_core import hookimpl
from maia_core.backbone import Backbone, Reply
from maia_core.errors import BackboneError, UserError
from maia_core.files import slug
from maia_core.options import reject_unknown
from maia_core.transcript import Message


@hookimpl
def register_backbones(register):
    register(
        "replay",
        make_replay,
        help="Play back a recorded transcript: replay:PATH (history.json, JSON list of strings, or a results folder)",
    )


def make_replay(arg: str | None, **options: str) -> ReplayBackbone:
    reject_unknown(options, "Backbone replay", ())
    if not arg:
        raise UserError("The replay backbone needs a path: --backbone replay:PATH.")
    return ReplayBackbone(Path(arg))


def assistant_turns(obj: Any, source: str) -> list[str]:
    """The assistant texts of a recorded transcript, in order."""
    if isinstance(obj, dict) and "messages" in obj:
        obj = obj["messages"]
    if not isinstance(obj, list):
        raise UserError(
            f"Replay file {source} must hold a maia history.json or a JSON list of strings."
        )
    turns = []
    for item in obj:
        if isinstance(item, str):
            turns.append(item)
        elif isinstance(item, dict) and item.get("role") == "assistant":
            content = item.get("parts", item.get("content", ""))
            if isinstance(content, str):
                turns.append(content)
            else:  # maia parts, or OpenAI-style content blocks as in MAIA's history.json
                turns.append(
                    "\n".join(
                        p.get("text", "")
                        for p in content
                        if isinstance(p, dict) and p.get("type") == "text"
                    )
                )
    if not turns:
        raise UserError(f"Replay file {source} holds no assistant turns.")
    return turns


def _load(path: Path) -> list[str]:
    try:
        return assistant_turns(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise UserError(f"Replay file {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"Replay file {str(path)!r} is not valid JSON: {exc}.") from None


class ReplayBackbone(Backbone):
    def __init__(self, path: Path):
        self.path = path
        self.name = f"replay:{path}"
        self._cache: dict[Path, list[str]] = {}
        if path.is_file():
            self._cache[path] = _load(path)
        elif not path.is_dir():
            raise UserError(f"Replay file {str(path)!r} does not exist.")

    @property
    def slug(self) -> str:
        return "replay"

    def _turns_for(self, messages: list[Message]) -> tuple[list[str], Path]:
        if self.path.is_file():
            return self._cache[self.path], self.path
        task = next((m for m in messages if m.meta.get("kind") == "task"), None)
        if task is None or "layer" not in task.meta:
            raise BackboneError(
                f"replay from the folder {self.path} needs a task message naming the unit"
            )
        candidates = [
            self.path / layer / str(task.meta["unit"]) / "history.json"
            for layer in (task.meta["layer"], slug(task.meta["layer"]))
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise BackboneError(
                f"no recorded transcript for this unit: {candidates[-1]} does not exist"
            )
        if found not in self._cache:
            self._cache[found] = _load(found)
        return self._cache[found], found

    def complete(self, messages: list[Message]) -> Reply:
        turns, source = self._turns_for(messages)
        n = sum(1 for m in messages if m.role == "assistant")
        if n >= len(turns):
            raise BackboneError(
                f"the recorded transcript {source} has no assistant turn {n + 1} (it has {len(turns)})"
            )
        return Reply(turns[n], model="replay")
