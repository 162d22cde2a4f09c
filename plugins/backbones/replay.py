"""The ``replay`` backbone: plays back the assistant turns of a recorded transcript.

``--backbone replay:PATH``, where PATH is

- a ``history.json`` written by maia (or MAIA's own history.json, OpenAI-style messages);
- a JSON list of strings, one per assistant turn;
- a results folder: each unit replays ``<PATH>/<layer>/<unit>/history.json``.

The n-th reply of an investigation is the n-th recorded assistant turn, so replaying a
past run re-executes its code against the target and reproduces it. Requests from tools such
as ``describe_images`` (marked by :mod:`maia_core.loop.describer`) get the recorded describer reply
with the same call number, never an agent turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maia_core import hookimpl
from maia_core.backbone import Backbone, Reply
from maia_core.errors import BackboneError, UserError
from maia_core.files import slug
from maia_core.loop.describer import DESCRIBER_KIND
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
    """The assistant texts of a recorded transcript, in order.

    Anything that is not a turn is an error naming where it is, never silently dropped: a
    replay that skipped a turn would replay a different investigation.
    """
    if isinstance(obj, dict) and "messages" in obj:
        obj = obj["messages"]
    if not isinstance(obj, list):
        raise UserError(
            f"Replay file {source} must hold a maia history.json or a JSON list of strings."
        )
    turns = []
    for i, item in enumerate(obj):
        if isinstance(item, str):
            turns.append(item)
        elif isinstance(item, dict) and "role" in item:
            if item.get("role") != "assistant":
                continue
            content = item.get("parts", item.get("content", ""))
            if isinstance(content, str):
                turns.append(content)
            elif isinstance(content, list) and all(isinstance(p, dict) for p in content):
                # maia parts, or OpenAI-style content blocks as in MAIA's history.json
                turns.append(
                    "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
                )
            else:
                raise UserError(
                    f"Replay file {source}: message {i} is an assistant turn whose content is a "
                    f"{type(content).__name__}, not text or a list of parts."
                )
        else:
            raise UserError(
                f"Replay file {source}: item {i} is a {type(item).__name__}, not a turn; a replay "
                "file is a JSON list of strings or a history.json."
            )
    if not turns:
        raise UserError(f"Replay file {source} holds no assistant turns.")
    return turns


def describer_replies(obj: Any) -> dict[int, str]:
    """The describer replies a maia history.json recorded, by call number."""
    messages = obj.get("messages") if isinstance(obj, dict) else None
    out: dict[int, str] = {}
    for m in messages or ():
        meta = m.get("meta") if isinstance(m, dict) else None
        for call in (meta or {}).get("describer") or ():
            if isinstance(call, dict) and isinstance(call.get("call"), int):
                out[call["call"]] = str(call.get("reply", ""))
    return out


@dataclass
class Recording:
    turns: list[str]
    describer: dict[int, str] = field(default_factory=dict)


def _load(path: Path) -> Recording:
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is allowed
        obj = json.loads(text)
        return Recording(assistant_turns(obj, str(path)), describer_replies(obj))
    except FileNotFoundError:
        raise UserError(f"Replay file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise UserError(
            f"Replay file {str(path)!r} is a folder without the unit's history.json."
        ) from None
    except UnicodeDecodeError:
        raise UserError(
            f"Replay file {str(path)!r} is not text: a replay file is JSON (a history.json or a list of strings)."
        ) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"Replay file {str(path)!r} is not valid JSON: {exc}.") from None
    except OSError as exc:
        raise UserError(f"Cannot read replay file {str(path)!r}: {exc.strerror or exc}.") from None


class ReplayBackbone(Backbone):
    writes_prompts = False  # it plays back an agent; reflection's checks use templates

    def __init__(self, path: Path):
        self.path = path
        self.name = f"replay:{path}"
        self._cache: dict[Path, Recording] = {}
        if path.is_file():
            self._cache[path] = _load(path)
        elif not path.is_dir():
            raise UserError(f"Replay file {str(path)!r} does not exist.")

    @property
    def slug(self) -> str:
        """``replay-<name>``: each recording gets its own results folder, so a second replay
        is not mistaken for the first one's finished units."""
        path = self.path.resolve()
        if path.is_dir():
            name = "-".join(path.parts[-2:])
        else:
            name = (
                path.stem if path.stem != "history" else "-".join([*path.parts[-4:-1], path.stem])
            )
        return slug(f"replay-{name}")

    def _recording_for(self, messages: list[Message]) -> tuple[Recording, Path]:
        if self.path.is_file():
            return self._cache[self.path], self.path
        if messages and messages[0].meta.get("kind") == DESCRIBER_KIND:
            named = messages[0]
        else:
            named = next((m for m in messages if m.meta.get("kind") == "task"), None)
        if named is None or "layer" not in named.meta:
            raise BackboneError(
                f"replay from the folder {self.path} needs a task message naming the unit"
            )
        candidates = [
            self.path / layer / str(named.meta["unit"]) / "history.json"
            for layer in (named.meta["layer"], slug(named.meta["layer"]))
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
        recording, source = self._recording_for(messages)
        if messages and messages[0].meta.get("kind") == DESCRIBER_KIND:
            call = messages[0].meta.get("call", 0)
            if call not in recording.describer:
                raise BackboneError(
                    f"the recorded transcript {source} has no describer reply {call + 1} "
                    f"(it has {len(recording.describer)})"
                )
            return Reply(recording.describer[call], model="replay")
        turns = recording.turns
        n = sum(1 for m in messages if m.role == "assistant")
        if n >= len(turns):
            raise BackboneError(
                f"the recorded transcript {source} has no assistant turn {n + 1} (it has {len(turns)})"
            )
        return Reply(turns[n], model="replay")
