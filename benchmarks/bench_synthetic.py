"""Synthetic neurons: call_neuron throughput against a bare EfficientNet-Lite0 forward pass.

    python benchmarks/bench_synthetic.py [--sizes 256,224] [--batch 32] [--batches 12] [--threads N]
    python benchmarks/bench_synthetic.py --grounded-sam [--batch 8] [--batches 3]   # CUDA only

``synthetic:offline`` (the offline detector: EfficientNet-Lite0 plus colour rules), measured
side by side and interleaved on the same batches of scenes images, for each image size of
``--sizes``: 256 px, the size the scenes dataset and ``text2image`` make (the detector's view
is a 224 px crop of it), and 224 px (the view is the central 196 px resized up to 224, with
PIL's bicubic filter, as the model's transform prescribes). Noise images stand in without the
Tux Paint stamps.

- ``forward``: the bare ``model(x)`` of the detector's EfficientNet-Lite0 on the
  already-normalized batch;
- ``preprocess+forward``: the same plus resizing, cropping and normalizing the PIL images;
- ``call_neuron <unit>``: ``system.call_neuron(images)`` for an object, a colour, an OR and an
  AND neuron, everything included (preprocessing, detection, CAM refinement, maps, masks,
  masked PIL images).

Each batch runs every row once, one after the other, so each call is also compared with the
forward pass of its own round ("paired"): a machine whose speed drifts between rounds (a
shared VM's does, by tens of percent within minutes) moves both sides of that ratio alike.
The verdict is on the median of the paired ratios; the ratio of the medians is printed beside
it. The goal: every call_neuron at least 0.9 of the bare forward pass's images/s (issue 18).
This process runs with maia's allocator settings (``maia_core.allocator``), as the model host
does; the bare forward pass with glibc's default settings, in a fresh process
(``bench_forward.py``), is printed after the tables.

``--grounded-sam`` measures the ``grounded-sam`` detector (Grounding DINO tiny + SAM ViT-H)
on a CUDA GPU: call_neuron images/s for a mono and an AND neuron and the peak GPU memory. It
needs the weights in the Hugging Face cache and exits with a message without CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
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


def scene_images(n: int, seed: int, size: int = 224) -> list[Image.Image]:
    try:
        from maia_plugins.datasets.scenes import ScenesDataset

        world = ScenesDataset(n=n + seed, size=size)
        return [world.image(seed + i) for i in range(n)]
    except Exception as exc:  # noqa: BLE001 - the stamps are optional for a timing
        print(f"(no scenes world: {exc}; timing on noise images)")
        rng = np.random.default_rng(seed)
        return [
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
        ]


def find_unit(target, concepts: list[str], mode: str) -> Unit:
    for row in target.unit_listing(show_concepts=True):
        if row["mode"] == mode and row["concepts"] == concepts:
            return Unit(row["layer"], row["unit"])
    raise SystemExit(f"{target.name} has no {mode} neuron {concepts}")


def timed(runs: dict, batches: list, device: torch.device) -> dict[str, list[float]]:
    for fn in runs.values():  # warm-up: allocator, kernels, probing
        fn(batches[0])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for batch in batches:
        for name, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            fn(batch)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def offline(args: argparse.Namespace) -> None:
    entry, arg = plugins.registry("targets").resolve("synthetic:offline")
    target = entry.factory(arg, device=args.device, batch_size=args.batch)
    dev = target.device
    model = target.detector.model
    systems = {
        label: target.system(find_unit(target, concepts, mode))
        for label, (concepts, mode) in {
            "zebra (object)": (["zebra"], "mono"),
            "red (colour)": (["red"], "mono"),
            "zebra OR tiger": (["zebra", "tiger"], "or"),
            "dog AND grass": (["dog", "grass"], "and"),
        }.items()
    }
    where = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"synthetic:offline on {dev} ({where}), batch {args.batch}, {args.batches} batches, "
        f"torch {torch.__version__}; allocator: {tune_malloc() or 'glibc default'}"
    )
    verdicts = []
    base = 0.0
    for size in args.sizes:
        batches = [scene_images(args.batch, args.batch * b, size) for b in range(args.batches)]
        tensors = {
            id(b): target.preprocess.to_tensor(target.preprocess.views(b)).to(dev) for b in batches
        }

        def forward(batch, tensors=tensors) -> None:
            with torch.inference_mode():
                model(tensors[id(batch)])

        def pre_forward(batch) -> None:
            x = target.preprocess.to_tensor(target.preprocess.views(batch)).to(dev)
            with torch.inference_mode():
                model(x)

        runs = {"forward": forward, "preprocess+forward": pre_forward}
        for label, system in systems.items():
            runs[f"call_neuron {label}"] = lambda batch, s=system: s.call_neuron(batch)
        times = timed(runs, batches, dev)
        base = statistics.median(times["forward"])
        print(
            f"\n{size} px images (load average {os.getloadavg()[0]:.1f})\n"
            f"{'run':<32} {'images/s':>9} {'time / forward':>15} {'paired':>7}"
        )
        # each run's time over its own round's forward pass, the median over rounds
        paired = {
            name: statistics.median(a / f for a, f in zip(ts, times["forward"]))
            for name, ts in times.items()
        }
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"{name:<32} {args.batch / t:>9.1f} {t / base:>15.2f} {paired[name]:>7.2f}")
        calls = [name for name in times if name.startswith("call_neuron")]
        slowest = max(paired[name] for name in calls)
        ratio = max(statistics.median(times[name]) for name in calls) / base
        verdict = "within" if 1 / slowest >= 0.9 else "UNDER"
        verdicts.append(
            f"{size} px: slowest call_neuron at {1 / slowest:.2f} of the bare forward pass's "
            f"images/s ({slowest:.2f}x its time, paired; {ratio:.2f}x by medians): "
            f"{verdict} the 0.9 goal"
        )
    print()
    print("\n".join(verdicts))
    if dev.type == "cpu":
        print_gain("efficientnet_lite0", args.batch, args.batch / base)


def grounded_sam(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "bench_synthetic --grounded-sam needs a CUDA GPU (Grounding DINO + SAM ViT-H are "
            "impractical on a CPU); torch sees none here."
        )
    entry, arg = plugins.registry("targets").resolve("synthetic:maia")
    target = entry.factory(arg, device="cuda", batch_size=args.batch)
    batches = [scene_images(args.batch, args.batch * b) for b in range(args.batches)]
    runs = {}
    for label, (concepts, mode) in {
        "dog (mono)": (["dog"], "mono"),
        "grass AND dog": (["grass", "dog"], "and"),
    }.items():
        system = target.system(find_unit(target, concepts, mode))
        runs[f"call_neuron {label}"] = lambda batch, s=system: s.call_neuron(batch)
    torch.cuda.reset_peak_memory_stats()
    times = timed(runs, batches, target.device)
    print(
        f"grounded-sam on {torch.cuda.get_device_name(0)}, batch {args.batch}, "
        f"{args.batches} batches, torch {torch.__version__}"
    )
    for name, ts in times.items():
        print(f"{name:<32} {args.batch / statistics.median(ts):>9.2f} images/s")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[256, 224],
        help="image sizes in pixels (256: the scenes dataset's and text2image's)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--grounded-sam", action="store_true")
    args = p.parse_args()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.grounded_sam:
        args.batch = args.batch or 8
        grounded_sam(args)
    else:
        args.batch = args.batch or 32
        offline(args)


if __name__ == "__main__":
    main()
