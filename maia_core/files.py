"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from maia_core.errors import UserError


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_bytes(
        path, json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8")
    )


def _probe(folder: Path, flag: str, shown: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".maia-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{flag} {str(shown)!r} is not writable ({exc.strerror or exc}). Give a folder you can write to."
        ) from None


def ensure_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """The folder ``path``, created with its parents, and writable; else a one-line error.

    Called before any work, so a bad ``--results`` or ``--out`` fails at once, not after an
    hour of computing."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            where = "is a file" if p == path else f"lies under {str(p)!r}, which is a file"
            raise UserError(f"{flag} {str(path)!r} {where}; give a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{flag} {str(path)!r} cannot be created ({exc.strerror or exc}). Give another folder."
        ) from None
    _probe(path, flag, path)
    return path


def ensure_output_file(path: str | os.PathLike, flag: str) -> Path:
    """A file ``path`` can be written to: not a folder, in an existing writable folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; give a file name.")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file" if parent.exists() else "does not exist"
        raise UserError(
            f"{flag} {str(path)!r}: its folder {str(parent)!r} {what}. Create the folder, or give another path."
        )
    _probe(parent, flag, path)
    return path


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]+")


def slug(text: str) -> str:
    """A folder-safe form of a target, backbone or layer name: ``timm:resnet18`` -> ``timm-resnet18``."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    return cleaned or "_"
