"""The model host: one process per device holding the target, the tools and their models.

Every investigation on the device is a *session* here: the ``system`` object of its unit and
its call scope (seeds, records, output of the cell in flight). Kernels, where agent code runs,
hold only proxies; each call arrives on the session's own channel, is checked, runs here, and
its value, displayed parts and records go back as data. Ground truth (a synthetic neuron's
concepts, a generated image's objects) never leaves this process except to the main process
after the investigation ends.

Forward passes through the target are serialised on one model thread. On a GPU, calls that
arrive together with the same layers are batched into one pass (``batching``), which is
where batching pays; on a CPU it would change nothing but float rounding, so it is off.

Run as ``python -m maia_core.execution.host FD``: FD is the control channel to the main
process (see :func:`serve`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from maia_core import plugins
from maia_core.errors import ToolError, UserError
from maia_core.execution import wire
from maia_core.execution.channel import Channel, ChannelClosed
from maia_core.execution.codec import ProtocolError, Ref
from maia_core.execution.specs import UnitSetup, WorldSpec
from maia_core.loop import prompts
from maia_core.task import Subject, Task, make_task
from maia_core.tools import CallScope, ToolContext, Tools, call_scope, current_scope
from maia_core.transcript import Message, Part
from maia_core.units import LayerInfo, Unit

# Attribute values of `system` a kernel may see (copied into its proxy).
_PLAIN = (str, int, float, bool, type(None))


def load_task(spec: WorldSpec) -> Task:
    """The task a spec names, built from its options."""
    return make_task(spec.task, spec.task_options)


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


# -- forward passes ----------------------------------------------------------------------------


class ForwardQueue:
    """The target's ``forward_layers`` behind one model thread, with a cache of recent images.

    Callers from any session thread wait for their result. With ``batching``, every job that
    is waiting when the thread comes round and asks for the same layers is run in one forward
    pass and the outputs split back. Images measured before (agents re-measure the images they
    made; every unit of a survey sees the same ones) are answered from a bounded cache of
    their layer outputs, keyed by the input's bytes; images that another call is computing at
    that moment are waited for, not computed twice.
    """

    def __init__(self, forward: Callable[..., Any], batching: bool, cache_bytes: int = 256 * 2**20):
        self.forward = forward
        self.batching = batching
        self.jobs: queue.Queue = queue.Queue()
        self.passes = 0
        self.batched = 0
        self.hits = 0
        self.cancelled = 0
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._cached = 0
        self._cache_lock = threading.Lock()
        self._inflight: dict[tuple, threading.Event] = {}
        threading.Thread(target=self._run, name="maia-model", daemon=True).start()

    def __call__(self, x: Any, layers: Any, unit: int | None = None) -> Any:
        layers = tuple(layers)
        _check_cancelled()
        if self.cache_bytes <= 0 or getattr(x, "is_cuda", True):
            return self._submit(x, layers, unit)
        import torch

        keys = [(_digest(img), layers, unit) for img in x]
        mine: list[int] = []  # images this call computes
        theirs: list[tuple[int, threading.Event]] = []  # images another call is computing now
        with self._cache_lock:
            found = [self._cache.get(k) for k in keys]
            for i, (k, hit) in enumerate(zip(keys, found)):
                if hit is not None:
                    self._cache.move_to_end(k)
                elif k in self._inflight:  # another call's, or a repeat in this call
                    theirs.append((i, self._inflight[k]))
                else:
                    self._inflight[k] = threading.Event()
                    mine.append(i)
        self.hits += len(keys) - len(mine) - len(theirs)
        if mine:
            try:
                computed = self._submit(x[mine] if len(mine) < len(keys) else x, layers, unit)
                for j, i in enumerate(mine):
                    found[i] = {name: t[j] for name, t in computed.items()}
                self._remember([(keys[i], found[i]) for i in mine])
            finally:
                with self._cache_lock:
                    for i in mine:
                        self._inflight.pop(keys[i]).set()
        # The same images asked for at once by several investigations are computed once.
        late = []
        for i, event in theirs:
            event.wait()
            with self._cache_lock:
                found[i] = self._cache.get(keys[i])
            if found[i] is None:  # that call failed, or the entry was evicted already
                late.append(i)
        self.hits += len(theirs) - len(late)
        if late:
            computed = self._submit(x[late], layers, unit)
            for j, i in enumerate(late):
                found[i] = {name: t[j] for name, t in computed.items()}
        return {name: torch.stack([f[name] for f in found]) for name in found[0]}

    def _remember(self, items: list[tuple[tuple, dict[str, Any]]]) -> None:
        with self._cache_lock:
            for key, out in items:
                if key in self._cache:
                    continue
                # own copies: a slice would keep its whole batch alive
                out = {name: t.clone() for name, t in out.items()}
                self._cache[key] = out
                self._cached += sum(t.numel() * t.element_size() for t in out.values())
            while self._cached > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached -= sum(t.numel() * t.element_size() for t in old.values())

    def _submit(self, x: Any, layers: tuple, unit: int | None) -> Any:
        done = threading.Event()
        job = {"x": x, "layers": layers, "unit": unit, "done": done, "scope": current_scope()}
        self.jobs.put(job)
        done.wait()
        if "error" in job:
            raise job["error"]
        return job["out"]

    def _run(self) -> None:
        while True:
            jobs = [self.jobs.get()]
            if self.batching:
                while True:
                    try:
                        jobs.append(self.jobs.get_nowait())
                    except queue.Empty:
                        break
            groups: dict[tuple, list[dict]] = {}
            for job in jobs:
                if job["scope"] is not None and job["scope"].cancelled():
                    # Its caller was interrupted: no one waits for this work any more.
                    self.cancelled += 1
                    job["error"] = CallCancelled()
                    job["done"].set()
                    continue
                key = (job["layers"], job["unit"], tuple(job["x"].shape[1:]), job["x"].dtype)
                groups.setdefault(key, []).append(job)
            for (layers, unit, _shape, _dtype), group in groups.items():
                self._pass(group, list(layers), unit)

    def _pass(self, group: list[dict], layers: list[str], unit: int | None) -> None:
        try:
            if len(group) == 1:
                outs = [self.forward(group[0]["x"], layers, unit)]
            else:
                import torch

                sizes = [job["x"].shape[0] for job in group]
                merged = self.forward(torch.cat([job["x"] for job in group]), layers, unit)
                self.batched += len(group) - 1
                outs = [{} for _ in group]
                for name, tensor in merged.items():
                    for out, part in zip(outs, torch.split(tensor, sizes)):
                        out[name] = part
            self.passes += 1
            for job, out in zip(group, outs):
                job["out"] = out
        except BaseException as exc:  # noqa: BLE001 - each waiting caller gets the error
            for job in group:
                job["error"] = exc
        for job in group:
            job["done"].set()


class CallCancelled(Exception):
    """The call's investigation was interrupted (its time limit, or its kernel died): its
    remaining work is dropped."""


def _check_cancelled() -> None:
    scope = current_scope()
    if scope is not None and scope.cancelled():
        raise CallCancelled()


# -- the host ----------------------------------------------------------------------------------


class ModelHost:
    """The target and tools of a run, and the sessions of the investigations using them.

    In the host process it serves kernels; with ``--sandbox none`` it lives in the caller's
    process and the in-process sandbox uses it directly.
    """

    def __init__(self, spec: WorldSpec, ask_backbone: Callable[[list[Message]], str] | None = None):
        self.spec = spec
        started = time.perf_counter()
        self.task = load_task(spec)
        self.target = load_target(spec)
        device = str(getattr(self.target, "device", spec.device))
        self.ctx = ToolContext(
            target=self.target,
            device=device,
            ask_backbone=ask_backbone,
            exemplars=spec.exemplars,
            precision=spec.precision,
        )
        self._bind_truth()
        chosen = plugins.select_tools(spec.tools, device=device)
        self.tool_objects = {
            cap: e.factory(self.ctx, **spec.tool_options.get(cap, {})) for cap, e in chosen.items()
        }
        unknown = sorted(set(spec.tool_options) - set(chosen))
        if unknown:
            raise UserError(
                f"--tool-option names the capability {unknown[0]!r}, which this run does not "
                f"use. Capabilities in use: {', '.join(sorted(chosen))}."
            )
        self.implementations = {cap: e.name for cap, e in chosen.items()}
        batching = spec.batching == "on" or (spec.batching == "auto" and device.startswith("cuda"))
        self.forwards: ForwardQueue | None = None
        self._lock = threading.Lock()  # for targets without forward_layers: one call at a time
        if callable(getattr(self.target, "forward_layers", None)):
            self.forwards = ForwardQueue(self.target.forward_layers, batching)
            self.target.forward_layers = self.forwards
        self.load_seconds = time.perf_counter() - started
        self.pristine: Any = None
        # Calls dropped because their caller was interrupted (their time limit, or a crash).
        self.cancelled_calls = 0

    def _bind_truth(self) -> None:
        """A target that reads generated images' ground truth (an exact detector) gets the
        registry the generators fill; it never leaves this process."""
        bind_truth = getattr(self.target, "bind_truth", None)
        if callable(bind_truth):
            bind_truth(self.ctx.truth)

    def restore_if_tampered(self) -> str | None:
        """For the in-process sandbox: reload the target if agent code changed it. Returns why."""
        from maia_core.execution.pristine import Pristine

        if self.pristine is None:
            self.pristine = Pristine(self.target)
            return None
        reason = self.pristine.tampered()
        if reason is None:
            return None
        self.target.close()
        self.target = load_target(self.spec)
        self.ctx.target = self.target
        self._bind_truth()
        if callable(getattr(self.target, "forward_layers", None)):
            self.forwards = ForwardQueue(
                self.target.forward_layers, self.forwards.batching if self.forwards else False
            )
            self.target.forward_layers = self.forwards
        self.pristine = Pristine(self.target)
        return reason

    # -- layers and units ----------------------------------------------------------------------
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

    def threshold(self, unit: Unit) -> float | None:
        """The unit's dataset threshold from an exemplar store, if a tool provides one."""
        for tool in self.tool_objects.values():
            lookup = getattr(tool, "threshold_for", None)
            if lookup is not None:
                value = lookup(unit)
                if value is not None:
                    return float(value)
        return None

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        return self.target.ground_truth(unit)

    def provenance(self) -> dict[str, Any]:
        """The files the target was built from and their hashes (a user's set file, read once
        when it loaded), so an evaluation can tell whether they changed."""
        provenance = getattr(self.target, "provenance", None)
        return dict(provenance()) if callable(provenance) else {}

    def describe_tools(self) -> dict[str, str]:
        return dict(self.implementations)

    def system(self, subject: Subject) -> Any:
        """The agent's ``system`` for ``subject``, as the run's task builds it."""
        for unit in subject.units:
            self.target.require_layer(unit.layer)
        return self.task.system(self.target, subject, [self.threshold(u) for u in subject.units])

    def open(
        self, subject: Subject | Unit, ask_backbone: Callable[[list[Message]], str] | None
    ) -> HostSession:
        subject = subject if isinstance(subject, Subject) else Subject.of(subject)
        system = self.system(subject)
        return HostSession(
            self, subject, system, CallScope(unit=subject.unit, ask_backbone=ask_backbone)
        )

    def render_and_measure(
        self, subject: Subject, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        """Render ``prompts`` with the run's text2image and score them with the task, outside
        any investigation's code (reflection's checks)."""
        tool = self.tool_objects.get("text2image")
        generate = getattr(tool, "generate", None)
        if not callable(generate):
            raise UserError(
                "Reflection needs a text2image tool that renders prompts; this run has none "
                "(name one with --tools text2image=NAME)."
            )
        scope = CallScope(unit=subject.unit)
        with call_scope(scope, ("text2image", self.implementations["text2image"])):
            images, _notes = generate(list(prompts), int(seed))
            scores = self.task.measure(self.system(subject), list(images))
        return [float(x) for x in scores], list(images)

    def close(self) -> None:
        for tool in self.tool_objects.values():
            closer = getattr(tool, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer()
        self.target.close()


class HostSession:
    """One investigation's subject in the host: its ``system`` and its call scope."""

    def __init__(self, host: ModelHost, subject: Subject, system: Any, scope: CallScope):
        self.host, self.subject, self.system, self.scope = host, subject, system, scope
        self.unit = subject.unit
        self.tools = Tools(
            {
                cap: _scoped(tool, cap, host.implementations[cap], scope)
                for cap, tool in host.tool_objects.items()
            }
        )

    def setup(self) -> UnitSetup:
        system = self.system
        attrs = {
            name: value
            for name in dir(system)
            if not name.startswith("_")
            and not callable(value := getattr(system, name, None))
            and isinstance(value, _PLAIN)
        }
        if isinstance(getattr(system, "unit", None), Unit):
            attrs["unit"] = str(system.unit)
        methods = {name: _doc_of(fn) for name, fn in prompts.public_methods(system)}
        tools = {name: _doc_of(fn) for name, fn in self.tools.items()}
        return UnitSetup(
            api=prompts.api_text(system, self.tools, self.host.implementations),
            target_description=self.host.target.describe(),
            threshold_note=getattr(system, "threshold_source", "unit's activation map"),
            attrs=attrs,
            methods=methods,
            tools=tools,
        )

    def call(self, obj: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """``system.<name>(...)`` or ``tools.<name>(...)`` for a kernel, within this scope."""
        if obj == "system":
            methods = dict(prompts.public_methods(self.system))
            if name not in methods:
                raise AttributeError(f"system has no method {name!r}")
            fn = methods[name]
        elif obj == "tools":
            fn = getattr(self.tools, name)
        else:
            raise ProtocolError(f"unknown object {obj!r}")
        args = [self._resolve(a) for a in args]
        kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
        # The call sees its own cancel event: a call abandoned by a kernel that timed out may
        # still run when the next cell's call begins, and must not lose its cancellation.
        event = threading.Event()
        self.scope.cancel = event
        scope = dataclasses.replace(self.scope, cancel=event)
        try:
            with call_scope(scope):
                value = fn(*args, **kwargs)
            if scope.cancelled():
                # Its caller went away during its last stage, after the last check: the reply
                # (it can hold hundreds of masked images) is not encoded for no one to read.
                raise CallCancelled()
            return value
        except CallCancelled:
            self.host.cancelled_calls += 1
            raise
        finally:
            if self.scope.cancel is event:
                self.scope.cancel = None

    def cancel(self) -> None:
        """Drop the work of the call in flight, if any: its caller was interrupted."""
        event = self.scope.cancel
        if event is not None:
            event.set()

    def _resolve(self, value: Any) -> Any:
        """A kernel's reference to ``system`` becomes the real one; containers are walked."""
        if isinstance(value, Ref):
            if value.kind == "system":
                return self.system
            raise ProtocolError(f"unknown reference {value.kind!r}")
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        return value


def _digest(tensor: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((tuple(tensor.shape), tensor.dtype)).encode())
    h.update(tensor.contiguous().numpy().tobytes())
    return h.digest()


def _doc_of(fn: Any) -> str:
    from maia_core.loop.prompts import format_signature

    doc = inspect.getdoc(fn) if inspect.isroutine(fn) else inspect.getdoc(type(fn).__call__)
    return f"{format_signature(fn)}\n{doc or ''}".rstrip()


def _scoped(
    tool: Callable[..., Any], capability: str, implementation: str, scope: CallScope
) -> Callable[..., Any]:
    """``tool`` as one investigation calls it: in its scope, attributed to its capability."""
    import functools

    target = tool if inspect.isroutine(tool) else tool.__call__

    @functools.wraps(target)
    def call(*args: Any, **kwargs: Any) -> Any:
        with call_scope(scope, (capability, implementation)):
            return tool(*args, **kwargs)

    return call


# -- the host process --------------------------------------------------------------------------


def serve(control: Channel) -> None:
    """The host process: load the models, then answer the main process and serve sessions.

    Control requests (one at a time, from the main process): ``layers``, ``open`` (a session
    for a subject, with the host end of the kernel's channel passed alongside), ``cancel`` (a
    session's call in flight: its caller was interrupted), ``ground_truth``, ``provenance``,
    ``render_measure`` (reflection's checks), ``stats``, ``shutdown``. Each session is served
    by its own thread; nothing a kernel sends reaches this loop.
    """
    hello = control.recv()
    try:
        spec = WorldSpec.from_wire(hello["spec"])
        host = ModelHost(spec)
    except UserError as exc:
        control.send({"op": "user_error", "message": exc.message})
        return
    except BaseException:
        control.send({"op": "error", "message": traceback.format_exc()})
        return
    control.send(
        {
            "op": "ready",
            "tools": host.describe_tools(),
            "target_description": host.target.describe(),
            "load_seconds": host.load_seconds,
            "pid": os.getpid(),
        }
    )
    sessions: dict[str, tuple[threading.Thread, HostSession]] = {}
    while True:
        try:
            msg = control.recv()
        except (ChannelClosed, ProtocolError):
            return  # the main process went away
        op = msg.get("op")
        try:
            if op == "layers":
                infos = host.layer_infos(msg["names"], msg["all"])
                control.send({"op": "ok", "value": [wire.layer_to_wire(i) for i in infos.values()]})
            elif op == "open":
                fds = control.take_fds()
                if len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    raise ProtocolError("open needs exactly one descriptor")
                channel = Channel.from_fd(fds[0])  # from a kernel: refuses descriptors
                try:
                    session = host.open(_subject(msg["units"]), None)
                except BaseException:
                    channel.close()
                    raise
                session.scope.ask_backbone = _relay_backbone(channel)
                session.scope.abandoned = channel.hung_up
                control.send({"op": "ok", "value": session.setup().to_wire()})
                thread = threading.Thread(
                    target=_serve_session,
                    args=(session, channel),
                    daemon=True,
                    name=f"maia-session-{msg['session']}",
                )
                sessions = {k: v for k, v in sessions.items() if v[0].is_alive()}
                sessions[str(msg["session"])] = (thread, session)
                thread.start()
            elif op == "cancel":
                entry = sessions.get(str(msg.get("session")))
                if entry is not None:
                    entry[1].cancel()
                control.send({"op": "ok", "value": None})
            elif op == "ground_truth":
                control.send(
                    {"op": "ok", "value": host.ground_truth(wire.unit_from_wire(msg["unit"]))}
                )
            elif op == "provenance":
                control.send({"op": "ok", "value": host.provenance()})
            elif op == "render_measure":
                scores, images = host.render_and_measure(
                    _subject(msg["units"]),
                    wire.field(msg, "prompts", list, "render_measure"),
                    int(wire.field(msg, "seed", int, "render_measure")),
                )
                control.send({"op": "ok", "value": {"scores": scores, "images": images}})
            elif op == "stats":
                forwards = host.forwards
                control.send(
                    {
                        "op": "ok",
                        "value": {
                            "passes": forwards.passes if forwards else 0,
                            "batched": forwards.batched if forwards else 0,
                            "cache_hits": forwards.hits if forwards else 0,
                            "cancelled_jobs": forwards.cancelled if forwards else 0,
                            "cancelled_calls": host.cancelled_calls,
                            "sessions": sum(t.is_alive() for t, _ in sessions.values()),
                        },
                    }
                )
            elif op == "shutdown":
                host.close()
                control.send({"op": "ok", "value": None})
                return
            else:
                control.send({"op": "error", "message": f"unknown request {op!r}"})
        except UserError as exc:
            control.send({"op": "user_error", "message": exc.message})
        except Exception:
            control.send({"op": "error", "message": traceback.format_exc()})


def _subject(units: Any) -> Subject:
    return Subject(tuple(wire.unit_from_wire(u) for u in wire.need(units, list, "units")))


def _relay_backbone(channel: Channel) -> Callable[[list[Message]], str]:
    """A describer request from a tool goes back along the session's channel: the kernel
    passes it to the main process, which holds the keys, and the reply comes back the same way."""

    def ask(messages: list[Message]) -> str:
        channel.send({"op": "backbone", "messages": [wire.message_to_wire(m) for m in messages]})
        reply = channel.recv()
        if not isinstance(reply, dict) or reply.get("op") != "backbone_reply":
            raise ProtocolError("expected the describer's reply")
        if not reply.get("ok"):
            raise RuntimeError(str(reply.get("value")))
        return wire.need(reply.get("value"), str, "describer reply")

    return ask


def _serve_session(session: HostSession, channel: Channel) -> None:
    """Answer one kernel's calls until it goes away. Whatever it sends is only data, checked
    here; a malformed request ends the session (the kernel is then replaced by the main
    process), never the host."""
    try:
        while True:
            msg = channel.recv()
            parts: list[Part] = []
            session.scope.sink = parts.append
            started = time.perf_counter()
            try:
                if not isinstance(msg, dict) or msg.get("op") != "call":
                    raise ProtocolError("expected a call")
                value = session.call(
                    wire.field(msg, "obj", str, "call"),
                    wire.field(msg, "name", str, "call"),
                    wire.field(msg, "args", list, "call", []),
                    wire.field(msg, "kwargs", dict, "call", {}),
                )
                reply = {"op": "return", "value": value}
            except ProtocolError:
                raise
            except BaseException as exc:  # noqa: BLE001 - the agent's call failed: it gets why
                reply = {
                    "op": "raise",
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "tool_error": isinstance(exc, (ToolError, UserError)),
                    "detail": "" if isinstance(exc, (ToolError, UserError)) else _where(exc),
                }
            finally:
                session.scope.sink = None
            reply["parts"] = [wire.part_to_wire(p) for p in parts]
            reply["records"] = session.scope.take_records()
            # Time spent here (models, tools, waiting for the model thread), for the loop's
            # accounts: the rest of a cell is the agent's own code and the traffic.
            reply["seconds"] = time.perf_counter() - started
            try:
                channel.send(reply)
            except TypeError as exc:  # the value is not plain data
                channel.send(
                    {
                        "op": "raise",
                        "type": "TypeError",
                        "message": f"the result cannot be sent to your session: {exc}",
                        "tool_error": True,
                        "detail": "",
                        "parts": reply["parts"],
                        "records": reply["records"],
                    }
                )
    except (ChannelClosed, ProtocolError):
        pass
    finally:
        channel.close()


def _where(exc: BaseException) -> str:
    """The innermost lines of a host-side traceback, for the agent's error message."""
    frames = traceback.extract_tb(exc.__traceback__)[-2:]
    return "".join(traceback.format_list(frames)).rstrip()


def main() -> None:
    from maia_core.allocator import tune_malloc
    from maia_core.execution import isolation

    tune_malloc()  # first: before the first large allocation and the first thread
    isolation.die_with_parent(int(os.environ.get("MAIA_PARENT_PID", "0")) or None)
    isolation.make_undumpable()
    serve(Channel.from_fd(int(sys.argv[1]), accept_fds=True))  # the main process's


if __name__ == "__main__":
    main()
