"""Diffusion tools on a GPU: images/s and peak GPU memory of flux, sdxl-turbo (and the editors).

    python benchmarks/bench_diffusers.py [--models flux,sdxl-turbo] [--images 8] [--steps N]
                                         [--size 512] [--batch-size 4] [--precision bf16]
                                         [--device cuda] [--cpu-offload]
                                         [--option flux.model=black-forest-labs/FLUX.1-schnell]

Each model is measured in a fresh process, so one model's memory does not count in the next's:
load it through its registered factory (as ``maia run`` does), make one batch to warm up, then
time ``--images`` images made by the tool's host-side ``generate`` (``edit`` for the editors,
``flux-kontext`` and ``instruct-pix2pix``, on 512x512 originals). Printed per model: load
time, images/s, seconds per image, the peak GPU memory of the weights alone and during
generation (``torch.cuda.max_memory_allocated``). Steps, guidance and size are each model's
defaults unless ``--steps``/``--size``/``--option`` say otherwise. Needs the weights in the
Hugging Face cache (``hf download black-forest-labs/FLUX.1-dev`` ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROMPTS = [
    "a dog running on the grass",
    "a red car parked in front of a brick house",
    "a bowl of fruit on a wooden table",
    "a lighthouse on a cliff at sunset",
    "a cat sleeping on a blue sofa",
    "a bicycle leaning against a wall",
    "a snowy mountain above a lake",
    "a plate of pasta with tomatoes",
]
EDITS = [
    "change the background to a beach",
    "make it night",
    "change the color of the main object to green",
    "make it winter",
]


def options_for(model: str, args: argparse.Namespace) -> dict[str, str]:
    options: dict[str, str] = {"batch_size": str(args.batch_size)}
    if args.steps:
        options["steps"] = str(args.steps)
    if args.size:
        options["size"] = args.size
    if args.cpu_offload:
        options["cpu_offload"] = "true"
    for item in args.option:
        key, _, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not dot:
            sys.exit(f"--option {item!r}: expected MODEL.KEY=VALUE, e.g. flux.steps=4.")
        if name == model:
            options[option] = value
    return options


def originals(n: int):
    import numpy as np
    from PIL import Image

    # Smooth colour fields: editable, and nothing to download.
    y, x = np.mgrid[0:512, 0:512] / 511.0
    out = []
    for i in range(n):
        rgb = np.stack([x, y, (x + y + i / max(n, 1)) % 1.0], axis=-1)
        out.append(Image.fromarray((rgb * 255).astype(np.uint8)))
    return out


def measure(model: str, args: argparse.Namespace) -> dict:
    """One model, in this process: load, warm up, time; returns a row of the table."""
    import torch

    from maia_core import plugins
    from maia_core.errors import UserError
    from maia_core.tools import ToolContext

    entry, _ = plugins.registry("tools").resolve(model)
    ctx = ToolContext(target=None, device=args.device, precision=args.precision)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        tool = entry.factory(ctx, **options_for(model, args))
    except UserError as exc:
        return {"model": model, "error": exc.message}
    torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    weights = torch.cuda.max_memory_allocated()

    editing = entry.meta["capability"] == "edit_images"
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    instructions = [EDITS[i % len(EDITS)] for i in range(args.images)]
    bases = originals(args.images) if editing else []

    def run(n: int, seed: int) -> None:
        if editing:
            tool.edit(bases[:n], instructions[:n], seed)
        else:
            tool.generate(prompts[:n], seed)

    run(min(args.batch_size, args.images), 0)  # warm-up: kernels, allocator, offload hooks
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(args.images, 1)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = tool.parameters()
    return {
        "model": model,
        "steps": params.get("steps"),
        "size": params.get("size") or params.get("working_size"),
        "batch": args.batch_size,
        "load_s": load_s,
        "images_per_s": args.images / seconds,
        "s_per_image": seconds / args.images,
        "weights_gib": weights / 2**30,
        "peak_gib": max(weights, torch.cuda.max_memory_allocated()) / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="flux,sdxl-turbo", help="Comma-separated tools.")
    p.add_argument("--images", type=int, default=8, help="Images timed per model.")
    p.add_argument("--steps", type=int, default=None, help="Override every model's steps.")
    p.add_argument("--size", default=None, help="Override the size (default: each model's).")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--cpu-offload", action="store_true")
    p.add_argument("--option", action="append", default=[], help="MODEL.KEY=VALUE, repeated.")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "bench_diffusers measures images/s and GPU memory, so it needs a CUDA GPU, and "
            "torch sees none here. Run it on a machine with one."
        )
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--one", model],
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
        if child.returncode != 0 or not lines:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"model": model, "error": tail})
        else:
            rows.append(json.loads(lines[-1]))

    print_table(rows, torch.cuda.get_device_name(torch.device(args.device)), args)


def print_table(rows: list[dict], device: str, args: argparse.Namespace) -> None:
    print(f"{device}, {args.precision}, {args.images} images per model")
    header = (
        f"{'model':<18}{'steps':>6}{'size':>36}{'batch':>6}{'load s':>8}{'img/s':>8}"
        f"{'s/img':>8}{'weights GiB':>13}{'peak GiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<18}  failed: {r['error']}")
            continue
        print(
            f"{r['model']:<18}{r['steps']:>6}{r['size']:>36}{r['batch']:>6}{r['load_s']:>8.1f}"
            f"{r['images_per_s']:>8.2f}{r['s_per_image']:>8.2f}{r['weights_gib']:>13.1f}"
            f"{r['peak_gib']:>10.1f}"
        )


if __name__ == "__main__":
    main()
