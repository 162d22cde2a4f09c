"""``maia run --executor ray``: investigations spread over a Ray cluster.

One actor per GPU (``num_gpus=1``; without GPUs, one CPU actor per node) runs a model host
and the kernels of its share of investigations, on its own node, exactly as a local run does.
The driver (the ``maia run`` process) keeps everything else: the loops, the backbones and their
keys, the reporters and the results folder. A cell's describer requests come back to the
driver as events of the cell, so keys never travel to an actor, a host or a kernel.

An actor (or its node) that dies takes its in-flight investigations with it: they are started
again on another actor (:class:`SessionLost`); finished units are on the driver's disk, so
none is lost or studied twice.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import uuid
from typing import Any

from maia_core.errors import UserError
from maia_core.execution import wire
from maia_core.execution.cells import CellResult
from maia_core.execution.sandbox import SessionLost
from maia_core.execution.specs import UnitSetup, WorldSpec
from maia_core.task import Subject
from maia_core.units import LayerInfo, Unit

NAMESPACE = "maia"


class HostActor:
    """A Ray actor: a model host and kernels on its node, driven by the driver's loops."""

    def __init__(
        self,
        spec: dict[str, Any],
        cell_timeout: float | None,
        memory_limit: int | None,
        log_dir: str | None,
        containment: str = "bwrap",
        concurrency: int = 1,
    ):
        import tempfile
        from pathlib import Path

        from maia_core.execution.sandbox import ProcessExecution

        # The results folder lives on the driver; logs stay on this node.
        # A node's own log folder is removed when the actor shuts down cleanly.
        self.own_logs = None if log_dir else Path(tempfile.mkdtemp(prefix="maia-ray-logs-"))
        logs = Path(log_dir) if log_dir else self.own_logs
        # Kernels here are contained as on the driver's machine: no network (so no way to the
        # cluster), and a HOME of their own (so not the cluster's token).
        self.execution = ProcessExecution(
            WorldSpec.from_wire(spec),
            cell_timeout=cell_timeout,
            memory_limit=memory_limit,
            log_dir=logs,
            containment=containment,
            concurrency=concurrency,
        )
        self.sessions: dict[str, dict[str, Any]] = {}
        # A problem the user can fix (no sandbox on this node, weights missing) goes back to
        # the driver as its one line.
        self.error: str | None = None
        try:
            self.execution.start()
        except UserError as exc:
            self.error = exc.message

    def info(self) -> dict[str, Any]:
        import socket

        if self.error is not None:
            return {"error": self.error, "node": socket.gethostname()}
        return {
            "tools": self.execution.tools,
            "target_description": self.execution.target_description,
            "containment": self.execution.containment,
            "node": socket.gethostname(),
            "pid": os.getpid(),
        }

    def layers(self, names: list[str], all: bool) -> list[dict[str, Any]]:
        return [wire.layer_to_wire(i) for i in self.execution.layer_infos(names, all).values()]

    def ground_truth(self, unit: dict[str, Any]) -> dict[str, Any] | None:
        return self.execution.ground_truth(wire.unit_from_wire(unit))

    def provenance(self) -> dict[str, Any]:
        return self.execution.provenance()

    def render_and_measure(
        self, units: list[dict[str, Any]], prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        return self.execution.render_and_measure(_subject(units), prompts, seed)

    def begin(self, sid: str, units: list[dict[str, Any]]) -> dict[str, Any]:
        events: queue.Queue = queue.Queue()
        replies: queue.Queue = queue.Queue()

        def ask_backbone(messages: Any) -> str:
            events.put(("backbone", [wire.message_to_wire(m) for m in messages]))
            ok, value = replies.get()
            if not ok:
                raise RuntimeError(value)
            return value

        session = self.execution.session(ask_backbone)
        self.sessions[sid] = {"session": session, "events": events, "replies": replies}
        return session.begin(_subject(units)).to_wire()

    def run_cell(self, sid: str, code: str) -> tuple[str, Any]:
        state = self.sessions[sid]

        def cell() -> None:
            try:
                result = state["session"].run_cell(code)
                state["events"].put(("result", wire.cell_to_wire(result)))
            except BaseException as exc:  # noqa: BLE001 - the driver gets the failure
                state["events"].put(("error", f"{type(exc).__name__}: {exc}"))

        threading.Thread(target=cell, daemon=True).start()
        return state["events"].get()

    def reply(self, sid: str, ok: bool, value: str) -> tuple[str, Any]:
        state = self.sessions[sid]
        state["replies"].put((ok, value))
        return state["events"].get()

    def restarts(self, sid: str) -> int:
        return self.sessions[sid]["session"].restarts

    def end(self, sid: str) -> None:
        state = self.sessions.pop(sid, None)
        if state is not None:
            state["session"].close()

    def shutdown(self) -> None:
        import shutil

        self.execution.close()
        if self.own_logs is not None:
            shutil.rmtree(self.own_logs, ignore_errors=True)


class RaySession:
    """One investigation, as the driver's loop sees it, served by an actor."""

    def __init__(self, execution: RayExecution, actor: Any, ask_backbone: Any):
        self.execution, self.actor, self.ask_backbone = execution, actor, ask_backbone
        self.sid = uuid.uuid4().hex
        self.restarts = 0
        self.containment = ""

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.execution.lost(self.actor)
            raise SessionLost(
                f"the Ray actor serving this investigation died ({type(exc).__name__})"
            ) from None

    def begin(self, subject: Subject | Unit) -> UnitSetup:
        subject = subject if isinstance(subject, Subject) else Subject.of(subject)
        units = [wire.unit_to_wire(u) for u in subject.units]
        return UnitSetup.from_wire(self._get(self.actor.begin.remote(self.sid, units)))

    def run_cell(self, code: str) -> CellResult:
        event = self._get(self.actor.run_cell.remote(self.sid, code))
        while event[0] == "backbone":
            try:
                ok, value = True, self.ask_backbone(wire.messages_from_wire(event[1]))
            except Exception as exc:  # the tool gets the error; the cell goes on
                ok, value = False, f"{type(exc).__name__}: {exc}"
            event = self._get(self.actor.reply.remote(self.sid, ok, value))
        if event[0] == "error":
            raise RuntimeError(f"the actor could not run the cell: {event[1]}")
        result = wire.cell_from_wire(event[1])
        self.restarts = self._get(self.actor.restarts.remote(self.sid))
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._get(self.actor.end.remote(self.sid))
        self.execution.release(self.actor)


class RayExecution:
    """The run's actors, and sessions placed on the least busy live one."""

    def __init__(
        self,
        spec: WorldSpec,
        *,
        address: str | None = None,
        actors: int | None = None,
        concurrency: int = 4,
        cell_timeout: float | None = None,
        memory_limit: int | None = None,
        sandbox: str = "process",
        log_dir: str | None = None,
        containment: str = "bwrap",
    ):
        if sandbox != "process":
            raise UserError(
                "--executor ray needs the process sandbox (kernels on the actors' nodes)."
            )
        self.spec = spec
        self.address = address
        self.wanted_actors = actors
        self.concurrency = concurrency
        self.cell_timeout = cell_timeout
        self.memory_limit = memory_limit
        self.log_dir = log_dir
        self.containment_mode = containment
        self.containment = ""
        self.actors: list[Any] = []
        self.load: dict[Any, int] = {}
        self.dead: set[Any] = set()
        self.tools: dict[str, str] = {}
        self.target_description = ""
        self._lock = threading.Lock()
        self._started_ray = False

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'maia[ray]'.") from None
        if not ray.is_initialized():
            check_address(self.address)
            _init_without_secrets(ray, self.address)
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        count = self.wanted_actors or gpus or max(1, nodes)
        per_actor = max(1, -(-self.concurrency // count))
        cls = ray.remote(HostActor)
        for i in range(count):
            options = {
                "num_gpus": 1 if gpus else 0,
                "num_cpus": 0,
                # the loops' calls: one per session in flight, plus bookkeeping
                "max_concurrency": per_actor * 2 + 4,
                "name": f"maia-host-{uuid.uuid4().hex[:8]}-{i}",
                "namespace": NAMESPACE,
                "scheduling_strategy": "SPREAD",
            }
            actor = cls.options(**options).remote(
                self.spec.to_wire(),
                self.cell_timeout,
                self.memory_limit,
                self.log_dir,
                self.containment_mode,
                per_actor,
            )
            self.actors.append(actor)
            self.load[actor] = 0
        infos = ray.get([a.info.remote() for a in self.actors])
        failed = next((i for i in infos if "error" in i), None)
        if failed is not None:
            raise UserError(f"On the Ray node {failed['node']}: {failed['error']}")
        self.tools = infos[0]["tools"]
        self.target_description = infos[0]["target_description"]
        self.containment = infos[0]["containment"]

    def _live(self) -> list[Any]:
        live = [a for a in self.actors if a not in self.dead]
        if not live:
            raise RuntimeError("every Ray actor hosting the models has died")
        return live

    def layer_infos(
        self, names: list[str] | None = None, all: bool = False
    ) -> dict[str, LayerInfo]:
        import ray

        infos = ray.get(self._live()[0].layers.remote(list(names or []), all))
        return {i.name: i for i in map(wire.layer_from_wire, infos)}

    def session(self, ask_backbone: Any) -> RaySession:
        with self._lock:
            actor = min(self._live(), key=lambda a: self.load[a])
            self.load[actor] += 1
        return RaySession(self, actor, ask_backbone)

    def release(self, actor: Any) -> None:
        with self._lock:
            self.load[actor] = max(0, self.load.get(actor, 1) - 1)

    def lost(self, actor: Any) -> None:
        with self._lock:
            self.dead.add(actor)

    def provenance(self) -> dict[str, Any]:
        import ray

        return ray.get(self._live()[0].provenance.remote())

    def render_and_measure(
        self, subject: Subject, prompts: list[str], seed: int
    ) -> tuple[list[float], list[Any]]:
        import ray

        units = [wire.unit_to_wire(u) for u in subject.units]
        return ray.get(self._live()[0].render_and_measure.remote(units, list(prompts), int(seed)))

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        import ray

        for actor in self._live():
            try:
                return ray.get(actor.ground_truth.remote(wire.unit_to_wire(unit)))
            except ray.exceptions.RayActorError:
                self.lost(actor)
        raise RuntimeError("every Ray actor hosting the models has died")

    def close(self, now: bool = False) -> None:
        import ray

        for actor in self.actors:
            if not now and actor not in self.dead:
                with contextlib.suppress(Exception):
                    ray.get(actor.shutdown.remote(), timeout=30)
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()


def _subject(units: list[dict[str, Any]]) -> Subject:
    return Subject(tuple(wire.unit_from_wire(u) for u in units))


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address that does not answer is a one-line error within seconds, not a
    wait until someone kills the run (Ray's own connection retries take minutes)."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(
            f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT (e.g. ray://head:10001, or auto)."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"Cannot reach the Ray cluster at {address} ({exc.strerror or exc}). Check --ray-address, "
            "and that the head node runs (ray start --head)."
        ) from None


def _init_without_secrets(ray: Any, address: str | None) -> None:
    """Start (or join) Ray without the driver's secrets in the environment a local cluster's
    processes inherit: actors, and the hosts and kernels they start, never see the keys."""
    from maia_core.execution.isolation import is_secret

    hidden = {k: v for k, v in os.environ.items() if is_secret(k, v)}
    for k in hidden:
        del os.environ[k]
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    except ConnectionError as exc:
        raise UserError(
            f"Cannot reach the Ray cluster at {address}: {exc}. Check --ray-address."
        ) from None
    finally:
        os.environ.update(hidden)
