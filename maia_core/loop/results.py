"""A unit's results folder: where it is, whether it is done, who is studying it.

``result.json`` is the completion marker: it is written by the core, atomically, after every
reporter has written its files, so a unit marked ``completed`` has all of them. A per-unit lock
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

from maia_core import __version__
from maia_core.files import atomic_write_json, slug
from maia_core.loop.state import Investigation
from maia_core.units import Unit

LOCK_NAME = ".lock"


def unit_dir(results: Path, backbone_slug: str, target: str, unit: Unit) -> Path:
    """``results/<backbone>/<target>/<layer>/<unit>/``"""
    return Path(results) / backbone_slug / slug(target) / slug(unit.layer) / str(unit.index)


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """The unit's ``result.json``, or None when it is missing or unreadable."""
    try:
        data = json.loads((out_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed(out_dir: Path) -> bool:
    data = read_result(out_dir)
    return data is not None and data.get("status") == "completed"


def write_result(inv: Investigation) -> None:
    """The completion marker, last of the unit's files."""
    atomic_write_json(inv.out_dir / "result.json", {**inv.to_json(), "maia_version": __version__})


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
