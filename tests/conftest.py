"""Shared fixtures. Tests run offline, on the CPU; nothing here reaches the network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Belt and braces: hub libraries must never try the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A suite started in the background by a shell (`pytest &`, nohup, some CI runners) inherits
# SIGINT ignored, and so would every maia it starts: the tests that press Ctrl-C on one would
# then see it carry on. Ctrl-C's usual handling, here and (as the default) in the children.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAIA = str(Path(sys.executable).parent / "maia")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: two workers a core, as most tests wait on the processes they start; at most
    one per 4 GB of memory (a test's model host can take 3) and at most 6. On 2 cores, four
    ran the suite in 9:08 where three took 9:34."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, min(2 * (cores or 1), memory // (4 * 2**30), 6))


def maia(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the installed ``maia`` command as a user would."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [MAIA, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )


def one_line(out: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a command failed on bad input as maia must: exit code 2 and one line on stderr,
    no traceback, holding each of ``needles``. Returns the line."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def thirdparty(tmp_path_factory) -> Path:
    """The toynet-maia distribution, installed with pip into a temporary folder.

    Returns the folder; put it on PYTHONPATH to make the plugin visible.
    """
    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "toynet"
    shutil.copytree(ROOT / "tests" / "thirdparty", src)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="session")
def thirdparty_env(thirdparty) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(thirdparty), os.environ.get("PYTHONPATH")]))
    }


@pytest.fixture
def with_thirdparty(thirdparty, monkeypatch):
    """Make the third-party plugin visible to this process and to sandbox workers."""
    from maia_core import plugins

    monkeypatch.syspath_prepend(str(thirdparty))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(thirdparty), os.environ.get("PYTHONPATH")]))
    )
    plugins.reset_plugins()
    yield thirdparty
    plugins.reset_plugins()


@pytest.fixture(scope="session")
def photos():
    """Real photos shipped inside scikit-image."""
    from PIL import Image
    from skimage import data

    return {
        name: Image.fromarray(getattr(data, name)()).convert("RGB")
        for name in ("chelsea", "coffee", "astronaut", "rocket")
    }


def write_replay(path: Path, turns: list[str]) -> Path:
    path.write_text(json.dumps(turns))
    return path


def make_photo_folder(
    folder: Path, photos, n: int = 22, seed: int = 0, broken: bool = True
) -> Path:
    """Crops of real photos as JPEGs (and, with ``broken``, one file that is not an image)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(photos)
    for i in range(n):
        img = photos[names[i % len(names)]]
        w, h = img.size
        s = rng.uniform(0.4, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img.crop((x, y, x + cw, y + ch)).resize((160, 160)).save(
            folder / f"img{i:03d}.jpg", quality=92
        )
    if broken:
        (folder / "img007b.jpg").write_bytes(b"this is not a jpeg")
    return folder


def two_at_once(work, inside: threading.Event, release: threading.Event, looked: list) -> list:
    """``work(0)`` and ``work(1)`` in two threads, the second started while the first is held
    inside the work they would share (it sets ``inside``, then waits for ``release``). The
    first is let go once the second has made its own lookup (``looked`` has two entries) and
    had a moment to go on: to wait for the first, or, were it not to, to do the work itself.
    Returns their results."""
    results: list = [None, None]

    def run(k: int) -> None:
        results[k] = work(k)

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert inside.wait(120)
    second = threading.Thread(target=run, args=(1,))
    second.start()
    while len(looked) < 2 and second.is_alive():
        time.sleep(0.01)
    time.sleep(0.2)
    release.set()
    first.join(120)
    second.join(120)
    return results
