"""The model host's forward queue: a bounded cache of recent images' layer outputs, and images
asked for by several investigations at once computed once."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from maia_core.execution.host import ForwardQueue


class CountingConv:
    """A real convolution as the target's forward_layers, counting the images it computes."""

    def __init__(self, delay: float = 0.0):
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.images = 0
        self.calls = 0
        self.delay = delay

    def __call__(self, x, layers, unit=None):
        self.calls += 1
        self.images += x.shape[0]
        time.sleep(self.delay)
        with torch.no_grad():
            return {name: self.conv(x) for name in layers}


def batch(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_images_measured_before_come_from_the_cache():
    forward = CountingConv()
    queue = ForwardQueue(forward, batching=False)
    x = batch(6, 0)
    first = queue(x, ["conv"])
    mixed = torch.cat([x[:3], batch(2, 1)])
    second = queue(mixed, ["conv"])
    assert forward.images == 8 and queue.hits == 3
    assert torch.equal(second["conv"][:3], first["conv"][:3])
    assert torch.allclose(second["conv"], forward.conv(mixed).detach())


def test_the_same_images_asked_for_at_once_are_computed_once():
    forward = CountingConv(delay=0.3)
    queue = ForwardQueue(forward, batching=False)
    x = batch(8, 2)
    outs: list = [None] * 4
    start = threading.Barrier(4)

    def investigate(i: int) -> None:
        start.wait()
        outs[i] = queue(x, ["conv"])

    threads = [threading.Thread(target=investigate, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert forward.images == 8 and forward.calls == 1, (forward.images, forward.calls)
    expected = forward.conv(x).detach()
    assert all(torch.allclose(o["conv"], expected) for o in outs)


def test_a_repeated_image_within_one_call_and_a_failed_computation():
    forward = CountingConv()
    queue = ForwardQueue(forward, batching=False)
    x = batch(3, 3)
    repeated = torch.cat([x, x[:1]])
    out = queue(repeated, ["conv"])
    assert forward.images == 3 and torch.equal(out["conv"][3], out["conv"][0])

    failing = ForwardQueue(lambda x, layers, unit=None: 1 / 0, batching=False)
    with pytest.raises(ZeroDivisionError):
        failing(batch(2, 4), ["conv"])
    assert not failing._inflight  # nothing left for later calls to wait on


GATED = '''
import threading
import torch

armed, started, release = threading.Event(), threading.Event(), threading.Event()


class Gated(torch.nn.Module):
    """A 1x1 convolution whose forward pass, once armed, waits for the test before it ends."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        if armed.is_set():
            started.set()
            assert release.wait(60)
        return self.conv(x)


def make():
    return {"model": Gated(), "preprocess": {"size": 16, "crop_pct": 1.0}}
'''


def test_a_call_cancelled_in_its_last_stage_is_dropped_and_the_next_answers(tmp_path, monkeypatch):
    """The cancel lands while the call's only batch runs, after its last check: the call is
    still dropped (counted, no reply encoded), and the next call on the session answers."""
    import importlib

    from PIL import Image

    from maia_core.execution.host import CallCancelled, ModelHost
    from maia_core.execution.specs import WorldSpec
    from maia_core.units import Unit

    (tmp_path / "gated_net.py").write_text(GATED)
    monkeypatch.syspath_prepend(str(tmp_path))
    gated = importlib.import_module("gated_net")
    host = ModelHost(WorldSpec(target="python:gated_net:make", device="cpu", tools=[]))
    try:
        [layer] = [i.name for i in host.target.layers() if i.spatial is not None][:1]
        session = host.open(Unit(layer, 0), None)
        image = Image.new("RGB", (16, 16), "red")
        outcome: list = []

        def call() -> None:
            try:
                outcome.append(session.call("system", "call_neuron", [[image]], {}))
            except CallCancelled as exc:
                outcome.append(exc)

        gated.armed.set()
        thread = threading.Thread(target=call)
        thread.start()
        assert gated.started.wait(60)
        session.cancel()  # its caller went away while the last batch ran
        gated.release.set()
        thread.join(60)
        gated.armed.clear()
        assert isinstance(outcome[0], CallCancelled) and host.cancelled_calls == 1
        acts, masked = session.call("system", "call_neuron", [[image]], {})
        assert len(acts) == 1 and masked[0].size == (16, 16) and host.cancelled_calls == 1
    finally:
        host.close()
