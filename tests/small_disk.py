"""Real small and read-only file systems for tests, and a portable stand-in for a full disk.

``SmallDisk`` mounts a tmpfs of a given size (Linux, as root); where mounting is not permitted
the test is skipped with the reason. ``failing_writes`` makes the operating system's answer to
syncing some files an error (``ENOSPC``, ``EIO``...), at the one OS call every atomic write
makes, so the same behaviour is tested on any machine. Use them with
``pytest_plugins = ["small_disk"]``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of ``size`` (e.g. ``"4m"``) mounted at ``path`` for the test."""

    def __init__(self, path: Path, size: str):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            pytest.skip("needs the mount command to make a small file system")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def fill(self, leave: int) -> None:
        """Fill the disk with a ballast file, leaving about ``leave`` bytes free."""
        free = shutil.disk_usage(self.path).free
        with open(self.path / "ballast", "wb") as f:
            f.write(bytes(max(0, free - leave)))

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)`` mounts a tmpfs under the test's folder; unmounted at the end."""
    disks: list[SmallDisk] = []

    def make(size: str = "4m", name: str = "disk") -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.close()


@pytest.fixture
def read_only(tmp_path):
    """``read_only(fill)``: a folder that cannot be written, after ``fill(folder)`` put files in
    it. As root (whom permissions do not stop) a tmpfs remounted read-only; else chmod."""
    disks: list[SmallDisk] = []
    modes: list[Path] = []

    def make(fill: Callable[[Path], None] = lambda folder: None) -> Path:
        if os.geteuid() == 0:
            disk = SmallDisk(tmp_path / f"ro{len(disks)}", "16m")
            disks.append(disk)
            fill(disk.path)
            disk.remount("ro")
            return disk.path
        folder = tmp_path / f"ro{len(modes)}"
        folder.mkdir()
        fill(folder)
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
                modes.append(p)
        return folder

    yield make
    for p in modes:
        p.chmod(0o755)
    for disk in disks:
        disk.close()


@pytest.fixture
def failing_writes(monkeypatch):
    """``with failing_writes(fails, code=ENOSPC):`` syncing a file whose path and size make
    ``fails(path, size)`` true raises ``OSError(code)``, as a full disk (``ENOSPC``) or a
    failing one (``EIO``) does at fsync. Only this process is affected."""

    @contextlib.contextmanager
    def active(fails: Callable[[str, int], bool], code: int = errno.ENOSPC):
        real = os.fsync

        def fsync(fd: int) -> None:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if path and fails(path, os.fstat(fd).st_size):
                raise OSError(code, os.strerror(code))
            real(fd)

        with monkeypatch.context() as m:
            m.setattr(os, "fsync", fsync)
            yield

    return active
