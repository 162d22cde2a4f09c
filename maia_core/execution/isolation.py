"""Keeping maia's child processes in line: environments, dying with the parent, and limits.

- :func:`child_environment`: an allow-list environment. A model host or kernel gets the
  variables a Python, CUDA or Hugging Face process needs, and nothing that looks like a secret,
  judged by name and by value (keys, tokens, bearer strings, passwords in URLs, AWS
  credentials).
- :func:`die_with_parent`: ``PR_SET_PDEATHSIG``, so children never outlive a killed parent.
- :func:`spawn`: starts children from one long-lived thread, because the kernel delivers the
  parent-death signal when the *thread* that forked the child ends.
- :class:`ResourceWatch`: the memory and the number of processes of a kernel's whole process
  tree (every descendant, whichever session or group it moved to), and killing a tree that
  passes its limits.

Where a kernel may reach is not here but in :mod:`maia_core.execution.containment`.
"""

from __future__ import annotations

import contextlib
import ctypes
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
    # The allocator settings a user may make (maia_core.allocator leaves them to the user).
    "GLIBC_TUNABLES",
    "THP_MEM_ALLOC_ENABLE",
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
    "MALLOC_",
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


# Secrets recognised by their value, whatever the variable is called.
_SECRET_VALUES = [
    re.compile(p, re.IGNORECASE if i == 0 else 0)
    for i, p in enumerate(
        (
            r"\b(?:bearer|basic|token|digest)\s+[A-Za-z0-9._~+/=-]{8,}",  # Authorization values
            r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI, Anthropic (sk-ant-...)
            r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face
            r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bglpat-[A-Za-z0-9_-]{16,}",  # GitLab
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bAIza[0-9A-Za-z_-]{30,}",  # Google API keys
            r"\b(?:npm_|pypi-)[A-Za-z0-9_-]{20,}",
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.",  # JWTs
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
            r"[?&](?:access_token|token|api_?key|apikey|key|secret|password|passwd|sig|signature|auth)=[^&\s]+",
        )
    )
]
# A name with a word that names a credential (TOKENIZERS_PARALLELISM is not one).
_SECRET_WORD = re.compile(
    r"(?:^|_)(?:TOKENS?|AUTH|AUTHORIZATION|CREDENTIALS?|PASSWD|PRIVATE)(?:_|$)"
)
_PIECES = re.compile(r"[\s,;\"']+")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9+/=_.-]{32,}")


def _entropy(text: str) -> float:
    from collections import Counter
    from math import log2

    counts = Counter(text)
    return -sum(c / len(text) * log2(c / len(text)) for c in counts.values())


def _looks_like_token(piece: str) -> bool:
    """A long run of token characters with letters and digits mixed as randomly as a key's
    (hex digests and UUIDs, at most 4 bits a character, are not taken for keys)."""
    if not _TOKEN_CHARS.fullmatch(piece) or "/" in piece[:1]:
        return False
    has_digit = any(ch.isdigit() for ch in piece)
    has_letter = any(ch.isalpha() for ch in piece)
    return has_digit and has_letter and _entropy(piece) > 4.2


def is_secret(name: str, value: str = "") -> bool:
    """Whether a variable looks like it holds a secret, by its name or by its value."""
    upper = name.upper()
    if (
        upper in SECRET_NAMES
        or upper.endswith(SECRET_SUFFIXES)
        or "API_KEY" in upper
        or "SECRET" in upper
        or "PASSWORD" in upper
        or bool(_SECRET_WORD.search(upper))
        or upper.startswith("AWS_")
    ):
        return True
    if _CREDENTIAL_URL.search(value) or any(p.search(value) for p in _SECRET_VALUES):
        return True
    return any(_looks_like_token(piece) for piece in _PIECES.split(value) if piece)


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


# -- spawning -------------------------------------------------------------------------------

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maia-spawner")


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` from a thread that lives as long as this process.

    A child's parent-death signal fires when the thread that started it ends; investigations
    run in threads that come and go, so children are started from this one.
    """
    return _spawner.submit(subprocess.Popen, list(argv), **popen).result()


# -- process trees: memory, counts, kills ------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_table() -> dict[int, tuple[int, int]]:
    """Every visible process: pid -> (parent pid, resident bytes), from /proc in one pass."""
    table: dict[int, tuple[int, int]] = {}
    try:
        entries = os.scandir("/proc")
    except OSError:
        return table
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
                table[int(entry.name)] = (int(fields[1]), int(fields[21]) * _PAGE)
            except (IndexError, ValueError):
                continue
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``root`` and every process under it, however it was started: a child that called
    ``setsid()``, or an orphan its sandbox's init adopted, is still in the tree."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def tree_memory(tree: list[int], table: dict[int, tuple[int, int]], limit: int) -> int:
    """The memory a process tree uses. First the sum of resident sizes, cheap but high (the
    pages forked children share count once per child); only when that passes ``limit``, the
    sum of each process's proportional share (PSS), where /proc lets us read it."""
    rss = sum(table.get(pid, (0, 0))[1] for pid in tree)
    if rss <= limit:
        return rss
    total = 0
    for pid in tree:
        pss = None
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        total += pss if pss is not None else table.get(pid, (0, 0))[1]
    return total


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and its whole tree: the tree first (so nothing is re-parented out of
    reach), then the root. A contained kernel's sandbox also dies with its ``bwrap``."""
    for pid in reversed(descendants(root)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, signal.SIGKILL)


class ResourceWatch:
    """One thread that watches every registered kernel's process tree, and kills a tree that
    uses more memory, or runs more processes, than allowed, noting why (for the agent's note)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self._roots: dict[int, tuple[int | None, int | None, list[str]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(
        self, root: int, memory: int | None, processes: int | None, reasons: list[str]
    ) -> None:
        """Kill the tree of ``root`` when it passes ``memory`` bytes or ``processes``
        processes (None: no limit), appending why to ``reasons``."""
        if memory is None and processes is None:
            return
        with self._lock:
            self._roots[root] = (memory, processes, reasons)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="maia-limits", daemon=True)
                self._thread.start()

    def forget(self, root: int) -> None:
        with self._lock:
            self._roots.pop(root, None)

    def check(self, only: int | None = None) -> None:
        """Check every watched tree now (or only the tree of ``only``, as a cell ends, so
        what it left running is judged before its result is)."""
        with self._lock:
            roots = dict(self._roots)
        if only is not None:
            roots = {only: roots[only]} if only in roots else {}
        if not roots:
            return
        table = process_table()
        for root, (memory, processes, reasons) in roots.items():
            tree = descendants(root, table)
            if processes is not None and len(tree) > processes + 2:  # bwrap and its init
                reasons.append(
                    f"the code started more processes than the sandbox allows ({len(tree) - 2} > {processes})"
                )
            elif memory is not None and (used := tree_memory(tree, table, memory)) > memory:
                reasons.append(
                    f"the code used more memory than the sandbox allows "
                    f"({used / 2**30:.2f} GB > {memory / 2**30:.2f} GB limit, its child processes included)"
                )
            else:
                continue
            kill_tree(root)
            self.forget(root)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a bad pass must not end the watch for good
                continue


resource_watch = ResourceWatch()
