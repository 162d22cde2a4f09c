"""A unit's results folder: where it is, whether it is done, who is studying it.

``result.json`` is the completion marker: it is written by the core, atomically, after every
reporter has written its files, and only when every one of them could, so a unit marked
``completed`` has all of them. Before a completed unit is skipped, its history must hold the
answer its ``result.json`` gives, and each reporter checks (and may rebuild) its own files; a
unit that fails these checks is studied again. A per-unit lock
keeps two runs from studying (and paying for) the same unit at once; a lock whose holder died
is released by the operating system, so stale locks need no cleaning. The lock file stays
(empty) after its run: deleting it would let two runs lock different files of one name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from maia_core import __version__, signing
from maia_core.backbone import Usage
from maia_core.files import atomic_write_json, slug
from maia_core.loop.state import Investigation, Result
from maia_core.task import Answer, Subject, Task
from maia_core.units import Unit

LOCK_NAME = ".lock"
# A result.json maia writes is a few KB; anything this big is not one, and is not read.
MAX_RESULT_BYTES = 4_000_000


def unit_dir(
    results: Path, backbone_slug: str, target: str, unit: Unit | Subject, task: str = "describe"
) -> Path:
    """``results/<backbone>/<target>/<layer>/<unit>/`` for describe; other tasks' results go
    under ``<target>/<task>/``, so one unit studied by two tasks keeps both. A pair's folder is
    ``<layer>/<unit>+<unit>`` (see :meth:`Subject.folder`)."""
    subject = unit if isinstance(unit, Subject) else Subject.of(unit)
    layer, index = subject.folder()
    base = Path(results) / backbone_slug / slug(target)
    if task != "describe":
        base = base / slug(task)
    return base / slug(layer) / slug(index)


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """The unit's ``result.json``, or None when it is missing or unreadable (or is not a
    plain file: a FIFO there must not hang the index)."""
    path = Path(out_dir) / "result.json"
    try:
        if not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed(out_dir: Path) -> bool:
    data = read_result(out_dir)
    return data is not None and data.get("status") == "completed"


def result_from_json(row: dict[str, Any]) -> Result:
    """The :class:`Result` a ``result.json`` holds (reporters re-render from it)."""
    usage = row.get("usage") if isinstance(row.get("usage"), dict) else {}

    def number(value: Any, kind: type) -> Any:
        try:
            return kind(value or 0)
        except (TypeError, ValueError):
            return kind(0)

    return Result(
        str(row.get("status")),
        row.get("description"),
        row.get("label"),
        number(row.get("rounds"), int),
        number(row.get("wall_time_s"), float),
        Usage(
            number(usage.get("input_tokens"), int),
            number(usage.get("output_tokens"), int),
            usage.get("cost_usd"),
        ),
        error=row.get("error"),
        sandbox_restarts=number(row.get("sandbox_restarts"), int),
        answer=row.get("answer") if isinstance(row.get("answer"), dict) else {},
        reflection=row.get("reflection") if isinstance(row.get("reflection"), dict) else None,
    )


def history_answers(out_dir: Path, task: Task | None = None) -> list[Answer] | None:
    """The final answers in the unit's ``history.json``, in order (with reflection there may
    be several), parsed as ``task`` parses them (describe's by default); None when the
    history is missing, or does not end with an answer (cut short). Reads the JSON only: no
    image of the transcript is decoded."""
    task = task if task is not None else Task()
    try:
        messages = json.loads((Path(out_dir) / "history.json").read_text(encoding="utf-8"))[
            "messages"
        ]
        texts = [
            "\n".join(p["text"] for p in m.get("parts") or () if p.get("type") == "text")
            for m in messages
            if m.get("role") == "assistant"
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    answers = []
    for text in texts:
        try:
            found = task.parse_answer(text)
        except Exception:  # noqa: BLE001 - a malformed answer is no answer
            found = None
        if found is not None:
            answers.append(found)
    if not texts or not answers:
        return None
    try:
        last = task.parse_answer(texts[-1])
    except Exception:  # noqa: BLE001
        last = None
    return answers if last is not None else None


def history_answer(out_dir: Path, task: Task | None = None) -> tuple[str, str] | None:
    """The final answer that ends the unit's ``history.json``: ``(description, label)``, or
    None (no history, or one cut short before the answer)."""
    answers = history_answers(out_dir, task)
    return (answers[-1].description, answers[-1].label) if answers else None


def holds_answer(out_dir: Path, result: Result, task: Task | None = None) -> bool:
    """Whether the unit's history ends with an answer and holds the one ``result`` gives (the
    last one, or with reflection the most predictive one)."""
    if result.description is None:
        return False
    answers = history_answers(out_dir, task) or []
    return (result.description, result.label or "") in [(a.description, a.label) for a in answers]


def write_result(inv: Investigation) -> None:
    """The completion marker, last of the unit's files, signed (:mod:`maia_core.signing`):
    evaluation acts only on what maia itself wrote."""
    data = {**inv.to_json(), "maia_version": __version__}
    atomic_write_json(inv.out_dir / "result.json", signing.sign(data))


class UnitLock:
    """An exclusive lock on a unit's folder for the duration of its investigation."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; None on success, else who holds it (for the message)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            return holder or "another maia run"
        os.ftruncate(fd, 0)
        info = f"maia run (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"
        os.write(fd, info.encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
