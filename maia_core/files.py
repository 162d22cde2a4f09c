"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write that finds the disk full raises :class:`DiskFull`, an ``OSError`` that also says how
many bytes the write needed and how many were free, so the message can say what to free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maia_core.errors import UserError


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
# A disk with no room left, or a user over their quota.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """Writing ``path`` found no space left: it needed ``needed`` bytes, ``free`` were free
    (None when unknown)."""

    def __init__(self, path: Path, needed: int, free: int | None, strerror: str | None = None):
        super().__init__(errno.ENOSPC, strerror or os.strerror(errno.ENOSPC), str(path))
        self.path, self.needed, self.free = Path(path), needed, free


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system of ``folder`` (None when it cannot be told)."""
    for p in [Path(folder), *Path(folder).parents]:
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def size_text(n: int | None) -> str:
    """``12.3 MB``, ``48 KB``: a size for a message."""
    if n is None:
        return "an unknown amount"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{max(1, round(n / 1000))} KB"


def disk_full_message(exc: OSError, writing: str, fix: str) -> str:
    """One line for a full disk: what was being written, the space it needed and had, what to
    free, then ``fix`` (how to go on; it starts with its own punctuation: ", then run ...")."""
    where = Path(exc.filename) if exc.filename else None
    needed = exc.needed if isinstance(exc, DiskFull) else None
    free = exc.free if isinstance(exc, DiskFull) else (free_bytes(where.parent) if where else None)
    folder = shown_path(where.parent) if where else "its folder"
    if needed is not None:
        room = f"it needs {size_text(needed)} and {size_text(free)} is free on the disk of {folder}"
        more = needed - (free or 0)
        free_hint = f"Free at least {size_text(max(more, 1))} there"
    else:
        room = f"{size_text(free)} is free on the disk of {folder}"
        free_hint = "Free space there"
    return f"The disk is full: writing {writing} failed ({room}). {free_hint}{fix}"


@contextlib.contextmanager
def full_disk_stops(fix: str) -> Iterator[None]:
    """A full disk inside the block becomes a one-line :class:`UserError` naming the file that
    could not be written, the space it needed and had, and ``fix`` (how to go on)."""
    try:
        yield
    except OSError as exc:
        if not no_space(exc):
            raise
        raise UserError(disk_full_message(exc, shown_path(exc.filename or "a file"), fix)) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A full disk raises :class:`DiskFull`; nothing is left behind (the old file stays). With
    ``sync`` (the default) the data reaches the disk before the rename, so it survives a crash
    of the machine too; without it, only a crash of the process (for checkpoints that a
    finished write replaces)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if no_space(exc):
            raise DiskFull(path, len(data), free_bytes(path.parent), exc.strerror) from exc
        raise
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if no_space(exc):
            # Told after the temporary file is gone, so ``free`` is what a retry would have.
            raise DiskFull(path, len(data), free_bytes(path.parent), exc.strerror) from exc
        raise
    return path


def atomic_write_text(
    path: str | os.PathLike, text: str, errors: str = "strict", *, sync: bool = True
) -> Path:
    """``text`` as UTF-8; ``errors="replace"`` for pages that show text from elsewhere, so a
    lone surrogate (from a JSON escape or an undecodable file name) cannot stop the write."""
    return atomic_write_bytes(path, text.encode("utf-8", errors), sync=sync)


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as JSON text that can be written as UTF-8: a lone surrogate (from an undecodable
    file name, say) stays a ``\\udcff`` escape rather than stopping the write."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, indent=indent)
    return text


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_bytes(path, json_text(obj, indent).encode("utf-8"))


# What the probe writes: a full disk fails it, where creating an empty file still works.
PROBE_BYTES = 64 * 1024


def _probe(
    folder: Path,
    flag: str,
    shown: Path,
    fix: str = "Give a folder you can write to",
    probe_bytes: int = PROBE_BYTES,
) -> None:
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".maia-probe-", dir=folder)
        with os.fdopen(fd, "wb") as f:
            if probe_bytes:
                f.write(bytes(probe_bytes))
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        if no_space(exc):
            raise UserError(
                f"{flag} {shown_path(shown)!r} is on a full disk ({size_text(free_bytes(folder))} "
                "free). Free space there, or give a folder on another disk."
            ) from None
        raise UserError(
            f"{flag} {shown_path(shown)!r} is not writable ({exc.strerror or exc}). {fix}."
        ) from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)


def check_writable(
    folder: str | os.PathLike,
    flag: str,
    fix: str = "Give a folder you can write to",
    probe_bytes: int = PROBE_BYTES,
) -> None:
    """A one-line error unless files can be written in the existing ``folder``, naming it
    with ``flag`` and saying ``fix``: called before work, so nothing is lost to it.
    ``probe_bytes`` are written (and synced) to find a full disk; 0 only checks permission."""
    _probe(Path(folder), flag, Path(folder), fix, probe_bytes)


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
        if no_space(exc):
            raise UserError(
                f"{flag} {shown_path(path)!r} cannot be created: its disk is full. Free space "
                "there, or give a folder on another disk."
            ) from None
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


def text_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is text: no undecodable bytes (a non-UTF-8 name) and no line breaks or
    other control characters, so it can be shown, linked and written as it is."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return text.isprintable()


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as one line of printable text: undecodable bytes as ``\\xff``, control
    characters escaped, for a message that names a folder with an odd name."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]+")


def slug(text: str) -> str:
    """A folder-safe form of a target, backbone or layer name: ``timm:resnet18`` -> ``timm-resnet18``."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    return cleaned or "_"
