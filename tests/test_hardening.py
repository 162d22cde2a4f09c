"""Defects found by trying to break maia, each with the test that failed before its fix.

Numbers refer to the items of the hardening issue.
"""

from __future__ import annotations

import json

from fake_providers import FakeProvider, reply

from conftest import write_replay
from maia_core.loop.run import RunConfig, run

FINAL = "[DESCRIPTION]: anything\n[LABEL]: anything"


def toynet(tmp_path, backbone: str, **kw) -> RunConfig:
    kw.setdefault("units", "conv2=0")
    kw.setdefault("reporters", ["json"])
    kw.setdefault("cell_timeout", 20.0)
    return RunConfig(target="toynet", backbone=backbone, results=tmp_path / "results", **kw)


def history_text(inv) -> str:
    return "\n".join(m.text for m in inv.messages)


# -- 1. agent code must not run code in the process that holds the keys ------------------------

ATTACK = """```python
import os, pickle, struct, sys
marker = {marker!r}

class Payload:
    # Unpickling this runs exec() in whatever process unpickles it.
    def __reduce__(self):
        return (exec, ("import os; open(%r, 'w').write(os.environ.get('ANTHROPIC_API_KEY', 'no key'))" % marker,))

blob = pickle.dumps(("backbone", Payload()))
fd = next(int(a) for a in sys.argv[1:] if a.isdigit())
# Both framings: multiprocessing.Connection's (4-byte length) and a 64-bit length prefix.
os.write(fd, struct.pack("!i", len(blob)) + blob)
os.write(fd, struct.pack(">Q", len(blob)) + blob)
print("sent")
```"""


def test_a_crafted_pickle_from_agent_code_is_never_unpickled(
    with_thirdparty, tmp_path, monkeypatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    marker = tmp_path / "pwned.txt"
    turns = [ATTACK.format(marker=str(marker)), "```python\nprint('still here')\n```", FINAL]
    [inv] = run(toynet(tmp_path, f"replay:{write_replay(tmp_path / 't.json', turns)}"))
    assert not marker.exists(), "the payload ran in the main process"
    assert inv.result.status == "completed"
    text = history_text(inv)
    assert "sk-ant-must-not-leak" not in text
    # The worker that sent garbage counts as broken: replaced, the agent told, the run goes on.
    assert "malformed message" in text and "variables from earlier cells are lost" in text
    assert inv.result.sandbox_restarts == 1
    assert "still here" in text


# -- 3. a worker that dies while the backbone thinks must not end the run -------------------------

TIMER = "```python\nimport os, threading\nthreading.Timer(0.5, lambda: os._exit(3)).start()\nx = 1\nprint('armed')\n```"
AFTER = "```python\nprint('after', 'x' in globals())\n```"


def test_a_worker_that_dies_between_rounds_is_replaced_and_the_run_goes_on(
    with_thirdparty, tmp_path, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    turns = [TIMER, AFTER, FINAL]

    def answer(body):
        n = sum(m["role"] == "assistant" for m in body["messages"])
        # Every reply takes longer than the timer, as a real API does.
        return reply(turns[min(n, len(turns) - 1)], delay=1.5)

    with FakeProvider("openai", answer) as fp:
        invs = run(toynet(tmp_path, "gpt-4o", base_url=fp.base_url, units="conv2=0,1"))
    assert [i.result.status for i in invs] == ["completed", "completed"]
    for inv in invs:
        saved = json.loads((inv.out_dir / "result.json").read_text())
        assert saved["status"] == "completed" and saved["sandbox_restarts"] == 1
        result = inv.messages[5]  # the second round's execution result
        assert "exit status 3" in result.text and "between rounds" in result.text
        assert "after False" in result.text  # the cell ran, in a fresh worker
