"""``--executor ray`` on a local Ray cluster: a study completes, keys stay on the driver, and a
killed actor's units are studied again elsewhere, each finished exactly once."""

from __future__ import annotations

import collections
import re
import threading
import time

import pytest
from fake_providers import FakeProvider, reply

from conftest import write_replay
from maia_core.loop.reporter import Reporter, Reporters
from maia_core.loop.run import RunConfig, make_reporters, run

ray = pytest.importorskip("ray")

FINAL = "[DESCRIPTION]: blobs\n[LABEL]: blobs"
MEASURE = (
    "```python\nimport os\n"
    "acts, masked = system.call_neuron([Image.new('RGB', (224, 224), c) for c in ('red', 'blue')])\n"
    "print('acts', [round(a, 4) for a in acts], 'key seen:', 'OPENAI_API_KEY' in os.environ)\n"
    "```"
)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for these tests (starting one takes seconds)."""
    ray.init(num_cpus=2, namespace="maia", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class Count(Reporter):
    def __init__(self):
        self.finished = collections.Counter()

    def unit_finished(self, inv):
        self.finished[inv.unit] += 1


def test_a_replay_study_runs_on_ray_actors(cluster, tmp_path):
    turns = write_replay(tmp_path / "t.json", [MEASURE, FINAL])
    invs = run(
        RunConfig(
            target="efficientnet_lite0",
            units="blocks.6=0-3",
            backbone=f"replay:{turns}",
            results=tmp_path / "results",
            reporters=["json"],
            executor="ray",
            ray_actors=2,
            concurrency=4,
            device="cpu",
        )
    )
    assert [i.result.status for i in invs] == ["completed"] * 4
    assert all("acts [" in i.messages[3].text for i in invs)
    # the same results as a local run
    local = run(
        RunConfig(
            target="efficientnet_lite0",
            units="blocks.6=0-3",
            backbone=f"replay:{turns}",
            results=tmp_path / "local",
            reporters=["json"],
            device="cpu",
        )
    )
    # Equal up to float rounding: Ray runs its workers with one OpenMP thread, which sums in
    # another order than the local host's threads.
    for remote, here in zip(invs, local):
        a, b = (re.findall(r"-?\d+\.\d+", i.messages[3].text) for i in (remote, here))
        assert len(a) == len(b) == 2 and all(abs(float(x) - float(y)) < 1e-3 for x, y in zip(a, b))


def test_a_killed_actor_loses_no_unit_and_studies_none_twice(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-driver-only")
    turns = [MEASURE, MEASURE, MEASURE, FINAL]

    def answer(body):
        n = sum(m["role"] == "assistant" for m in body["messages"])
        return reply(turns[min(n, len(turns) - 1)], delay=0.7)

    killed = []

    def assassin():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # once investigations are in flight on both actors (their second rounds asked)
            if len(fp.requests) >= 6:
                names = [n for n in ray.util.list_named_actors() if n.startswith("maia-host-")]
                ray.kill(ray.get_actor(names[0]))
                killed.append(names[0])
                return
            time.sleep(0.1)

    count = Count()
    with FakeProvider("openai", answer) as fp:
        thread = threading.Thread(target=assassin, daemon=True)
        thread.start()
        reporters = make_reporters(["json"], tmp_path / "results")
        invs = run(
            RunConfig(
                target="efficientnet_lite0",
                units="blocks.6=0-5",
                backbone="gpt-4o",
                base_url=fp.base_url,
                results=tmp_path / "results",
                executor="ray",
                ray_actors=2,
                concurrency=4,
                device="cpu",
            ),
            Reporters([*reporters.reporters, count]),
        )
        thread.join()
    assert killed
    assert sorted(i.unit.index for i in invs) == list(range(6))
    assert [i.result.status for i in invs] == ["completed"] * 6
    assert set(count.finished.values()) == {1} and len(count.finished) == 6
    results = sorted((tmp_path / "results").rglob("result.json"))
    assert len(results) == 6
    # the key stayed on the driver: no actor, host or kernel saw it
    assert all("key seen: False" in i.messages[3].text for i in invs)


RAY_PROBE = """```python
import os, socket
out = []
try:
    import ray
    out.append('imported ray')
except ImportError:
    out.append('no ray')
host, port = GCS.rsplit(':', 1)
try:
    socket.create_connection((host, int(port)), timeout=3).close()
    out.append('reached the cluster')
except OSError as e:
    out.append('cluster unreachable: ' + type(e).__name__)
out.append('ray files in HOME: ' + str(os.path.exists(os.path.expanduser('~/.ray')) or os.path.exists('/tmp/ray')))
print(out)
```"""


def test_a_kernel_on_a_ray_actor_cannot_reach_the_cluster(cluster, tmp_path):
    gcs = ray.get_runtime_context().gcs_address
    probe = RAY_PROBE.replace("```python\n", f"```python\nGCS = {gcs!r}\n", 1)
    turns = write_replay(tmp_path / "t.json", [probe, FINAL])
    [inv] = run(
        RunConfig(
            target="efficientnet_lite0",
            units="blocks.6=0",
            backbone=f"replay:{turns}",
            results=tmp_path / "results",
            reporters=["json"],
            executor="ray",
            ray_actors=1,
            device="cpu",
        )
    )
    text = inv.messages[3].text
    assert "'no ray'" in text and "cluster unreachable" in text
    assert "reached the cluster" not in text and "ray files in HOME: False" in text
