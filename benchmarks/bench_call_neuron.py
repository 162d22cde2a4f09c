"""call_neuron throughput against a bare forward pass of the same model on the same batches.

    python benchmarks/bench_call_neuron.py [--target resnet152] [--batch 64] [--batches 4]
                                          [--layers layer2,layer4] [--device auto] [--precision fp32]

For each batch of ``--batch`` images (224 px photos-like noise), measured side by side and
interleaved so drift hits both equally:

- ``forward``: ``model(x)`` on the already-normalized tensor;
- ``preprocess+forward``: the same, plus resizing, cropping and normalizing the PIL images;
- ``call_neuron``: ``system.call_neuron(images)``, everything included (preprocessing, the
  forward pass up to the layer, spatial max, upsampled threshold masks, masked PIL images).

The budget: call_neuron throughput >= 0.9 of the bare forward pass. Random weights
(``pretrained=false``) unless ``--pretrained``: the speed is the same.

This process runs with maia's allocator settings (``maia_core.allocator``), as the model host
does, so the bare forward pass is the fastest this machine does; the same pass with glibc's
default settings, in a fresh process (``bench_forward.py``), is printed after it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from bench_forward import print_gain
from PIL import Image

from maia_core import plugins
from maia_core.allocator import tune_malloc
from maia_core.units import Unit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", default="resnet152")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--layers", default="layer2,layer4")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--pretrained", action="store_true")
    args = p.parse_args()
    tuned = tune_malloc()

    entry, arg = plugins.registry("targets").resolve(args.target)
    options = {} if args.pretrained else {"pretrained": "false"}
    target = entry.factory(
        arg, device=args.device, precision=args.precision, batch_size=args.batch, **options
    )
    dev = target.device
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        for _ in range(args.batch)
    ]
    x = target.preprocess.to_tensor([target.preprocess.view(i) for i in images])
    systems = {layer: target.system(Unit(layer, 0)) for layer in args.layers.split(",")}

    def forward() -> None:
        with torch.inference_mode(), target._autocast():
            target.model(target._input(x))

    def pre_forward() -> None:
        xx = target.preprocess.to_tensor(target.preprocess.views(images))
        with torch.inference_mode(), target._autocast():
            target.model(target._input(xx))

    runs = {"forward": forward, "preprocess+forward": pre_forward}
    for layer, system in systems.items():
        runs[f"call_neuron {layer}"] = lambda s=system: s.call_neuron(images)
    for fn in runs.values():  # warm-up: allocator, kernels, probe
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.batches):
        for name, fn in runs.items():
            sync(dev)
            start = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - start)

    base = args.batch / statistics.median(times["forward"])
    print(
        f"{args.target} on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), "
        f"{args.precision}, batch {args.batch}, {args.batches} batches, torch {torch.__version__}"
    )
    print(
        f"allocator: {tuned or 'glibc default (not glibc?)'}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'run':<22} {'images/s':>9} {'x forward':>10}")
    for name, ts in times.items():
        ips = args.batch / statistics.median(ts)
        print(f"{name:<22} {ips:>9.1f} {ips / base:>10.2f}")
    worst = (
        min(
            args.batch / statistics.median(ts)
            for n, ts in times.items()
            if n.startswith("call_neuron")
        )
        / base
    )
    print(
        f"\nslowest call_neuron at {worst:.2f} of the bare forward pass: {'within' if worst >= 0.9 else 'UNDER'} the 0.9 budget"
    )
    if dev.type == "cpu":
        print_gain(
            args.target,
            args.batch,
            base,
            target_options=tuple(f"{k}={v}" for k, v in options.items()),
        )


if __name__ == "__main__":
    main()
