"""Exemplar computation against a bare forward pass, end-to-end images/s, and peak memory.

    python benchmarks/bench_exemplars.py [--images 256] [--batch 32] [--workers 2]
                                         [--target efficientnet_lite0] [--layers blocks.5,blocks.6]
                                         [--memory]

A folder of JPEGs (photos from scikit-image, randomly cropped, resized and flipped to 256 px,
so decoding is real work) is read through the same DataLoader both ways, side by side:

- ``bare forward``: load, decode, preprocess, ``model(x)`` (the whole model);
- ``exemplars``: the full computation for ``--layers`` (top-k, bottom-k, maps, threshold
  samples), which stops the forward pass after the deepest layer it needs;
- ``exemplars+output``: the same with the classifier ``output`` too, so it runs the whole
  model like the bare pass;
- ``loading only`` and ``model only`` (on tensors already in memory), to name the bottleneck.

``--memory`` also runs the computation on 1x and 4x the images in fresh processes and prints
their peak resident memory, which must not grow with the dataset. On a GPU pass
``--target resnet152 --layers layer1,layer2,layer3,layer4 --batch 128 --device cuda``.

This process runs with maia's allocator settings (``maia_core.allocator``), as ``maia
exemplars compute`` does; the bare forward pass with glibc's default settings, in a fresh
process (``bench_forward.py``), is printed next to ``model only``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_forward import print_gain
from PIL import Image

from maia_core import plugins
from maia_core.allocator import tune_malloc
from maia_core.torch_runtime.exemplars import ComputeConfig, ExemplarComputation, _to_batch


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [
        Image.fromarray(getattr(data, name)()).convert("RGB")
        for name in ("chelsea", "coffee", "astronaut", "rocket")
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        s = rng.uniform(0.5, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.crop((x, y, x + cw, y + ch)).resize((256, 256), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.save(folder / f"{i:05d}.jpg", quality=90)


def options_for(target_spec: str) -> tuple[str, ...]:
    return () if target_spec == "efficientnet_lite0" else ("pretrained=false",)


def load(target_spec: str, device: str, batch: int):
    entry, arg = plugins.registry("targets").resolve(target_spec)
    options = dict(o.split("=", 1) for o in options_for(target_spec))
    target = entry.factory(arg, device=device, batch_size=batch, **options)
    target.layers()
    return target


def dataset(folder: Path):
    entry, arg = plugins.registry("datasets").resolve(f"imagefolder:{folder}")
    return entry.factory(arg)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--target", default="efficientnet_lite0")
    p.add_argument("--layers", default="blocks.5,blocks.6")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)  # internal: one run, print peak RSS
    args = p.parse_args()
    tuned = tune_malloc()
    layers = args.layers.split(",")

    if args.peak_of:
        target = load(args.target, args.device, args.batch)
        with tempfile.TemporaryDirectory() as out:
            job = ExemplarComputation(
                target,
                dataset(Path(args.peak_of)),
                out,
                ComputeConfig(layers=layers, batch_size=args.batch, workers=args.workers),
            )
            job.run()
        print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        make_jpegs(folder, args.images)
        data = dataset(folder)
        target = load(args.target, args.device, args.batch)
        dev = target.device
        config = ComputeConfig(
            layers=layers, batch_size=args.batch, workers=args.workers, checkpoint_every=1e9
        )

        def loader_batches():
            job = ExemplarComputation(target, data, Path(tmp) / "probe", config)
            return job.batches()

        def bare() -> None:
            for _indices, items, _bad in loader_batches():
                x, _ = _to_batch(items, target.preprocess, dev)
                with torch.inference_mode(), target._autocast():
                    target.model(target._input(x))
            sync(dev)

        def exemplars(names):
            def go() -> None:
                cfg = ComputeConfig(
                    layers=names, batch_size=args.batch, workers=args.workers, checkpoint_every=1e9
                )
                ExemplarComputation(
                    target, data, Path(tmp) / f"store-{time.monotonic_ns()}", cfg
                ).run()
                sync(dev)

            return go

        def loading() -> None:
            for _indices, items, _bad in loader_batches():
                _to_batch(items, target.preprocess, dev)
            sync(dev)

        cached = []
        for _indices, items, _bad in loader_batches():
            cached.append(_to_batch(items, target.preprocess, dev)[0])

        def model_only() -> None:
            with torch.inference_mode(), target._autocast():
                for x in cached:
                    target.model(target._input(x))
            sync(dev)

        runs = {
            "bare forward": bare,
            "exemplars": exemplars(layers),
            "exemplars+output": exemplars([*layers, "output"]) if target.layer("output") else None,
            "loading only": loading,
            "model only": model_only,
        }
        runs = {k: v for k, v in runs.items() if v is not None}
        bare()  # warm-up
        times = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        base = args.images / statistics.median(times["bare forward"])
        print(
            f"{args.target} on {dev}, {args.images} JPEGs at 256 px, batch {args.batch}, {args.workers} workers, layers {args.layers}, torch {torch.__version__}"
        )
        print(
            f"allocator: {tuned or 'glibc default (not glibc?)'}; load average {os.getloadavg()[0]:.1f}"
        )
        print(f"{'run':<18} {'images/s':>9} {'x bare forward':>15}")
        rates = {}
        for name, ts in times.items():
            rates[name] = args.images / statistics.median(ts)
            print(f"{name:<18} {rates[name]:>9.1f} {rates[name] / base:>15.2f}")
        worst = min(rates[n] for n in rates if n.startswith("exemplars")) / base
        print(
            f"\nexemplar computation at {worst:.2f} of the bare forward pass: {'within' if worst >= 0.9 else 'UNDER'} the 0.9 budget"
        )
        bottleneck = (
            "loading (decode + preprocess)"
            if rates["loading only"] < rates["model only"]
            else "the model's forward pass"
        )
        print(
            f"end to end {rates['exemplars']:.1f} images/s with decoding; the bottleneck is {bottleneck} "
            f"(loading alone {rates['loading only']:.1f}/s, model alone {rates['model only']:.1f}/s)"
        )
        if dev.type == "cpu":
            print_gain(
                args.target,
                args.batch,
                rates["model only"],
                target_options=options_for(args.target),
            )

        if args.memory:
            print("\npeak resident memory of a whole computation, in a fresh process:")
            for factor in (1, 4):
                big = Path(tmp) / f"x{factor}"
                make_jpegs(big, args.images * factor, seed=factor)
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--peak-of",
                        str(big),
                        "--target",
                        args.target,
                        "--layers",
                        args.layers,
                        "--batch",
                        str(args.batch),
                        "--workers",
                        str(args.workers),
                        "--device",
                        args.device,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
                print(f"  {args.images * factor:>6} images: {peak:.0f} MB")


if __name__ == "__main__":
    main()
