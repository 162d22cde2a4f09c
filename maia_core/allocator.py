"""glibc's malloc, tuned at start-up so that a forward pass reuses the memory of the last one.

By default glibc serves every block above its mmap threshold (128 KB, raised by itself up to
32 MB) with a fresh ``mmap``, and gives it back with ``munmap`` when it is freed; a thread
other than the main one gets such memory the same way even below it, its arena being a heap
of 64 MB at most. A forward pass allocates activations of tens to hundreds of MB (one
EfficientNet-Lite0 layer at batch 64 and 224 px: 300 MB), so each pass had the kernel map
them, fault them in 4 KB pages and zero them, then unmap them: as much system time as
computing time, and half the machine's speed on a CPU.

:func:`tune_malloc` asks glibc (``mallopt``) to serve blocks under 2 GB from its heap
(``M_MMAP_THRESHOLD``), to keep up to 2 GB of freed memory at the heap's top rather than give
it back (``M_TRIM_THRESHOLD``), and to keep every thread on the main heap (``M_ARENA_MAX=1``;
the host runs its models on a thread). The cost: the process keeps its peak memory once
reached, which is the memory its next forward pass needs again. A GPU run allocates its
activations on the GPU, so there it changes nothing measurable.

Kept memory is bounded: freed blocks of many sizes stay apart in the heap, and a model host
serving a long study (renders of varying batch sizes, tens of thousands of calls) grew to 24
GB of free-but-kept memory and was killed for lack of memory. So a watcher thread checks the
process's resident memory every second and, once it is :data:`HEADROOM` above what it was
after the last trim (or at start), hands every free page back (``malloc_trim(0)``, which
releases free memory inside the heap too, not only at its top). The next pass faults its
memory in once, then reuses it again.

Large blocks also come in huge pages where the kernel offers them for the asking
(``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or ``always``): torch's own CPU
allocator then aligns every block of 2 MB or more to 2 MB and asks for huge pages for it
(``madvise(MADV_HUGEPAGE)``), when ``THP_MEM_ALLOC_ENABLE=1`` is in the environment as it makes
its first allocation; :func:`tune_malloc` puts it there. A forward pass's activations are
read and written once or twice each: with 4 KB pages, the address translations of a 150 MB
activation miss the TLB all the time, and a bare EfficientNet-Lite0 pass was 5 to 10% slower
on this machine's memory-bound layers (batch norms, activations, padding). Kept in the heap,
huge pages stay huge from one pass to the next. Children inherit the variable, as they
would the user's.

A setting whose variable the user set (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``,
``THP_MEM_ALLOC_ENABLE`` ...) is left to them. A no-op where the C library is not glibc.
Light: no numpy, no torch.
"""

from __future__ import annotations

import os
import sys
import threading
import time

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# The largest value mallopt takes (an int): about 2 GB.
LARGE = 2**31 - 1

# name, parameter, value, glibc's environment variable, its tunable.
SETTINGS = (
    ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, LARGE, "MALLOC_MMAP_THRESHOLD_", "mmap_threshold"),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, LARGE, "MALLOC_TRIM_THRESHOLD_", "trim_threshold"),
    ("M_ARENA_MAX", M_ARENA_MAX, 1, "MALLOC_ARENA_MAX", "arena_max"),
)

# torch's CPU allocator (c10) reads this once, at its first allocation.
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

# How far resident memory may grow above its level after the last trim before free memory is
# handed back: room for the next forward passes' activations.
HEADROOM = 2 << 30
# How often the watcher looks, in seconds.
INTERVAL = 1.0

_applied: dict[str, int] | None = None
_floor: int | None = None
_trims = 0


def glibc_version() -> str | None:
    """``"2.36"`` where the C library is glibc, else None."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or not glibc
        return None
    if not version or not version.startswith("glibc "):
        return None
    return version.split(" ", 1)[1]


def tune_malloc() -> dict[str, int]:
    """Apply the settings above once per process; returns what was set (``{}`` if nothing).

    Call it first thing in a process that runs models, before its first large allocation
    and before it starts threads. Calling it again does nothing.
    """
    global _applied
    if _applied is not None:
        return dict(_applied)
    _applied = {}
    if not sys.platform.startswith("linux") or glibc_version() is None:
        return {}
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    for name, param, value, variable, tunable in SETTINGS:
        if variable in os.environ or f"glibc.malloc.{tunable}" in tunables:
            continue  # the user's choice
        if mallopt(param, value) == 1:
            _applied[name] = value
    if THP_VARIABLE not in os.environ and huge_page_mode() in ("always", "madvise"):
        os.environ[THP_VARIABLE] = "1"
        _applied[THP_VARIABLE] = 1
    if _applied:
        threading.Thread(target=_watch, name="maia-malloc-trim", daemon=True).start()
    return dict(_applied)


def huge_page_mode() -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``), or
    None where it cannot be read."""
    try:
        with open(THP_MODE_FILE) as f:
            words = f.read().split()
    except OSError:
        return None
    chosen = [w[1:-1] for w in words if w.startswith("[") and w.endswith("]")]
    return chosen[0] if chosen else None


def untuned_environ() -> dict[str, str]:
    """This process's environment without what :func:`tune_malloc` put in it: for a child
    that must run with the defaults (a benchmark's reference)."""
    env = dict(os.environ)
    if THP_VARIABLE in (_applied or {}):
        env.pop(THP_VARIABLE, None)
    return env


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``), or 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim_if_over(headroom: int = HEADROOM) -> bool:
    """Hand free memory back to the system if resident memory is more than ``headroom`` bytes
    above its level after the last trim (the first call sets that level). Returns whether it
    trimmed."""
    global _floor, _trims
    rss = resident_bytes()
    if _floor is None:
        _floor = rss
        return False
    if not rss or rss <= _floor + headroom:
        return False
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    _floor = resident_bytes()
    _trims += 1
    return True


def trims() -> int:
    """How many times this process handed its free memory back."""
    return _trims


def _watch() -> None:
    while True:
        trim_if_over()
        time.sleep(INTERVAL)


def applied() -> dict[str, int]:
    """What :func:`tune_malloc` set in this process (``{}`` before it ran, or where it can't)."""
    return dict(_applied or {})
