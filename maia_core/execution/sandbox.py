"""Where agent code runs.

``ProcessSandbox`` (the default) runs cells in a worker process that holds the target and
the tools. Whatever a cell does (raise, loop forever, call ``sys.exit`` or ``os._exit``,
segfault, eat memory), it costs that cell only: the agent gets an error message and, if the
worker had to go, a fresh worker with a note that variables were lost. The worker's
environment holds no secrets.

``InProcessSandbox`` (``--sandbox none``) runs cells in this process, for notebooks: no
isolation, a SIGALRM time limit only, and no memory cap.

The process sandbox is a fault boundary and keeps API keys out of the agent's environment;
it is not a jail for hostile code, which should run under its own user or container.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from maia_core.errors import UserError
from maia_core.execution import wire
from maia_core.execution.channel import Channel, ChannelClosed
from maia_core.execution.codec import ProtocolError
from maia_core.execution.world import CellResult, UnitSetup, World, WorldSpec
from maia_core.transcript import Message, TextPart
from maia_core.units import LayerInfo, Unit

DEFAULT_CELL_TIMEOUT = 120.0
# How long an interrupted cell gets to stop by itself before the worker is killed.
INTERRUPT_GRACE = 3.0
_POLL = 0.02

SECRET_NAMES = {
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACEHUB_API_TOKEN",
}
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_SECRETS", "_PASSWORD", "_CREDENTIALS")

AskBackbone = Callable[[list[Message]], str]


def is_secret(name: str) -> bool:
    upper = name.upper()
    return upper in SECRET_NAMES or upper.endswith(SECRET_SUFFIXES) or "API_KEY" in upper


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """The environment without API keys, tokens, secrets and passwords."""
    return {k: v for k, v in env.items() if not is_secret(k)}


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
    if unit == "%":
        total = physical_memory()
        if total is None:
            raise UserError(
                "--memory-limit as a percentage needs /proc/meminfo or psutil; give a size such as 8G."
            )
        return int(total * value / 100)
    scale = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit[0]]
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


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def _protect_own_environment() -> None:
    """Make this (key-holding) process non-dumpable, so processes of the same non-root user,
    agent code among them, cannot read its /proc/PID/environ or memory. Linux only."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
        except Exception:
            pass


class Sandbox(Protocol):
    def start(self) -> None: ...
    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]: ...
    def begin(self, unit: Unit) -> UnitSetup: ...
    def run_cell(self, code: str) -> CellResult: ...
    def close(self) -> None: ...


class InProcessSandbox:
    """Runs agent code in this process (``--sandbox none``)."""

    def __init__(
        self,
        spec: WorldSpec,
        *,
        ask_backbone: AskBackbone,
        cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
        **_: Any,
    ):
        self.spec = spec
        self.ask_backbone = ask_backbone
        self.cell_timeout = cell_timeout
        self.world: World | None = None

    def start(self) -> None:
        if self.world is None:
            self.world = World(self.spec, self.ask_backbone)
            self.world.cell_timeout = self.cell_timeout

    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        self.start()
        return self.world.layer_infos(names, all)

    def begin(self, unit: Unit) -> UnitSetup:
        self.start()
        return self.world.begin(unit)

    def run_cell(self, code: str) -> CellResult:
        return self.world.run(code, use_alarm=True)

    def close(self) -> None:
        if self.world is not None:
            self.world.close()
            self.world = None


class _WorkerGone(Exception):
    """The worker process ended or was killed; the message says why, for the agent."""


class ProcessSandbox:
    """Runs agent code in a worker process that can be killed and replaced."""

    def __init__(
        self,
        spec: WorldSpec,
        *,
        ask_backbone: AskBackbone,
        cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
        memory_limit: int | None = None,
        log_path: str | os.PathLike | None = None,
    ):
        self.spec = spec
        self.ask_backbone = ask_backbone
        self.cell_timeout = cell_timeout
        self.memory_limit = memory_limit
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.conn: Channel | None = None
        self.unit: Unit | None = None
        self.restarts = 0
        self._kill_reason: str | None = None

    # -- worker lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.proc is not None:
            return
        _protect_own_environment()
        channel, child = Channel.pair()
        log = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maia_core.execution.worker", str(child.fileno())],
                pass_fds=[child.fileno()],
                env=scrub_env(dict(os.environ)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, and a kill reaches its children
            )
        finally:
            child.close()
            if log is not subprocess.DEVNULL:
                log.close()
        self.conn = channel
        self._kill_reason = None
        try:
            self.conn.send(
                {"op": "spec", "spec": asdict(self.spec), "cell_timeout": self.cell_timeout}
            )
            self._expect("ready")
        except _WorkerGone as exc:
            self._reap()
            raise RuntimeError(
                f"the sandbox worker failed to start: {exc}{self._log_hint()}"
            ) from None

    def _log_hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path else ""

    def _reap(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self._kill()
            self.proc.wait()
            self.proc = None

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()

    def _death(self) -> str:
        if self._kill_reason:
            return self._kill_reason
        code = self.proc.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = " (a segmentation fault)" if name == "SIGSEGV" else ""
            return f"the code crashed the Python interpreter with {name}{what}"
        return f"the code ended the sandbox process (exit status {code}, as os._exit does)"

    # -- protocol ------------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.conn.send(msg)
        except ChannelClosed:
            raise _WorkerGone(self._death()) from None

    def _broken(self, problem: str) -> _WorkerGone:
        """A worker that breaks the protocol is treated as crashed: nothing it sent is used."""
        self._kill_reason = f"the sandbox process sent a malformed message ({problem})"
        self._kill()
        return _WorkerGone(self._kill_reason)

    def _receive(self) -> dict[str, Any]:
        try:
            msg = self.conn.recv()
        except ChannelClosed:
            raise _WorkerGone(self._death()) from None
        except ProtocolError as exc:
            raise self._broken(str(exc)) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise self._broken("not a request")
        return msg

    def _expect(self, kind: str, deadline: float | None = None, watch: bool = False) -> Any:
        interrupted = False
        while True:
            if self.conn.poll(_POLL):
                msg = self._receive()
                op = msg["op"]
                try:
                    if op == "backbone":
                        paused = time.monotonic()
                        self._answer_backbone(wire.messages_from_wire(msg.get("messages")))
                        if deadline is not None:  # time spent by the backbone does not count
                            deadline += time.monotonic() - paused
                        continue
                    if op == "user_error":
                        raise UserError(wire.field(msg, "message", str, "user_error"))
                    if op == "error":
                        raise RuntimeError(
                            f"sandbox worker error:\n{wire.field(msg, 'message', str, 'error')}"
                        )
                    if op != kind:
                        raise ProtocolError(f"expected {kind!r}, got {op!r}")
                    if kind == "result":
                        return wire.cell_from_wire(msg.get("result"))
                    return msg.get("value")
                except ProtocolError as exc:
                    raise self._broken(str(exc)) from None
            if self.proc.poll() is not None:
                raise _WorkerGone(self._death())
            if watch and self.memory_limit is not None:
                rss = rss_bytes(self.proc.pid)
                if rss is not None and rss > self.memory_limit:
                    self._kill_reason = f"the code used more memory than the sandbox allows ({_gb(rss)} > {_gb(self.memory_limit)} limit)"
                    self._kill()
                    continue
            if deadline is not None and time.monotonic() > deadline:
                if not interrupted:
                    interrupted = True
                    self.proc.send_signal(signal.SIGINT)
                    deadline = time.monotonic() + INTERRUPT_GRACE
                else:
                    self._kill_reason = f"the cell ran past its {self.cell_timeout:g} s limit and did not stop when interrupted"
                    self._kill()

    def _answer_backbone(self, messages: list[Message]) -> None:
        try:
            reply = {"op": "backbone_reply", "ok": True, "value": self.ask_backbone(messages)}
        except Exception as exc:  # the tool in the worker gets the error, the cell goes on
            reply = {"op": "backbone_reply", "ok": False, "value": f"{type(exc).__name__}: {exc}"}
        self._send(reply)

    def _call(self, request: dict[str, Any]) -> Any:
        self.start()
        try:
            self._send(request)
            return self._expect("ok")
        except _WorkerGone as exc:
            self._reap()
            raise RuntimeError(f"the sandbox worker died: {exc}{self._log_hint()}") from None

    # -- the sandbox interface -------------------------------------------------------------
    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        infos = self._call({"op": "layers", "names": list(names or []), "all": all})
        try:
            return {i.name: i for i in map(wire.layer_from_wire, wire.need(infos, list, "layers"))}
        except ProtocolError as exc:
            raise RuntimeError(f"the sandbox worker answered badly: {exc}") from None

    def begin(self, unit: Unit) -> UnitSetup:
        self.unit = unit
        if self.proc is not None and self.proc.poll() is not None:
            self._reap()  # it died between units (after the last cell, before this unit)
        setup = self._call({"op": "begin", "unit": wire.unit_to_wire(unit)})
        try:
            return wire.setup_from_wire(setup)
        except ProtocolError as exc:
            raise RuntimeError(f"the sandbox worker answered badly: {exc}") from None

    def run_cell(self, code: str) -> CellResult:
        self.start()
        started = time.monotonic()
        before = None
        try:
            self._send({"op": "run", "code": code})
        except _WorkerGone as exc:
            # It died while we waited for the backbone (a timer calling os._exit, say): a fresh
            # worker runs the cell, and the agent is told its variables are gone.
            before = f"{exc}, between rounds"
            self._restart()
            self._send({"op": "run", "code": code})
        deadline = None if self.cell_timeout is None else time.monotonic() + self.cell_timeout
        try:
            result = self._expect("result", deadline=deadline, watch=True)
        except _WorkerGone as exc:
            reason = str(exc)
        else:
            if before:
                result.restarted, result.restarted_before = before, True
            return result
        self._restart()
        text = f"SandboxError: {reason}. The cell was stopped."
        return CellResult(
            [TextPart(text, "error")], text, time.monotonic() - started, restarted=reason
        )

    def _restart(self) -> None:
        self._reap()
        self.restarts += 1
        self.start()
        if self.unit is not None:
            self.begin(self.unit)

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self._send({"op": "close"})
            self._expect("ok", deadline=time.monotonic() + 10)
        except Exception:
            pass
        self._reap()


def make_sandbox(kind: str, spec: WorldSpec, **kwargs: Any) -> Sandbox:
    if kind == "process":
        return ProcessSandbox(spec, **kwargs)
    if kind == "none":
        return InProcessSandbox(spec, **kwargs)
    raise UserError(
        f"Unknown --sandbox {kind!r}. Use process (isolated worker) or none (in this process)."
    )
