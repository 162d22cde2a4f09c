"""Where agent code runs, seen from the main process (which holds the API keys).

``process`` (the default): one model host process per run holds the target and the tools'
models; each investigation gets a kernel process for its agent's code. Whatever a cell does
(raise, loop forever, call ``sys.exit`` or ``os._exit``, segfault, eat memory, fork), it costs
that cell only: the agent gets an error message and, if its kernel had to go, a fresh one with
a note that variables were lost. Neither the host nor the kernels hold secrets, and everything
they send is checked data (:mod:`maia_core.execution.codec`). A host that dies is restarted;
the investigations in flight are told their last call failed and go on.

``none``: the models and the agent's code in this process, for notebooks: no isolation, a
SIGALRM time limit only, no memory cap, one investigation at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from maia_core.errors import UserError
from maia_core.execution import containment as policy
from maia_core.execution import isolation, wire
from maia_core.execution.cells import CellResult, CellTimeout
from maia_core.execution.channel import Channel, ChannelClosed
from maia_core.execution.codec import ProtocolError
from maia_core.execution.specs import UnitSetup, WorldSpec
from maia_core.options import DEFAULT_CELL_TIMEOUT
from maia_core.task import Subject
from maia_core.transcript import Message, TextPart
from maia_core.units import LayerInfo, Unit

# How long an interrupted cell gets to stop by itself before its kernel is killed.
INTERRUPT_GRACE = 3.0
# How long a host may take to load its models, and a kernel to start.
HOST_START_TIMEOUT = 1800.0
KERNEL_START_TIMEOUT = 60.0
# Kernels kept started ahead of need: one per investigation that runs at once, up to this
# (fewer for a run of fewer investigations). Units started together end together, so a pool
# smaller than the concurrency leaves some of the next wave waiting for a kernel to start,
# on a machine busy starting the others. A waiting kernel takes about 42 MB.
MAX_WARM_KERNELS = 16
# A host that dies this many times in one run is not restarted again.
MAX_HOST_RESTARTS = 5
_POLL = 0.1

AskBackbone = Callable[[list[Message]], str]


def parse_memory(text: str | None) -> int | None:
    """``"8G"``, ``"512MB"``, ``"75%"`` (of this machine's memory) or ``"none"`` -> bytes."""
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|[kmgt]i?b?|b)?\s*", text.lower())
    if not m:
        raise UserError(
            f"Malformed --memory-limit {text!r}. Use a size such as 8G or 512M, a share such as 75%, or none."
        )
    value, unit = float(m.group(1)), (m.group(2) or "b")
    if value <= 0:
        raise UserError(f"--memory-limit {text!r} must be more than zero; use none for no cap.")
    if unit == "%":
        if value > 100:
            raise UserError(
                f"--memory-limit {text!r} is more than all of this machine's memory; use at most 100%."
            )
        total = physical_memory()
        if total is None:
            raise UserError(
                "--memory-limit as a percentage needs /proc/meminfo or psutil; give a size such as 8G."
            )
        return int(total * value / 100)
    scale = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit[0]]
    if value * scale < 64 * 2**20:
        raise UserError(
            f"--memory-limit {text!r} is too small for a Python process; give at least 64M."
        )
    return int(value * scale)


def physical_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process: /proc on Linux, psutil elsewhere, None if neither works."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:
        return None


class Session(Protocol):
    """One investigation's sandbox: its subject, and the cells of its agent."""

    restarts: int

    def begin(self, subject: Subject | Unit) -> UnitSetup: ...
    def run_cell(self, code: str) -> CellResult: ...
    def close(self) -> None: ...


class Execution(Protocol):
    """A run's models and the sandboxes of its investigations."""

    tools: dict[str, str]
    target_description: str
    # How agent code is contained, once started (for the run's header and result.json).
    containment: str

    def start(self) -> None: ...
    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]: ...
    def session(self, ask_backbone: AskBackbone) -> Session: ...
    def ground_truth(self, unit: Unit) -> dict[str, Any] | None: ...
    def provenance(self) -> dict[str, Any]: ...
    def render_and_measure(
        self, subject: Subject, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]: ...
    def close(self, now: bool = False) -> None: ...


def expect_sessions(execution: Any, sessions: int, opening: int = 0) -> None:
    """Tell ``execution`` how many investigations its run has still to open, and how many are
    starting now (an execution that keeps kernels warm then starts no more than will be
    used)."""
    expect = getattr(execution, "expect", None)
    if callable(expect):
        expect(sessions, opening)


class SessionLost(RuntimeError):
    """The machine serving an investigation went away (a Ray actor, a node): the investigation
    starts again elsewhere; nothing of it is written as a result."""


class _Gone(Exception):
    """A child process ended, was killed or broke the protocol; the message says why."""


# Signals that end a process from outside it (the system, a user, a supervisor), not a crash.
_OUTSIDE = {"SIGKILL", "SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT"}


def exit_reason(code: int | None, what: str, containment: str = "none") -> str:
    """Why a child ended, for the agent's note: a crash of its code, an exit it asked for, or
    a kill from outside it."""
    if code is None:
        return f"the {what} stopped answering"
    if containment == "bwrap" and code > 128:
        code = 128 - code  # bwrap reports a kernel killed by signal N as exit status 128 + N
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name in _OUTSIDE:
            return (
                f"the {what} was killed with {name} (by the system, for example its "
                "out-of-memory killer, or by another process)"
            )
        detail = " (a segmentation fault)" if name == "SIGSEGV" else ""
        return f"the code crashed the {what} with {name}{detail}"
    return f"the code ended the {what} (exit status {code}, as os._exit does)"


def _log(path: Path | None) -> Any:
    if path is None:
        return subprocess.DEVNULL
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # noqa: SIM115 - handed to the child, closed right after


# -- the model host ------------------------------------------------------------------------------


class HostProcess:
    """The run's model host process: started once, asked for layers and sessions, restarted
    if it dies."""

    def __init__(self, spec: WorldSpec, log_path: Path | None = None):
        self.spec = spec
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.control: Channel | None = None
        self.generation = 0
        self.restarts = 0
        self.tools: dict[str, str] = {}
        self.target_description = ""
        self.load_seconds = 0.0
        self._lock = threading.RLock()
        self._sessions = 0
        self._closed = False  # the run is stopping: nothing is started again

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise _Gone("the run is stopping")
            if self.proc is not None and self.proc.poll() is None:
                return
            isolation.make_undumpable()
            channel, child = Channel.pair()
            log = _log(self.log_path)
            try:
                self.proc = isolation.spawn(
                    [sys.executable, "-m", "maia_core.execution.host", str(child.fileno())],
                    pass_fds=[child.fileno()],
                    env=isolation.child_environment(MAIA_PARENT_PID=str(os.getpid())),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                child.close()
                if log is not subprocess.DEVNULL:
                    log.close()
            self.control = channel
            try:
                channel.send({"op": "hello", "spec": self.spec.to_wire()})
                ready = self._answer("ready", HOST_START_TIMEOUT)
            except _Gone as exc:
                self._reap()
                raise RuntimeError(f"the model host failed to start: {exc}{self._hint()}") from None
            except BaseException:
                self._reap()
                raise
            self.tools = wire.field(ready, "tools", dict, "ready")
            self.target_description = wire.field(ready, "target_description", str, "ready")
            self.load_seconds = float(wire.field(ready, "load_seconds", (int, float), "ready"))
            self.generation += 1

    def _hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path else ""

    def _answer(self, kind: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self.control.poll(_POLL):
            if self.proc.poll() is not None:
                raise _Gone(exit_reason(self.proc.returncode, "model host"))
            if time.monotonic() > deadline:
                raise _Gone(f"the model host did not answer within {timeout:g} s")
        try:
            msg = self.control.recv()
        except ChannelClosed:
            raise _Gone(exit_reason(self.proc.wait(), "model host")) from None
        except ProtocolError as exc:
            raise _Gone(f"the model host sent a malformed message ({exc})") from None
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "user_error":
            raise UserError(str(msg.get("message")))
        if op == "error":
            raise RuntimeError(f"model host error:\n{msg.get('message')}")
        if op != kind:
            raise _Gone(f"the model host answered {op!r} instead of {kind!r}")
        return msg if kind == "ready" else msg.get("value")

    def request(
        self, op: str, fds: tuple[int, ...] = (), timeout: float = 600.0, **fields: Any
    ) -> Any:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                raise _Gone(exit_reason(self.proc.returncode if self.proc else None, "model host"))
            try:
                self.control.send({"op": op, **fields}, fds=fds)
            except ChannelClosed:
                raise _Gone(exit_reason(self.proc.wait(), "model host")) from None
            return self._answer("ok", timeout)

    def revive(self, generation: int) -> None:
        """Restart the host if it is still the one of ``generation`` and has died."""
        with self._lock:
            if self._closed:
                raise _Gone("the run is stopping")  # its host was shut down, not lost
            if self.generation != generation:
                return  # someone else restarted it already
            if self.proc is not None and self.proc.poll() is None:
                return
            if self.restarts >= MAX_HOST_RESTARTS:
                raise RuntimeError(
                    f"the model host died {self.restarts + 1} times in this run; not restarting it{self._hint()}"
                )
            sys.stderr.write(
                f"maia: {exit_reason(self.proc.returncode if self.proc else None, 'model host')}; restarting it\n"
            )
            self._reap()
            self.restarts += 1
            self.start()

    def open_session(self, subject: Subject) -> tuple[socket.socket, UnitSetup, str]:
        """A session for ``subject`` in the host: the kernel's end of its channel, its setup,
        and the session's id (to cancel its call in flight)."""
        with self._lock:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sessions += 1
            sid = str(self._sessions)
            try:
                setup = self.request(
                    "open",
                    fds=(ours.fileno(),),
                    session=sid,
                    units=[wire.unit_to_wire(u) for u in subject.units],
                )
            except BaseException:
                theirs.close()
                raise
            finally:
                ours.close()
        try:
            return theirs, UnitSetup.from_wire(setup), sid
        except ProtocolError as exc:
            theirs.close()
            raise _Gone(f"the model host sent a malformed setup ({exc})") from None

    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        infos = self.request("layers", names=list(names or []), all=all)
        return {i.name: i for i in map(wire.layer_from_wire, wire.need(infos, list, "layers"))}

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        value = self.request("ground_truth", unit=wire.unit_to_wire(unit))
        return wire.need(value, dict, "ground truth") if value is not None else None

    def provenance(self) -> dict[str, Any]:
        """The files the target was built from, with their hashes (a user's set file)."""
        return wire.need(self.request("provenance"), dict, "provenance")

    def render_and_measure(
        self, subject: Subject, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        """Render ``prompts`` with the run's text2image and score the images with the task
        (for reflection: the agent's code is not involved)."""
        value = self.request(
            "render_measure",
            units=[wire.unit_to_wire(u) for u in subject.units],
            prompts=list(prompts),
            seed=int(seed),
        )
        value = wire.need(value, dict, "render_measure")
        scores = [float(x) for x in wire.field(value, "scores", list, "render_measure")]
        images = wire.field(value, "images", list, "render_measure")
        return scores, images

    def stats(self) -> dict[str, Any]:
        return wire.need(self.request("stats"), dict, "stats")

    def _reap(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self, now: bool = False) -> None:
        """Shut the host down (``now``: kill it, as after Ctrl-C, without waiting for it).
        Investigations still in flight then get errors; none restarts it."""
        self._closed = True
        if not now:
            with self._lock, contextlib.suppress(Exception):
                if self.proc is not None:
                    self.request("shutdown", timeout=10)
        # Killing needs no lock: a session thread may hold it, waiting on the host.
        self._reap()
        self.proc = None


# -- kernels --------------------------------------------------------------------------------------


class KernelProcess:
    """A started kernel: its process (``bwrap`` around it when contained), its channel, and
    the control pipe that interrupts its cells. Kernels start ahead of need and wait warm
    (numpy and PIL imported) in a :class:`KernelPool`; each serves one investigation and is
    never reused."""

    def __init__(self, containment: str, log_path: Path | None):
        self.containment = containment
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.control: int | None = None
        self.error: str | None = None
        channel, child = Channel.pair()
        read, write = os.pipe()
        fds = [child.fileno(), read]
        env = isolation.child_environment(MAIA_PARENT_PID=str(os.getpid()))
        filter_fd = None
        log = _log(log_path)
        try:
            if containment == "bwrap":
                filter_fd = policy.seccomp_fd()
                argv = policy.kernel_command(fds, env, filter_fd)
                passed = [*fds, *([filter_fd] if filter_fd is not None else [])]
            else:
                argv = [sys.executable, "-m", "maia_core.execution.kernel_entry", *map(str, fds)]
                passed = fds
            self.proc = isolation.spawn(
                argv,
                pass_fds=passed,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own group: Ctrl-C reaches us, a kill reaches it all
            )
        except BaseException:
            channel.close()
            os.close(write)
            raise
        finally:
            child.close()
            os.close(read)
            if filter_fd is not None:
                os.close(filter_fd)
            if log is not subprocess.DEVNULL:
                log.close()
        self.channel, self.control = channel, write

    def wait_ready(self, timeout: float = KERNEL_START_TIMEOUT) -> None:
        """Wait for the kernel's ``ready``; on failure, note why (:attr:`error`) and reap it."""
        deadline = time.monotonic() + timeout
        try:
            while not self.channel.poll(_POLL):
                if self.proc.poll() is not None:
                    raise _Gone(
                        exit_reason(self.proc.returncode, "sandbox process", self.containment)
                    )
                if time.monotonic() > deadline:
                    raise _Gone(f"it did not start within {timeout:g} s")
            msg = self.channel.recv()
            if not isinstance(msg, dict) or msg.get("op") != "ready":
                raise _Gone("it sent something other than ready")
        except (_Gone, ChannelClosed, ProtocolError) as exc:
            reason = str(exc)
            if isinstance(exc, ChannelClosed) and self.proc.poll() is not None:
                reason = exit_reason(self.proc.returncode, "sandbox process", self.containment)
            hint = f" (see {self.log_path})" if self.log_path else ""
            self.error = f"the sandbox kernel failed to start: {reason}{hint}"
            self.kill()
            self.reap()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.channel.hung_up()

    def interrupt(self) -> None:
        """Interrupt the cell in flight, as its time limit does."""
        with contextlib.suppress(OSError, TypeError):
            os.write(self.control, b"i")

    def kill(self) -> None:
        """Kill the kernel and every process it started, wherever they went (``setsid()``
        included): the process tree, then ``bwrap``, whose sandbox dies with it."""
        if self.proc is None:
            return
        isolation.kill_tree(self.proc.pid)

    def reap(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.control is not None:
            with contextlib.suppress(OSError):
                os.close(self.control)
            self.control = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.kill()
            self.proc.wait()


class KernelPool:
    """Kernels started ahead of need, so an investigation (or a kernel that had to be
    replaced) never waits for one to start. Each kernel is handed out once."""

    def __init__(self, containment: str, log_path: Path | None, size: int):
        self.containment = containment
        self.log_path = log_path
        self.size = max(0, size)
        # Investigations still to open (None: unknown), and those opening (started, their
        # kernel not taken yet): the run may still take as many kernels as both.
        self.wanted: int | None = None
        self.opening = 0
        self._ready: list[KernelProcess] = []
        self._starting = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a kernel became ready, or failed
        self._closed = False
        self._filling = False
        self.started = 0

    def _start_one(self) -> KernelProcess:
        kernel = KernelProcess(self.containment, self.log_path)
        kernel.wait_ready()
        with self._lock:
            self.started += 1
        return kernel

    def _fill_one(self) -> None:
        try:
            kernel = self._start_one()
        except Exception as exc:  # noqa: BLE001 - the next take() starts one and reports why
            sys.stderr.write(f"maia: a kernel failed to start ahead of need: {exc}\n")
            kernel = None
        with self._lock:
            self._starting -= 1
            self._changed.notify_all()
            if kernel is None:
                return
            if self._closed or kernel.error:
                stale = kernel
            else:
                self._ready.append(kernel)
                return
        stale.reap()

    def _target(self) -> int:
        """How many kernels to keep ready or starting (under the lock)."""
        if self.wanted is None:
            return self.size
        return min(self.size, self.wanted + self.opening)

    def expect(self, wanted: int, opening: int = 0) -> None:
        """The run has ``wanted`` investigations still to open, and ``opening`` more are
        starting now (each takes a kernel soon; replacements apart): kernels are kept warm for
        those, and no more; ready ones beyond that are stopped."""
        with self._lock:
            self.wanted = max(0, wanted)
            self.opening += max(0, opening)
            filling = self._filling
        self._trim()
        if filling:
            self.fill()

    def _trim(self) -> None:
        """Stop ready kernels beyond what the run may still take."""
        with self._lock:
            target = self._target()
            extra = self._ready[target:]
            del self._ready[target:]
        for kernel in extra:
            kernel.reap()

    def fill(self) -> None:
        """Start kernels in the background until ``size`` (or as many as the run may still
        take) are ready or starting."""
        with self._lock:
            if self._closed:
                return
            self._filling = True
            missing = self._target() - len(self._ready) - self._starting
            self._starting += max(0, missing)
        for _ in range(max(0, missing)):
            threading.Thread(target=self._fill_one, daemon=True, name="maia-kernel-pool").start()

    def forgo(self) -> None:
        """An investigation counted as opening ended without taking a kernel: none is kept
        warm for it any longer."""
        with self._lock:
            if self.opening:
                self.opening -= 1
        self._trim()

    def take(self) -> KernelProcess:
        """A ready kernel: a warm one if there is one (and it is still alive), else the next
        one of those starting, else one started now (never a second start beside one that is
        on its way: on a busy machine both would come later)."""
        with self._lock:
            if self.opening:
                self.opening -= 1
        while True:
            with self._lock:
                while not self._ready and self._starting and not self._closed:
                    self._changed.wait()
                kernel = self._ready.pop(0) if self._ready else None
            if kernel is None or kernel.alive():
                break
            kernel.reap()  # it died while it waited (a kill from outside)
        if kernel is None:
            if self._closed:
                raise RuntimeError("the run is stopping")
            kernel = self._start_one()
        self.fill()
        if kernel.error:
            raise RuntimeError(kernel.error)
        return kernel

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._ready = self._ready, []
            self._changed.notify_all()
        for kernel in idle:
            kernel.reap()


class KernelSession:
    """One investigation's kernel, with its session in the host."""

    def __init__(
        self,
        host: HostProcess,
        ask_backbone: AskBackbone,
        *,
        pool: KernelPool,
        cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
        memory_limit: int | None = None,
        log_path: Path | None = None,
    ):
        self.host = host
        self.ask_backbone = ask_backbone
        self.pool = pool
        self.cell_timeout = cell_timeout
        self.memory_limit = memory_limit
        self.log_path = log_path
        self.kernel: KernelProcess | None = None
        self.channel: Channel | None = None
        self.subject: Subject | None = None
        self.setup: UnitSetup | None = None
        self.containment = pool.containment
        self.restarts = 0
        self._host_session: str | None = None
        self._kill_reasons: list[str] = []
        # Whether this session has taken a kernel from the pool (or given up its place there)
        self._claimed = False

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.kernel.proc if self.kernel is not None else None

    # -- lifecycle -----------------------------------------------------------------------------
    def begin(self, subject: Subject | Unit) -> UnitSetup:
        self.subject = subject if isinstance(subject, Subject) else Subject.of(subject)
        self._start()
        return self.setup

    def _open(self) -> tuple[socket.socket, UnitSetup, str]:
        """A host session for the subject; a dead host is restarted once for it."""
        generation = self.host.generation
        try:
            return self.host.open_session(self.subject)
        except _Gone:
            self.host.revive(generation)
            return self.host.open_session(self.subject)

    def _start(self) -> None:
        host_end, setup, sid = self._open()
        self._claimed = True
        try:
            kernel = self.pool.take()
        except BaseException:
            host_end.close()
            raise
        self.kernel, self.channel, self.setup, self._host_session = (
            kernel,
            kernel.channel,
            setup,
            sid,
        )
        self._kill_reasons = []
        try:
            try:
                self._send(
                    {"op": "begin", "setup": setup.to_wire(), "cell_timeout": self.cell_timeout},
                    fds=(host_end.fileno(),),
                )
            finally:
                host_end.close()
            self._expect("ok", time.monotonic() + KERNEL_START_TIMEOUT)
        except _Gone as exc:
            self._reap()
            raise RuntimeError(f"the sandbox kernel failed to start: {exc}{self._hint()}") from None
        isolation.resource_watch.watch(
            kernel.proc.pid, self.memory_limit, policy.POLICY.max_processes, self._kill_reasons
        )

    def _hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path else ""

    def _kill(self, reason: str | None = None) -> None:
        if reason:
            self._kill_reasons.append(reason)
        if self.kernel is not None:
            self.kernel.kill()

    def _reap(self) -> None:
        if self.kernel is not None:
            isolation.resource_watch.forget(self.kernel.proc.pid)
            self.kernel.reap()
            self.kernel = None
        self.channel = None

    def _cancel_host_call(self) -> None:
        """The cell was interrupted or its kernel killed: the host drops the call it may be
        computing for it, so no later call waits behind abandoned work."""
        if self._host_session is None:
            return
        with contextlib.suppress(Exception):
            self.host.request("cancel", session=self._host_session, timeout=30)

    def _restart(self) -> None:
        self._reap()
        self.restarts += 1
        self._start()

    def close(self) -> None:
        if not self._claimed:  # it never took a kernel (its host session did not open)
            self._claimed = True
            self.pool.forgo()
        if self.kernel is None:
            return
        with contextlib.suppress(Exception):
            self._send({"op": "close"})
            self._expect("ok", time.monotonic() + 5)
        self._reap()

    # -- protocol ------------------------------------------------------------------------------
    def _death(self) -> str:
        if self._kill_reasons:
            return self._kill_reasons[0]
        return exit_reason(self.proc.wait(), "sandbox process", self.containment)

    def _send(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        try:
            self.channel.send(msg, fds=fds)
        except ChannelClosed:
            raise _Gone(self._death()) from None

    def _broken(self, problem: str) -> _Gone:
        """A kernel that breaks the protocol is treated as crashed: nothing it sent is used."""
        self._kill(f"the sandbox process sent a malformed message ({problem})")
        return _Gone(self._kill_reasons[0])

    def _receive(self) -> dict[str, Any]:
        try:
            msg = self.channel.recv()
        except ChannelClosed:
            raise _Gone(self._death()) from None
        except ProtocolError as exc:
            raise self._broken(str(exc)) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise self._broken("not a request")
        return msg

    def _expect(self, kind: str, deadline: float | None = None, interruptible: bool = False) -> Any:
        interrupted = False
        while True:
            if self.channel.poll(_POLL):
                msg = self._receive()
                if self._kill_reasons:  # condemned (its limits): nothing it says counts
                    raise _Gone(self._death())
                op = msg["op"]
                try:
                    if op in ("backbone", "reconnect"):
                        paused = time.monotonic()
                        if op == "backbone":
                            self._answer_backbone(wire.messages_from_wire(msg.get("messages")))
                        else:
                            self._reconnect()
                        if deadline is not None:  # time spent on these does not count
                            deadline += time.monotonic() - paused
                        continue
                    if op == "error":
                        raise RuntimeError(
                            f"sandbox kernel error:\n{wire.field(msg, 'message', str, 'error')}"
                        )
                    if op != kind:
                        raise ProtocolError(f"expected {kind!r}, got {op!r}")
                    if kind == "result":
                        # What the cell left running counts before its result does.
                        isolation.resource_watch.check(only=self.proc.pid)
                        if self._kill_reasons:
                            raise _Gone(self._death())
                        return wire.cell_from_wire(msg.get("result"))
                    return msg
                except ProtocolError as exc:
                    raise self._broken(str(exc)) from None
            if self.proc.poll() is not None or self._kill_reasons:
                raise _Gone(self._death())
            if deadline is not None and time.monotonic() > deadline:
                if not interruptible:
                    self._kill()
                    raise _Gone(f"the sandbox process did not answer in time{self._hint()}")
                if not interrupted:
                    interrupted = True
                    self.kernel.interrupt()
                    self._cancel_host_call()
                    deadline = time.monotonic() + INTERRUPT_GRACE
                else:
                    # A tree over its memory is killed for that (the truer reason), even when
                    # the watcher's last pass came before it grew.
                    isolation.resource_watch.check(only=self.proc.pid)
                    self._kill(
                        f"the cell ran past its {self.cell_timeout:g} s limit and did not stop when interrupted"
                    )

    def _answer_backbone(self, messages: list[Message]) -> None:
        try:
            reply = {"op": "backbone_reply", "ok": True, "value": self.ask_backbone(messages)}
        except Exception as exc:  # the tool gets the error; the cell goes on
            reply = {"op": "backbone_reply", "ok": False, "value": f"{type(exc).__name__}: {exc}"}
        self._send(reply)

    def _reconnect(self) -> None:
        """The kernel lost its host session: give it a channel to a new one."""
        try:
            theirs, setup, sid = self._open()
        except Exception as exc:  # noqa: BLE001 - the agent's call fails with the reason
            self._send({"op": "error_channel", "message": f"{type(exc).__name__}: {exc}"})
            return
        self._host_session = sid
        try:
            self._send({"op": "host_channel", "setup": setup.to_wire()}, fds=(theirs.fileno(),))
        finally:
            theirs.close()

    # -- cells ---------------------------------------------------------------------------------
    def run_cell(self, code: str) -> CellResult:
        started = time.monotonic()
        before = None
        if self.kernel is None:
            self._start()
        try:
            if self.proc.poll() is not None or self._kill_reasons:
                raise _Gone(self._death())
            self._send({"op": "run", "code": code})
        except _Gone as exc:
            # It died while we waited for the backbone (a timer calling os._exit, say): a fresh
            # kernel runs the cell, and the agent is told its variables are gone.
            before = f"{exc}, between rounds"
            self._restart()
            self._send({"op": "run", "code": code})
        deadline = None if self.cell_timeout is None else time.monotonic() + self.cell_timeout
        try:
            result = self._expect("result", deadline=deadline, interruptible=True)
        except _Gone as exc:
            reason = str(exc)
        else:
            if before:
                result.restarted, result.restarted_before = before, True
            return result
        self._cancel_host_call()
        self._restart()
        text = f"SandboxError: {reason}. The cell was stopped."
        return CellResult(
            [TextPart(text, "error")], text, time.monotonic() - started, restarted=reason
        )


class ProcessExecution:
    """The default: a model host process and a contained kernel process per investigation."""

    def __init__(
        self,
        spec: WorldSpec,
        *,
        cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
        memory_limit: int | None = None,
        log_dir: Path | None = None,
        containment: str = "bwrap",
        concurrency: int = 1,
        sessions: int | None = None,
    ):
        if containment not in policy.MODES:
            raise UserError(
                f"Unknown --containment {containment!r}. Use bwrap (the default) or none (agent code uncontained, at your own risk)."
            )
        self.spec = spec
        self.cell_timeout = cell_timeout
        self.memory_limit = memory_limit
        self.log_dir = Path(log_dir) if log_dir else None
        self.containment_mode = containment
        self.containment = ""
        self.host = HostProcess(spec, self.log_dir / "host.log" if self.log_dir else None)
        self.pool = KernelPool(
            containment,
            self.log_dir / "kernels.log" if self.log_dir else None,
            size=min(max(1, concurrency), MAX_WARM_KERNELS),
        )
        # Started while the model host loads: one per investigation that can start at once
        # (``sessions``: at most that many in the run, when the selection tells).
        self._initial = max(1, min(concurrency, sessions or concurrency))
        self._sessions: list[KernelSession] = []

    @property
    def tools(self) -> dict[str, str]:
        return self.host.tools

    @property
    def target_description(self) -> str:
        return self.host.target_description

    def start(self) -> None:
        try:
            self.containment = policy.check(self.containment_mode)
        except policy.Unavailable as exc:
            raise UserError(
                f"Cannot contain agent code here: {exc}. maia does not run agent code "
                "uncontained unless told to: pass --containment none to accept the risk."
            ) from None
        # Kernels for the first investigations start while the host loads the models.
        self.pool.size, size = self._initial, self.pool.size
        self.pool.fill()
        self.pool.size = size
        self.host.start()

    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        return self.host.layer_infos(names, all)

    def session(self, ask_backbone: AskBackbone) -> KernelSession:
        session = KernelSession(
            self.host,
            ask_backbone,
            pool=self.pool,
            cell_timeout=self.cell_timeout,
            memory_limit=self.memory_limit,
            log_path=self.log_dir / "kernels.log" if self.log_dir else None,
        )
        self._sessions.append(session)
        return session

    def _host_call(self, call: Callable[[], Any]) -> Any:
        generation = self.host.generation
        try:
            return call()
        except _Gone:
            self.host.revive(generation)
            return call()

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        return self._host_call(lambda: self.host.ground_truth(unit))

    def provenance(self) -> dict[str, Any]:
        return self._host_call(self.host.provenance)

    def render_and_measure(
        self, subject: Subject, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        return self._host_call(lambda: self.host.render_and_measure(subject, prompts, seed))

    def expect(self, sessions: int, opening: int = 0) -> None:
        """The run has ``sessions`` investigations still to open and ``opening`` starting now:
        no more kernels start ahead of need."""
        self.pool.expect(sessions, opening)

    def close(self, now: bool = False) -> None:
        """Stop every kernel and the host (``now``: at once, after Ctrl-C or SIGTERM)."""
        self.pool.close()
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                session._reap()
        self.host.close(now=now)


# -- in this process ------------------------------------------------------------------------------


class InProcessExecution:
    """``--sandbox none``: the models and the agent's code in this process (notebooks)."""

    containment = "not contained (--sandbox none): agent code runs in this process"

    def __init__(
        self, spec: WorldSpec, *, cell_timeout: float | None = DEFAULT_CELL_TIMEOUT, **_: Any
    ):
        self.spec = spec
        self.cell_timeout = cell_timeout
        self.host: Any = None

    @property
    def tools(self) -> dict[str, str]:
        return self.host.describe_tools()

    @property
    def target_description(self) -> str:
        return self.host.target.describe()

    def start(self) -> None:
        if self.host is None:
            from maia_core.execution.host import ModelHost

            self.host = ModelHost(self.spec)

    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        return self.host.layer_infos(names, all)

    def session(self, ask_backbone: AskBackbone) -> InProcessSession:
        return InProcessSession(self, ask_backbone)

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        return self.host.ground_truth(unit)

    def provenance(self) -> dict[str, Any]:
        return self.host.provenance()

    def render_and_measure(
        self, subject: Subject, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        return self.host.render_and_measure(subject, prompts, seed)

    def close(self, now: bool = False) -> None:
        if self.host is not None:
            self.host.close()
            self.host = None


class InProcessSession:
    restarts = 0

    def __init__(self, execution: InProcessExecution, ask_backbone: AskBackbone):
        self.execution = execution
        self.ask_backbone = ask_backbone
        self.namespace: dict[str, Any] = {}
        self.session: Any = None
        self.cells = 0

    def begin(self, subject: Subject | Unit) -> UnitSetup:
        import numpy as np
        from PIL import Image

        host = self.execution.host
        reason = host.restore_if_tampered()
        if reason:
            sys.stderr.write(
                f"maia: an earlier unit's code changed the model ({reason}); reloaded it\n"
            )
        subject = subject if isinstance(subject, Subject) else Subject.of(subject)
        self.session = host.open(subject, self.ask_backbone)
        self.namespace = {
            "__name__": "__maia__",
            "system": self.session.system,
            "tools": self.session.tools,
            "np": np,
            "Image": Image,
        }
        return self.session.setup()

    def run_cell(self, code: str) -> CellResult:
        from contextlib import redirect_stderr, redirect_stdout

        from maia_core.execution.cells import Collector, Output, describe_error, execute
        from maia_core.tools import call_scope

        self.cells += 1
        collector = Collector()
        scope = self.session.scope
        scope.sink = collector.add
        timeout = self.cell_timeout
        alarm = (
            timeout is not None
            and threading.current_thread() is threading.main_thread()
            and hasattr(signal, "SIGALRM")
        )
        if alarm:
            previous = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        error = None
        start = time.perf_counter()
        try:
            with (
                call_scope(scope),
                redirect_stdout(Output(collector, "stdout")),
                redirect_stderr(Output(collector, "stderr")),
            ):
                execute(
                    code,
                    self.namespace,
                    f"<cell {self.cells}>",
                    lambda v: _show(scope, collector, v),
                )
        except BaseException as exc:  # noqa: BLE001 - every agent error goes back to the agent
            error = describe_error(exc, timeout)
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            scope.sink = None
        parts = collector.finish()
        if error:
            parts.append(TextPart(error, "error"))
        return CellResult(parts, error, time.perf_counter() - start, records=scope.take_records())

    @property
    def cell_timeout(self) -> float | None:
        return self.execution.cell_timeout

    def close(self) -> None:
        self.session = None


def _show(scope: Any, collector: Any, value: Any) -> None:
    from PIL import Image

    from maia_core.transcript import ImagePart

    if isinstance(value, Image.Image):
        collector.add(ImagePart.from_pil(value, source="display"))
    else:
        collector.text(repr(value) + "\n", "stdout")


def _raise_timeout(signum: int, frame: Any) -> None:
    raise CellTimeout()


def make_execution(kind: str, spec: WorldSpec, **kwargs: Any) -> Execution:
    if kind == "process":
        return ProcessExecution(spec, **kwargs)
    if kind == "none":
        return InProcessExecution(spec, **kwargs)
    raise UserError(
        f"Unknown --sandbox {kind!r}. Use process (isolated kernels and a model host) or none (in this process)."
    )
