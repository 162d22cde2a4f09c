"""The sandbox worker process: ``python -m maia_core.execution.worker FD``.

It talks to the main process over the socket FD with data-only messages
(:mod:`maia_core.execution.channel`): the main process, which holds the API keys, never
unpickles anything this process sends. Its environment holds no secrets; tools that need a
backbone send a ``backbone`` request and wait for the main process to answer.
"""

from __future__ import annotations

import signal
import sys
import traceback

from maia_core.errors import UserError
from maia_core.execution import wire
from maia_core.execution.channel import Channel, ChannelClosed
from maia_core.execution.world import CellResult, CellTimeout, World, WorldSpec
from maia_core.transcript import TextPart

_in_cell = False


def _on_sigint(signum, frame):
    # The main process sends SIGINT when a cell runs past its limit. Outside a cell there is
    # nothing to interrupt, and raising there could break the protocol.
    if _in_cell:
        raise CellTimeout()


def _spec(d: dict) -> WorldSpec:
    spec = WorldSpec(**d)
    spec.bases = [tuple(b) for b in spec.bases]
    return spec


def serve(conn: Channel) -> None:
    global _in_cell
    signal.signal(signal.SIGINT, _on_sigint)
    hello = conn.recv()
    spec, cell_timeout = _spec(hello["spec"]), hello["cell_timeout"]

    def ask_backbone(messages):
        conn.send({"op": "backbone", "messages": [wire.message_to_wire(m) for m in messages]})
        reply = conn.recv()
        if not reply["ok"]:
            raise RuntimeError(reply["value"])
        return reply["value"]

    try:
        world: World = World(spec, ask_backbone)
        world.cell_timeout = cell_timeout
    except UserError as exc:
        conn.send({"op": "user_error", "message": exc.message})
        return
    except BaseException:
        conn.send({"op": "error", "message": traceback.format_exc()})
        return
    conn.send({"op": "ready"})

    while True:
        try:
            msg = conn.recv()
        except ChannelClosed:  # the main process went away
            return
        op = msg["op"]
        try:
            if op == "run":
                _in_cell = True
                try:
                    result = world.run(msg["code"])
                finally:
                    _in_cell = False
                conn.send({"op": "result", "result": wire.cell_to_wire(result)})
            elif op == "begin":
                setup = world.begin(wire.unit_from_wire(msg["unit"]))
                conn.send({"op": "ok", "value": wire.setup_to_wire(setup)})
            elif op == "layers":
                infos = world.layer_infos(msg["names"], msg["all"])
                conn.send({"op": "ok", "value": [wire.layer_to_wire(i) for i in infos.values()]})
            elif op == "close":
                world.close()
                conn.send({"op": "ok", "value": None})
                return
            else:
                conn.send({"op": "error", "message": f"unknown request {op!r}"})
        except CellTimeout:  # the interrupt landed as the cell was ending; its output is lost
            _in_cell = False
            text = f"TimeoutError: the cell ran longer than its {cell_timeout:g} s limit and was stopped."
            result = CellResult([TextPart(text, "error")], text)
            conn.send({"op": "result", "result": wire.cell_to_wire(result)})
        except UserError as exc:
            conn.send({"op": "user_error", "message": exc.message})
        except Exception:
            conn.send({"op": "error", "message": traceback.format_exc()})


if __name__ == "__main__":
    serve(Channel.from_fd(int(sys.argv[1])))
