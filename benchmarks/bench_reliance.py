"""Planted-reliance classifiers: a ``reliance:offline`` call against a bare EfficientNet-Lite0
forward pass, and how often the pixel estimates of the conditions agree with the truth.

    python benchmarks/bench_reliance.py [--batch 32] [--batches 6] [--threads N]
    python benchmarks/bench_reliance.py --fallback [--seeds 3]

Speed, side by side and interleaved on the same batches of scenes renders (224 px), in one
process run with maia's allocator settings (``maia_core.allocator``, as the model host), the
reference included:

- ``forward``: the bare ``model(x)`` of the detector's EfficientNet-Lite0 on the normalized batch;
- ``call (no ground truth)``: ``system.call_neuron(images)`` of a reliance:offline class on the
  renders resized by one pixel, so no ground truth is found: the EfficientNet-Lite0 pass, the
  CAM masks and every condition estimated from the pixels, everything included;
- ``call (scenes truth)``: the same call on the renders themselves, found in the host's
  registry: presence and conditions read from the scenes, no network pass.

The goal: a call at most 1.2x the bare forward pass's time.

``--fallback``: for each of the 40 single-condition models of reliance:offline, renders where
its condition holds and where it does not (``reliance_prompts``), ``--seeds`` of each; the
condition as estimated from the pixels of a copy without ground truth, against the truth read
from the scene; agreement per category, and the object's detection by EfficientNet-Lite0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

from maia_core.allocator import tune_malloc


def setup(batch: int = 32):
    from maia_core import plugins
    from maia_core.tools import ToolContext
    from maia_plugins.tools.scenes_tools import ScenesEditImages, ScenesText2Image

    entry, arg = plugins.registry("targets").resolve("reliance:offline")
    target = entry.factory(arg, device="cpu", batch_size=batch)
    ctx = ToolContext(target=target, device="cpu")
    target.bind_truth(ctx.truth)
    return target, ctx, ScenesText2Image(ctx, size=224), ScenesEditImages(ctx, size=224)


def speed(args: argparse.Namespace) -> None:
    import torch

    from maia_core.units import Unit

    target, _ctx, t2i, _edit = setup(args.batch)
    listing = target.unit_listing(show_conditions=True)
    objects = sorted({u["object"] for u in listing})
    prompts = [
        f"a {objects[i % len(objects)]} on {('grass', 'gravel', 'a plain blue background')[i % 3]}"
        for i in range(args.batch * args.batches)
    ]
    images, _ = t2i.generate(prompts, seed=0)
    batches = [images[b * args.batch : (b + 1) * args.batch] for b in range(args.batches)]
    outside = {id(b): [im.resize((225, 225)) for im in b] for b in batches}
    model = target.detector.model
    tensors = {
        id(b): target.preprocess.to_tensor([target.preprocess.view(i) for i in b]) for b in batches
    }
    system = target.system(Unit("output", 0))

    def forward(batch) -> None:
        with torch.inference_mode():
            model(tensors[id(batch)])

    runs = {
        "forward": forward,
        "call (no ground truth)": lambda batch: system.call_neuron(outside[id(batch)]),
        "call (scenes truth)": lambda batch: system.call_neuron(batch),
    }
    for fn in runs.values():  # warm-up
        fn(batches[0])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for batch in batches:
        for name, fn in runs.items():
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["forward"])
    print(
        f"reliance:offline on cpu ({torch.get_num_threads()} threads), batch {args.batch}, "
        f"{args.batches} batches, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'run':<26} {'images/s':>9} {'time / forward':>15}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<26} {args.batch / t:>9.1f} {t / base:>15.2f}")
    ratio = statistics.median(times["call (no ground truth)"]) / base
    verdict = "within" if ratio <= 1.2 else "OVER"
    print(
        f"\na call without ground truth: {ratio:.2f}x the bare forward pass: {verdict} the 1.2x goal"
    )


def fallback(args: argparse.Namespace) -> None:
    from maia_core.units import Unit
    from maia_plugins.targets.reliance_conditions import parse_condition
    from maia_plugins.targets.reliance_prompts import condition_prompts

    target, ctx, t2i, edit = setup()
    agree: dict[str, list[bool]] = defaultdict(list)
    found: dict[str, list[bool]] = defaultdict(list)
    seen = set()
    for u in target.unit_listing(show_conditions=True):
        if u["mode"] != "single" or (u["object"], u["label"]) in seen:
            continue
        seen.add((u["object"], u["label"]))
        condition = parse_condition(u["conditions"][0], "bench")
        prompts = condition_prompts(u["object"], condition)
        images = []
        for seed in range(args.seeds):
            if prompts is None:  # mirrored: a drawing and the same flipped
                [base], _ = t2i.generate([f"a {u['object']}"], seed=seed)
                [flipped], _ = edit.edit([base], [f"flip the {u['object']}"], seed=seed)
                images += [base, flipped]
            else:
                images += t2i.generate(list(prompts), seed=seed)[0]
        unit = Unit("output", u["unit"])
        exact = target.truth(unit, images)
        estimated = target.truth(unit, [im.resize((im.width + 1, im.height + 1)) for im in images])
        for e, g in zip(exact, estimated):
            assert e["exact"] and not g["exact"]
            agree[u["category"]].append(e["condition"] == g["condition"])
            found[u["category"]].append(g["object"])
    print(f"pixel estimates against the scenes truth, {args.seeds} seed(s) per prompt")
    print(f"{'category':<18} {'agreement':>10} {'renders':>8} {'object found':>13}")
    total = []
    for category, results in agree.items():
        total += results
        share = sum(found[category]) / len(found[category])
        print(
            f"{category:<18} {sum(results) / len(results):>10.2f} {len(results):>8} {share:>13.2f}"
        )
    print(f"{'all':<18} {sum(total) / len(total):>10.2f} {len(total):>8}")


def main() -> None:
    tune_malloc()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fallback", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.path.isdir(os.environ.get("MAIA_STAMPS_DIR", "/usr/share/tuxpaint/stamps")):
        sys.exit(
            "bench_reliance needs the Tux Paint stamps (apt-get install tuxpaint-stamps-default)"
        )
    (fallback if args.fallback else speed)(args)


if __name__ == "__main__":
    main()
