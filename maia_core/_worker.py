"""The sandbox worker process: ``python -m maia_core._worker FD``.

It talks to the main process over the socket FD with pickled tuples. Its environment holds
no secrets; tools that need a backbone send a ``("backbone", messages)`` request and wait
for the main process to answer.
"""

from __future__ import annotations

import signal
import sys
import traceback
from multiprocessing.connection import Connection

from maia_core.errors import UserError
from maia_core.transcript import TextPart
from maia_core.world import CellResult, CellTimeout, World

_in_cell = False


def _on_sigint(signum, frame):
    # The main process sends SIGINT when a cell runs past its limit. Outside a cell there is
    # nothing to interrupt, and raising there could break the protocol.
    if _in_cell:
        raise CellTimeout()


def serve(conn: Connection) -> None:
    global _in_cell
    signal.signal(signal.SIGINT, _on_sigint)
    kind, spec, cell_timeout = conn.recv()
    assert kind == "spec"

    def ask_backbone(messages):
        conn.send(("backbone", messages))
        kind, ok, value = conn.recv()
        assert kind == "backbone_reply"
        if not ok:
            raise RuntimeError(value)
        return value

    try:
        world: World = World(spec, ask_backbone)
        world.cell_timeout = cell_timeout
    except UserError as exc:
        conn.send(("user_error", exc.message))
        return
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))

    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the main process went away
            return
        op = msg[0]
        try:
            if op == "run":
                _in_cell = True
                try:
                    result = world.run(msg[1])
                finally:
                    _in_cell = False
                conn.send(("result", result))
            elif op == "begin":
                conn.send(("ok", world.begin(msg[1])))
            elif op == "layers":
                conn.send(("ok", world.layer_infos(msg[1], msg[2])))
            elif op == "close":
                world.close()
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown request {op!r}"))
        except CellTimeout:  # the interrupt landed as the cell was ending; its output is lost
            _in_cell = False
            text = f"TimeoutError: the cell ran longer than its {cell_timeout:g} s limit and was stopped."
            conn.send(("result", CellResult([TextPart(text, "error")], text)))
        except UserError as exc:
            conn.send(("user_error", exc.message))
        except Exception:
            conn.send(("error", traceback.format_exc()))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
