"""The agent's world: the target, the tools and the namespace where agent code runs.

A :class:`World` lives inside the sandbox worker (or in-process with ``--sandbox none``). It
loads the target and the tools once, then serves one unit at a time: ``begin(unit)`` makes a
fresh namespace with ``system`` and ``tools``; ``run(code)`` executes a cell in it and returns
the cell's output as ordered transcript parts.
"""

from __future__ import annotations

import ast
import inspect
import io
import linecache
import signal
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

from maia_core import plugins
from maia_core.errors import ToolError, UserError
from maia_core.loop import prompts
from maia_core.tools import CallScope, ToolContext, Tools, call_scope, current_scope
from maia_core.transcript import ImagePart, Message, Part, TextPart
from maia_core.units import LayerInfo, Unit

# Bounds on one cell's output, so a runaway print cannot flood the backbone's context.
MAX_OUTPUT_CHARS = 20_000
MAX_IMAGES = 40


@dataclass
class WorldSpec:
    """Everything a worker needs to build the world; plain data, so it crosses processes."""

    target: str
    target_options: dict[str, str] = field(default_factory=dict)
    # capabilities, each optionally "capability=implementation" (see plugins.select_tools);
    # None: every capability, defaults chosen where the models load
    tools: list[str] | None = None
    tool_options: dict[str, dict[str, str]] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "fp32"
    exemplars: str | None = None
    # (layer, safetensors path) pairs: units that are directions or SAE latents (maia_core.torch_runtime.basis)
    bases: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class UnitSetup:
    """What the loop needs to brief the agent on a unit."""

    api: str
    target_description: str
    threshold_note: str


@dataclass
class CellResult:
    parts: list[Part]
    error: str | None = None
    seconds: float = 0.0
    # Set when the sandbox had to be restarted: why, for the note to the agent.
    restarted: str | None = None
    # The sandbox had died before the cell (between rounds) and the cell ran in a fresh one.
    restarted_before: bool = False
    # What the tools recorded about their calls (seeds, parameters), for the round's metadata.
    records: list[dict[str, Any]] = field(default_factory=list)


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time limit (BaseException: `except Exception` in agent code cannot swallow it)."""


class _Output(io.TextIOBase):
    """A text stream that appends what is written to the cell's ordered parts."""

    def __init__(self, collector: _Collector, source: str):
        self._collector = collector
        self._source = source

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._collector.text(s, self._source)
        return len(s)


class _Collector:
    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._chars = 0
        self._images = 0
        self._dropped_chars = 0
        self._dropped_images = 0

    def text(self, s: str, source: str) -> None:
        if not s:
            return
        room = MAX_OUTPUT_CHARS - self._chars
        if room <= 0:
            self._dropped_chars += len(s)
            return
        if len(s) > room:
            self._dropped_chars += len(s) - room
            s = s[:room]
        self._chars += len(s)
        last = self.parts[-1] if self.parts else None
        if isinstance(last, TextPart) and last.source == source:
            last.text += s
        else:
            self.parts.append(TextPart(s, source))

    def add(self, part: Part) -> None:
        if isinstance(part, ImagePart):
            if self._images >= MAX_IMAGES:
                self._dropped_images += 1
                return
            self._images += 1
            self.parts.append(part)
        else:
            self.text(
                part.text if part.text.endswith("\n") else part.text + "\n",
                part.source or "display",
            )

    def finish(self) -> list[Part]:
        notes = []
        if self._dropped_chars:
            notes.append(
                f"{self._dropped_chars} more characters of output were cut (limit {MAX_OUTPUT_CHARS})"
            )
        if self._dropped_images:
            notes.append(
                f"{self._dropped_images} more images were not shown (limit {MAX_IMAGES} per cell)"
            )
        if notes:
            self.parts.append(
                TextPart("[" + "; ".join(notes) + ". Print and display less at once.]\n", "note")
            )
        return self.parts


class World:
    def __init__(self, spec: WorldSpec, ask_backbone: Callable[[list[Message]], str]):
        self.spec = spec
        self.target = load_target(spec)
        self.ctx = ToolContext(
            target=self.target,
            device=str(getattr(self.target, "device", spec.device)),
            ask_backbone=ask_backbone,
            exemplars=spec.exemplars,
            precision=spec.precision,
        )
        chosen = plugins.select_tools(spec.tools, device=self.ctx.device)
        self.tools = Tools(
            {
                cap: _in_scope(e.factory(self.ctx, **spec.tool_options.get(cap, {})), cap, e.name)
                for cap, e in chosen.items()
            }
        )
        self.scope = CallScope(ask_backbone=ask_backbone)
        self.namespace: dict[str, Any] = {}
        self.unit: Unit | None = None
        self._cell = 0
        # The per-cell time limit, for the message; who enforces it depends on the sandbox.
        self.cell_timeout: float | None = None

    # -- layers ---------------------------------------------------------------------------
    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        """The listed layers (or every one, with ``all``), plus any other ``names`` that exist."""
        infos = {i.name: i for i in self.target.layers(all=all)}
        for name in names or ():
            if name not in infos:
                info = self.target.layer(name)
                if info is not None:
                    infos[name] = info
        return infos

    # -- units ----------------------------------------------------------------------------
    def threshold(self, unit: Unit) -> float | None:
        """The unit's dataset threshold from an exemplar store, if a tool provides one."""
        for _cap, tool in self.tools.items():
            lookup = getattr(getattr(tool, "__maia_tool__", tool), "threshold_for", None)
            if lookup is not None:
                value = lookup(unit)
                if value is not None:
                    return float(value)
        return None

    def begin(self, unit: Unit) -> UnitSetup:
        import numpy as np
        from PIL import Image

        system = self.target.system(unit, threshold=self.threshold(unit))
        self.unit = unit
        self.scope = CallScope(unit=unit, ask_backbone=self.scope.ask_backbone)
        self.namespace = {
            "__name__": "__maia__",
            "system": system,
            "tools": self.tools,
            "np": np,
            "Image": Image,
        }
        self._cell = 0
        return UnitSetup(
            api=prompts.api_text(system, self.tools),
            target_description=self.target.describe(),
            threshold_note=getattr(system, "threshold_source", "unit's activation map"),
        )

    # -- cells ----------------------------------------------------------------------------
    def run(self, code: str, *, use_alarm: bool = False) -> CellResult:
        """Execute one cell.

        With ``use_alarm`` (in-process use) a SIGALRM stops the cell after ``cell_timeout``;
        the process sandbox instead interrupts the worker from outside.
        """
        timeout = self.cell_timeout
        self._cell += 1
        filename = f"<cell {self._cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        collector = _Collector()
        self.scope.sink = collector.add
        error = None
        start = time.perf_counter()
        alarm = (
            use_alarm
            and timeout is not None
            and threading.current_thread() is threading.main_thread()
            and hasattr(signal, "SIGALRM")
        )
        if alarm:
            previous = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with (
                call_scope(self.scope),
                redirect_stdout(_Output(collector, "stdout")),
                redirect_stderr(_Output(collector, "stderr")),
            ):
                self._exec(code, filename, collector)
        except CellTimeout:
            error = f"TimeoutError: the cell ran longer than its {timeout:g} s limit and was stopped. Variables are kept."
        except SystemExit as exc:
            error = f"SystemExit: the code called sys.exit({exc.code!r}); the session ignores it and goes on. Variables are kept."
        except BaseException as exc:  # noqa: BLE001 - every agent error goes back to the agent
            error = _format_error(exc)
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            self.scope.sink = None
        parts = collector.finish()
        if error:
            parts.append(TextPart(error, "error"))
        return CellResult(
            parts, error, time.perf_counter() - start, records=self.scope.take_records()
        )

    def _exec(self, code: str, filename: str, collector: _Collector) -> None:
        tree = ast.parse(code, filename, "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, filename, "exec"), self.namespace)
        if last is not None:
            # Like a notebook: the value of a final bare expression is shown.
            value = eval(compile(ast.Expression(last.value), filename, "eval"), self.namespace)
            if value is not None:
                self.ctx.display(value) if _is_image(value) else collector.text(
                    repr(value) + "\n", "stdout"
                )

    def close(self) -> None:
        self.target.close()


def _in_scope(tool: Callable[..., Any], capability: str, implementation: str) -> Callable[..., Any]:
    """``tool`` as the agent calls it: each call is attributed to its capability, for records."""
    import functools

    target = tool if inspect.isroutine(tool) else tool.__call__

    @functools.wraps(target)
    def call(*args: Any, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is None:
            return tool(*args, **kwargs)
        with call_scope(scope, (capability, implementation)):
            return tool(*args, **kwargs)

    call.__maia_tool__ = tool
    return call


def _is_image(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def _raise_timeout(signum: int, frame: Any) -> None:
    raise CellTimeout()


def _format_error(exc: BaseException) -> str:
    """The traceback from the agent's own code down, without the framework's frames above it."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        tb = None
    elif isinstance(exc, ToolError) and tb is not None:
        # Keep the agent's frames only: the message says what to do.
        frames = []
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith("<cell"):
            frames.append(tb)
            tb = tb.tb_next
        if frames:
            frames[-1].tb_next = None
            tb = frames[0]
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def load_target(spec: WorldSpec) -> Any:
    """The target a spec names, with its ``--basis`` files loaded.

    A missing library is a user error that names the extra to install.
    """
    entry, arg = plugins.registry("targets").resolve(spec.target)
    try:
        target = entry.factory(
            arg, device=spec.device, precision=spec.precision, **spec.target_options
        )
        if not getattr(target, "name", None):
            target.name = spec.target
        if spec.bases:  # torch is imported only when there are bases
            from maia_core.torch_runtime.basis import Basis

            for layer, path in spec.bases:
                target.add_basis(Basis.load(layer, path))
    except ModuleNotFoundError as exc:
        raise UserError(
            f"Target {spec.target} needs the Python module {exc.name!r}, which is not installed. "
            "Install the extra that provides it, e.g. pip install 'maia[torch]'."
        ) from exc
    return target
