"""The kernel: the light process, one per investigation, where agent code runs.

It holds the agent's namespace, in which ``system`` and ``tools`` are proxies: a call sends
its arguments (as data: numbers, text, image pixels, arrays) to the model host over the
session's channel and gets back the value, the displayed parts and the tools' records. The
kernel imports no torch (unless agent code does), holds no secrets, cannot reach the models,
and runs in the sandbox of :mod:`maia_core.execution.containment`.

Started (by :mod:`maia_core.execution.sandbox`, ahead of need: kernels wait warm in a pool)
with two descriptors, ``MAIN_FD CONTROL_FD``: the channel to the main process, and a pipe the
main process writes ``i`` to when a cell must be interrupted and closes when it dies.

Protocol with the main process (data only): the kernel says ``ready`` once its imports are
done; ``begin`` gives it the unit's setup and, alongside, its channel to the model host; ``run``
a cell, answered by ``result``. During a cell the kernel may send ``backbone`` (a tool asks the
describer; answered by ``backbone_reply``) and ``reconnect`` (its host session is gone;
answered by ``host_channel`` with a new channel's descriptor).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import signal
import sys
import termios
import threading
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from maia_core.execution import wire
from maia_core.execution.cells import (
    CellResult,
    CellTimeout,
    Collector,
    Output,
    describe_error,
    execute,
)
from maia_core.execution.channel import Channel, ChannelClosed
from maia_core.execution.codec import ProtocolError, Ref
from maia_core.execution.specs import UnitSetup
from maia_core.transcript import ImagePart, TextPart

_in_cell = False


class HostError(RuntimeError):
    """The model host could not answer this call (its session closed, or the host stopped)."""

    agent_frames_only = True


class RemoteError(Exception):
    """An error raised by the host for a call whose type is not a built-in exception."""

    agent_frames_only = True


def _on_sigint(signum: int, frame: Any) -> None:
    # The main process sends SIGINT when a cell runs past its limit. Outside a cell there is
    # nothing to interrupt, and raising there could break the protocol.
    if _in_cell:
        raise CellTimeout()


class Kernel:
    def __init__(self, main: Channel):
        self.main = main
        self.host: Channel | None = None
        self.setup: UnitSetup | None = None
        self.namespace: dict[str, Any] = {}
        self.collector: Collector | None = None
        self.records: list[dict[str, Any]] = []
        self.host_seconds = 0.0
        self.cell_timeout: float | None = None
        self.cells = 0
        self._lock = threading.Lock()
        self._capture: list[tuple[int, str]] = []

    # -- descriptor-level output -------------------------------------------------------------
    def capture_descriptors(self) -> None:
        """Send what subprocesses and C code write to fds 1 and 2 into the cell's output
        (bounded like the rest), and outside cells to the kernel log, never lost or unbounded."""
        for fd, source in ((1, "stdout"), (2, "stderr")):
            log = os.dup(fd)
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            self._capture.append((read, source))
            threading.Thread(
                target=self._pump, args=(read, source, log), daemon=True, name=f"maia-{source}"
            ).start()
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115

    def _pump(self, read: int, source: str, log: int) -> None:
        while True:
            try:
                data = os.read(read, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                collector = self.collector
            if collector is not None:
                collector.text(data.decode("utf-8", "replace"), source)
            else:
                with contextlib.suppress(OSError):
                    os.write(log, data)

    def _drain(self) -> None:
        """Wait (briefly) until what the cell wrote to fds 1 and 2 has been read."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            pending = 0
            for read, _ in self._capture:
                buf = bytearray(4)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(read, termios.FIONREAD, buf)
                    pending += int.from_bytes(buf, sys.byteorder)
            if not pending:
                break
            time.sleep(0.002)
        time.sleep(0.001)  # the pump thread may be between its read and its write

    # -- the namespace ------------------------------------------------------------------------
    def begin(self, setup: UnitSetup, cell_timeout: float | None) -> None:
        import numpy as np
        from PIL import Image

        from maia_core.tools import Tools

        self.setup = setup
        self.cell_timeout = cell_timeout
        self.namespace = {
            "__name__": "__maia__",
            "system": SystemProxy(self, setup),
            "tools": Tools({name: ToolProxy(self, name, doc) for name, doc in setup.tools.items()}),
            "np": np,
            "Image": Image,
        }

    # -- calls to the host --------------------------------------------------------------------
    def call(self, obj: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.host is None:
            self._reconnect()
        request = {
            "op": "call",
            "obj": obj,
            "name": name,
            "args": _outgoing(list(args)),
            "kwargs": _outgoing(kwargs),
        }
        try:
            try:
                self.host.send(request)
            except TypeError as exc:
                raise TypeError(
                    f"{obj}.{name}: {exc}; pass images (PIL or numpy), numbers, strings, "
                    "lists of them, or system"
                ) from None
            while True:
                reply = self.host.recv()
                if not isinstance(reply, dict):
                    raise ProtocolError("not a reply")
                if reply.get("op") == "backbone":
                    self.host.send(self._ask_main(reply.get("messages")))
                    continue
                break
        except (ChannelClosed, ProtocolError) as exc:
            if self.host is not None:
                self.host.close()
            self.host = None
            raise HostError(
                f"the model host could not answer this call: its connection closed ({exc}), "
                "because the host stopped or ended this session. Your variables are kept: run "
                "the call again (it gets a new connection, to a restarted host if need be)."
            ) from None
        except BaseException:
            # Interrupted mid-call (the cell's time limit): the answer is still coming, and
            # would be read as the next call's. This channel is done; the next call gets a new one.
            if self.host is not None:
                self.host.close()
            self.host = None
            raise
        seconds = reply.get("seconds")
        if isinstance(seconds, (int, float)):
            self.host_seconds += float(seconds)
        for part in reply.get("parts") or ():
            self._show(wire.part_from_wire(part))
        self.records.extend(r for r in reply.get("records") or () if isinstance(r, dict))
        if reply.get("op") == "return":
            return reply.get("value")
        raise _rebuild(reply)

    def _ask_main(self, messages: Any) -> dict[str, Any]:
        self.main.send({"op": "backbone", "messages": messages})
        answer = self.main.recv()
        return {"op": "backbone_reply", "ok": bool(answer.get("ok")), "value": answer.get("value")}

    def _reconnect(self) -> None:
        self.main.send({"op": "reconnect"})
        answer = self.main.recv()
        fds = self.main.take_fds()
        if answer.get("op") != "host_channel" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise HostError(
                f"the model host is not available: {answer.get('message', 'no channel')}"
            )
        self.host = Channel.from_fd(fds[0])  # from the host: refuses descriptors
        setup = UnitSetup.from_wire(answer.get("setup"))
        system = self.namespace.get("system")
        if isinstance(system, SystemProxy):
            object.__setattr__(system, "_attrs", dict(setup.attrs))

    def _show(self, part: Any) -> None:
        if self.collector is not None:
            self.collector.add(part)

    # -- cells --------------------------------------------------------------------------------
    def run(self, code: str) -> CellResult:
        global _in_cell
        self.cells += 1
        collector = Collector()
        with self._lock:
            self.collector = collector
        self.records = []
        self.host_seconds = 0.0
        error = None
        start = time.perf_counter()
        try:
            with (
                redirect_stdout(Output(collector, "stdout")),
                redirect_stderr(Output(collector, "stderr")),
            ):
                _in_cell = True
                try:
                    execute(code, self.namespace, f"<cell {self.cells}>", self._show_value)
                finally:
                    _in_cell = False
        except BaseException as exc:  # noqa: BLE001 - every agent error goes back to the agent
            error = describe_error(exc, self.cell_timeout)
        self._drain()
        with self._lock:
            self.collector = None
        parts = collector.finish()
        if error:
            parts.append(TextPart(error, "error"))
        return CellResult(
            parts,
            error,
            time.perf_counter() - start,
            records=self.records,
            host_seconds=self.host_seconds,
        )

    def _show_value(self, value: Any) -> None:
        from PIL import Image

        if isinstance(value, Image.Image):
            self.collector.add(ImagePart.from_pil(value, source="display"))
        else:
            self.collector.text(repr(value) + "\n", "stdout")


class SystemProxy:
    """The agent's ``system``: the unit's plain attributes, and methods that run in the host."""

    def __init__(self, kernel: Kernel, setup: UnitSetup):
        object.__setattr__(self, "_kernel", kernel)
        object.__setattr__(self, "_attrs", dict(setup.attrs))
        object.__setattr__(self, "_methods", dict(setup.methods))

    def __getattr__(self, name: str) -> Any:
        if name in self._methods:
            return _Method(self._kernel, "system", name, self._methods[name])
        if name in self._attrs:
            return self._attrs[name]
        raise AttributeError(f"system has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("system is read-only")

    def __dir__(self) -> list[str]:
        return sorted([*self._attrs, *self._methods])

    def __repr__(self) -> str:
        attrs = self._attrs
        return f"<system: unit {attrs.get('neuron_num')} of layer {attrs.get('layer')} in {attrs.get('model_name')}>"


class _Method:
    def __init__(self, kernel: Kernel, obj: str, name: str, doc: str):
        self._kernel, self._obj, self._name = kernel, obj, name
        self.__doc__ = doc
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._kernel.call(self._obj, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self._obj}.{self._name}>"


class ToolProxy(_Method):
    """A tool the agent calls; it runs in the host."""

    def __init__(self, kernel: Kernel, name: str, doc: str):
        super().__init__(kernel, "tools", name, doc)


def _outgoing(value: Any) -> Any:
    """Arguments as data: proxies become references, tensors arrays."""
    if isinstance(value, SystemProxy):
        return Ref("system")
    if isinstance(value, list):
        return [_outgoing(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_outgoing(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _outgoing(v) for k, v in value.items()}
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()  # a torch tensor, without importing torch
    return value


_BUILTIN_ERRORS = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)
}


def _rebuild(reply: dict[str, Any]) -> BaseException:
    """The host's error as the agent should see it: the same built-in type where there is
    one, the message, and where it happened in the tool when that helps."""
    kind = str(reply.get("type") or "Error")
    message = str(reply.get("message") or "")
    detail = str(reply.get("detail") or "")
    if reply.get("tool_error"):
        from maia_core.errors import ToolError

        return ToolError(message)
    text = message + (f"\n(raised in the model host:\n{detail})" if detail else "")
    cls = _BUILTIN_ERRORS.get(kind)
    if cls is not None:
        try:
            exc = cls(text)
        except Exception:  # noqa: BLE001 - an exception class with a different constructor
            exc = RemoteError(f"{kind}: {text}")
    else:
        exc = RemoteError(f"{kind}: {text}")
    return exc


def serve(kernel: Kernel) -> None:
    main = kernel.main
    while True:
        try:
            msg = main.recv()
        except (ChannelClosed, ProtocolError):
            return  # the main process went away
        op = msg.get("op") if isinstance(msg, dict) else None
        try:
            if op == "run":
                result = kernel.run(wire.field(msg, "code", str, "run"))
                main.send({"op": "result", "result": wire.cell_to_wire(result)})
            elif op == "begin":
                fds = main.take_fds()
                if len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    raise ProtocolError("begin needs the host channel's descriptor")
                kernel.host = Channel.from_fd(fds[0])
                kernel.begin(UnitSetup.from_wire(msg.get("setup")), msg.get("cell_timeout"))
                _name_process(b"maia-unit")  # in use now (``ps`` and ``top`` show it)
                main.send({"op": "ok"})
            elif op == "close":
                main.send({"op": "ok"})
                return
            else:
                main.send({"op": "error", "message": f"unknown request {op!r}"})
        except CellTimeout:  # the interrupt landed as the cell was ending; its output is lost
            text = f"TimeoutError: the cell ran longer than its {kernel.cell_timeout:g} s limit and was stopped."
            main.send(
                {
                    "op": "result",
                    "result": wire.cell_to_wire(CellResult([TextPart(text, "error")], text)),
                }
            )
        except Exception:
            main.send({"op": "error", "message": traceback.format_exc()})


def _watch_control(fd: int) -> None:
    """The main process holds the other end of this pipe: a byte ``i`` interrupts the cell in
    flight (as the time limit does; a real signal, so a blocking call wakes up), and the end
    of the pipe, when the main process dies, ends this kernel and every process it started."""
    main_thread = threading.main_thread().ident

    def wait() -> None:
        while True:
            try:
                data = os.read(fd, 1)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                os.killpg(0, signal.SIGKILL)
                os._exit(1)
            if data == b"i" and main_thread is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=wait, daemon=True, name="maia-control").start()


def _name_process(name: bytes) -> None:
    """The process's name in ``ps`` and ``top``: ``maia-kernel`` while it waits in the pool,
    ``maia-unit`` once an investigation uses it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME


def main() -> None:
    """Run the kernel (after :mod:`maia_core.execution.kernel_entry` set its limits)."""
    main_fd, control_fd = (int(a) for a in sys.argv[1:3])
    _name_process(b"maia-kernel")
    _watch_control(control_fd)
    signal.signal(signal.SIGINT, _on_sigint)
    # Warm: everything a session needs is imported before the kernel says it is ready.
    import numpy  # noqa: F401
    from PIL import Image, ImageDraw  # noqa: F401

    import maia_core.tools  # noqa: F401

    Image.preinit()  # PIL's common formats: the first image a cell shows or opens costs 18 ms

    kernel = Kernel(Channel.from_fd(main_fd, accept_fds=True))  # the main process's
    kernel.capture_descriptors()
    kernel.main.send({"op": "ready", "pid": os.getpid()})
    serve(kernel)
