"""Synthetic neurons in runs: the ground truth is written after the agent answers, shown in the
reports, and nothing the agent's code can reach reveals it."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, maia, write_replay
from maia_core.loop.run import RunConfig, run

FIXTURE = FIXTURES / "replay_synthetic.json"
# Concepts no ordinary object in a Python process is likely to contain.
DISTINCTIVE = (
    "wombat",
    "mantis",
    "tricycle",
    "binoculars",
    "squirrel",
    "beaver",
    "flamingo",
    "peacock",
)


@pytest.fixture(scope="module")
def listing():
    from maia_core.execution.host import load_target
    from maia_core.execution.specs import WorldSpec

    target = load_target(WorldSpec(target="synthetic:offline", device="cpu"))
    try:
        return target.unit_listing(show_concepts=True)
    finally:
        target.close()


def test_a_replay_run_writes_the_ground_truth_after_the_answer(tmp_path, listing):
    out = maia(
        "run",
        "--target",
        "synthetic:offline",
        "--units",
        "mono=0-2:or=0:and=0",
        "--backbone",
        f"replay:{FIXTURE}",
        "--results",
        str(tmp_path / "r"),
        "--device",
        "cpu",
    )
    assert out.returncode == 0, out.stderr
    truth = {(u["layer"], u["unit"]): u["concepts"] for u in listing}
    results = sorted((tmp_path / "r").rglob("result.json"))
    assert len(results) == 5
    index = (tmp_path / "r" / "index.html").read_text()
    assert "<th>Ground truth</th>" in index and "<th>Label</th>" in index
    for path in results:
        result = json.loads(path.read_text())
        concepts = truth[(result["layer"], result["unit"])]
        assert result["status"] == "completed"
        assert result["ground_truth"]["mode"] == result["layer"]
        assert result["ground_truth"]["concepts"] == concepts
        report = (path.parent / "report.html").read_text()
        assert "Ground truth:" in report and f"{result['layer']}: {', '.join(concepts)}" in report
        assert f"{result['layer']}: {', '.join(concepts)}" in index
        # ...and it was never part of what the agent saw
        history = json.loads((path.parent / "history.json").read_text())
        seen = "\n".join(p.get("text", "") for m in history["messages"] for p in m["parts"]).lower()
        for concept in concepts:
            if concept in DISTINCTIVE:
                assert concept not in seen


PROBE = """```python
import gc, hashlib
needles = {needles!r}   # the concepts, XOR-coded: the cell holds no concept string itself
def decode(coded):
    return bytes(b ^ 0x5A for b in coded)
wanted = [decode(bytes.fromhex(n)) for n in needles]
control = decode(bytes.fromhex({control!r}))
found, control_found, strings = set(), False, 0
def look(text):
    global control_found
    data = text.lower().encode('utf-8', 'ignore')
    for w in wanted:
        if w in data:
            found.add(hashlib.sha256(w).hexdigest()[:8])
    if control in data:
        control_found = True
for obj in gc.get_objects():
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            for x in (k, v):
                if isinstance(x, str):
                    strings += 1
                    look(x)
    elif isinstance(obj, (list, tuple)):
        for x in list(obj):
            if isinstance(x, str):
                strings += 1
                look(x)
for thing in (system, tools):
    look(repr(thing))
    look(' '.join(dir(thing)))
    look(repr(vars(thing)) if hasattr(thing, '__dict__') else '')
for name in dir(system):
    look(str(getattr(system, name)))
    look(str(getattr(getattr(system, name), '__doc__', '')))
for name in dir(tools):
    look(str(getattr(getattr(tools, name), '__doc__', '')))
print('strings searched:', strings, 'control found:', control_found, 'concepts found:', sorted(found))
```"""


def test_no_concept_is_reachable_from_the_agents_process(with_thirdparty, tmp_path, listing):
    chosen = [u for u in listing if u["concepts"] and all(c in DISTINCTIVE for c in u["concepts"])][
        :3
    ]
    assert chosen, "the offline set should have units with distinctive concepts"
    needles = sorted({c for u in chosen for c in u["concepts"]})

    def code(word):
        return bytes(b ^ 0x5A for b in word.encode()).hex()

    probe = PROBE.format(needles=[code(n) for n in needles], control=code("call_neuron"))
    turns = write_replay(tmp_path / "t.json", [probe, "[DESCRIPTION]: d\n[LABEL]: l"])
    units = ":".join(f"{u['layer']}={u['unit']}" for u in chosen)
    invs = run(
        RunConfig(
            target="synthetic:offline",
            units=units,
            backbone=f"replay:{turns}",
            results=tmp_path / "r",
            reporters=["json"],
            device="cpu",
        )
    )
    for inv in invs:
        out = inv.messages[3].text
        # the search works (it finds a string the kernel does hold)...
        assert "control found: True" in out, out
        # ...and finds no concept, in memory, in system or tools, or in the prompt
        assert "concepts found: []" in out, out
        prompt = "\n".join(m.text for m in inv.messages[:2]).lower()
        assert not any(n in prompt for n in needles)
        assert inv.ground_truth["concepts"]  # which maia knows, after the answer


def test_layers_list_units_without_concepts_unless_asked():
    plain = maia("layers", "synthetic:offline", "--json", "--device", "cpu")
    assert plain.returncode == 0, plain.stderr
    rows = {r["layer"]: r for r in json.loads(plain.stdout)}
    assert [rows[m]["units"] for m in ("mono", "or", "and")] == [37, 12, 12]
    assert rows["mono"]["unit_list"][0] == {"unit": 0}
    assert "zebra" not in plain.stdout
    shown = maia("layers", "synthetic:offline", "--json", "--show-concepts", "--device", "cpu")
    rows = {r["layer"]: r for r in json.loads(shown.stdout)}
    assert rows["mono"]["unit_list"][0] == {"unit": 0, "mode": "mono", "concepts": ["zebra"]}


def test_maias_set_without_weights_is_one_line_and_exit_2(tmp_path):
    replay = write_replay(tmp_path / "t.json", ["[DESCRIPTION]: d\n[LABEL]: l"])
    out = maia(
        "run",
        "--target",
        "synthetic_neurons",
        "--units",
        "mono=1",
        "--backbone",
        f"replay:{replay}",
        "--results",
        str(tmp_path / "r"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert (
        "grounding-dino-tiny" in lines[0]
        and "sam-vit-huge" in lines[0]
        and "hf download" in lines[0]
    )
