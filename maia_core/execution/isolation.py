"""Keeping maia's child processes contained: environments, namespaces, and dying with the parent.

- :func:`child_environment`: an allow-list environment. A model host or kernel gets the
  variables a Python, CUDA or Hugging Face process needs, and nothing that looks like a secret
  (keys, tokens, passwords, AWS credentials, URLs with a password in them).
- :func:`enter_namespaces`: on Linux, a kernel moves into its own user, mount and PID
  namespaces with a fresh ``/proc``, so agent code cannot see, signal or read any process
  outside its investigation: not the main process, not an ancestor started with the keys in
  its environment (``timeout maia run``), not the model host.
- :func:`die_with_parent`: ``PR_SET_PDEATHSIG``, so children never outlive a killed parent.
- :func:`spawn`: starts children from one long-lived thread, because the kernel delivers the
  parent-death signal when the *thread* that forked the child ends.
- :class:`GroupMemory`: the resident memory of a whole process group, so children of agent
  code count against the cap too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# -- environments ---------------------------------------------------------------------------

# Variables a child may inherit: what Python, numerical libraries, CUDA and model caches read.
ALLOWED_NAMES = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "TMPDIR",
    "SHELL",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LD_LIBRARY_PATH",
    "COLUMNS",
    "NO_COLOR",
    "TRANSFORMERS_OFFLINE",
    "DIFFUSERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "USE_HUB_KERNELS",
}
ALLOWED_PREFIXES = (
    "LC_",
    "PYTHON",
    "CUDA_",
    "NVIDIA_",
    "CUBLAS_",
    "CUDNN_",
    "NCCL_",
    "TORCH_",
    "PYTORCH_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "KMP_",
    "HF_",
    "HUGGINGFACE_",
    "XDG_",
    "MAIA_",
)
SECRET_SUFFIXES = (
    "_KEY",
    "_TOKEN",
    "_SECRET",
    "_SECRETS",
    "_PASSWORD",
    "_PASSWD",
    "_PASS",
    "_PWD",
    "_CREDENTIALS",
    "_CREDENTIAL",
    "_AUTH",
)
SECRET_NAMES = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN", "PGPASSWORD"}
# user:password@ in a URL (databases, proxies, package indexes)
_CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]*@", re.IGNORECASE)


def is_secret(name: str, value: str = "") -> bool:
    """Whether a variable looks like it holds a secret, by its name or its value."""
    upper = name.upper()
    return (
        upper in SECRET_NAMES
        or upper.endswith(SECRET_SUFFIXES)
        or "API_KEY" in upper
        or "SECRET" in upper
        or "PASSWORD" in upper
        or upper.startswith("AWS_")
        or bool(_CREDENTIAL_URL.search(value))
    )


def child_environment(env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a host or kernel: allowed names only, never a secret."""
    env = dict(os.environ if env is None else env)
    out = {
        k: v
        for k, v in env.items()
        if (k in ALLOWED_NAMES or k.startswith(ALLOWED_PREFIXES)) and not is_secret(k, v)
    }
    out.update(extra)
    return out


# -- prctl ----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int | None = None) -> None:
    """Be killed when the parent dies; exit now if it already has (the race prctl leaves)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def make_undumpable() -> None:
    """Other processes of this user (agent code among them) cannot read this process's memory
    or environment through /proc or ptrace."""
    _prctl(_PR_SET_DUMPABLE, 0)


# -- namespaces -----------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 16384, 1 << 18


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces() -> str:
    """Move this process into new user, mount and PID namespaces with a private ``/proc``.

    The process forks: the child, PID 1 of the new namespace, returns and runs the kernel;
    the parent stays outside, forwards signals to it and exits with its status, so whoever
    started the process sees no difference. When the child dies, the namespace dies with it,
    and so does every process agent code started. Returns how the process is contained, for
    the README's promise and the run header; where namespaces are unavailable (not Linux, or
    unprivileged user namespaces disabled) it returns why and changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return f"not contained: namespaces need Linux ({sys.platform})"
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        return f"not contained: user namespaces are unavailable ({errno.errorcode.get(err, err)})"
    with contextlib.suppress(OSError):
        _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    child = os.fork()
    if child:
        _relay(child)  # never returns
    # PID 1 of the new namespace. A fork clears the parent-death signal: set it again, so
    # this process dies with the outer one.
    die_with_parent(None)
    libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
    if libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None) != 0:
        err = ctypes.get_errno()
        os._exit(70 + (err % 50))  # no private /proc: refuse to run agent code half-contained
    return "contained: own user, mount and PID namespaces (other processes are invisible)"


def _relay(child: int) -> None:
    """The outer process: pass signals on to the namespace's init and mirror its exit."""

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    # Close our copies of everything the child uses: its peers must see EOF when it dies.
    os.closerange(3, _max_fd())
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(1)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 4096


# -- spawning -------------------------------------------------------------------------------

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maia-spawner")


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` from a thread that lives as long as this process.

    A child's parent-death signal fires when the thread that started it ends; investigations
    run in threads that come and go, so children are started from this one.
    """
    return _spawner.submit(subprocess.Popen, list(argv), **popen).result()


# -- memory ---------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class GroupMemory:
    """Resident memory of process groups, read from /proc in one pass for all of them."""

    @staticmethod
    def snapshot() -> dict[int, int]:
        """Bytes resident per process group id."""
        totals: dict[int, int] = {}
        try:
            entries = os.scandir("/proc")
        except OSError:
            return totals
        with entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                # Fields after the command name (which may hold spaces and parentheses).
                fields = stat[stat.rfind(b")") + 2 :].split()
                try:
                    pgrp, rss = int(fields[2]), int(fields[21])
                except (IndexError, ValueError):
                    continue
                totals[pgrp] = totals.get(pgrp, 0) + rss * _PAGE
        return totals


class MemoryWatch:
    """One thread that watches the memory of every registered process group and kills a group
    that passes its limit, noting why (for the note to the agent)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self._groups: dict[int, tuple[int, list[str]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, pgid: int, limit: int, reasons: list[str]) -> None:
        """Kill group ``pgid`` when it passes ``limit`` bytes, appending why to ``reasons``."""
        with self._lock:
            self._groups[pgid] = (limit, reasons)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="maia-memory", daemon=True)
                self._thread.start()

    def forget(self, pgid: int) -> None:
        with self._lock:
            self._groups.pop(pgid, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                groups = dict(self._groups)
            if not groups:
                continue
            used = GroupMemory.snapshot()
            for pgid, (limit, reasons) in groups.items():
                rss = used.get(pgid, 0)
                if rss > limit:
                    reasons.append(
                        f"the code used more memory than the sandbox allows "
                        f"({rss / 2**30:.2f} GB > {limit / 2**30:.2f} GB limit, its child processes included)"
                    )
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
                    self.forget(pgid)


memory_watch = MemoryWatch()
