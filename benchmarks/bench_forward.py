"""The bare forward pass, glibc's default allocator settings against maia's (maia_core.allocator).

    python benchmarks/bench_forward.py [--target efficientnet_lite0] [--batches 64,16]
                                       [--passes 5] [--rounds 3] [--thread]

The reference of every forward-bound benchmark: ``model(x)`` on a random batch at the
target's input size, in inference mode, nothing else. Allocator settings hold for a whole
process and must come before its first large allocation, so each measurement is a fresh
process:

- ``default``: glibc as it comes (every activation above its mmap threshold is a fresh
  ``mmap``, faulted in page by page and unmapped after use), in 4 KB pages;
- ``tuned``: ``tune_malloc()`` first, as ``maia`` and the model host do (the heap kept, and
  huge pages where the kernel gives them for the asking).

Each process times both memory layouts, the target's own and ``channels_last``, interleaved.
Rounds alternate the two settings, so load on a shared machine hits both alike. Printed per
batch: images/s (the median over rounds), the gain, CPU seconds per pass (user and system),
minor page faults per pass, the peak resident memory and what the process still holds after
its passes (the cost of keeping freed memory). ``--thread`` runs the passes on a thread, as
the model host does. Other benchmarks call :func:`reference` for the ``default`` figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time


def child(args: argparse.Namespace) -> None:
    """One process: the allocator setting first, then the passes; one JSON line."""
    settings = {}
    if args.child == "tuned":
        from maia_core.allocator import tune_malloc

        settings = tune_malloc()
    import torch

    from maia_core import plugins

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    entry, arg = plugins.registry("targets").resolve(args.target)
    options = dict(o.split("=", 1) for o in args.target_option)
    target = entry.factory(arg, device="cpu", **options)
    x = torch.randn(args.batch, 3, *target.preprocess.size)
    model = target.model
    layouts = {"model": (model, target._input(x))}
    if args.channels_last:
        import copy

        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        layouts["channels_last"] = (cl, x.contiguous(memory_format=torch.channels_last))
    times: dict[str, list[float]] = {name: [] for name in layouts}
    usage: dict[str, float] = {}

    def passes() -> None:
        with torch.inference_mode():
            for m, xx in layouts.values():  # warm-up: kernels, and the allocator's first fill
                m(xx)
            start = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(args.passes):
                for name, (m, xx) in layouts.items():
                    t = time.perf_counter()
                    m(xx)
                    times[name].append(time.perf_counter() - t)
            end = resource.getrusage(resource.RUSAGE_SELF)
        n = args.passes * len(layouts)
        usage.update(
            user=(end.ru_utime - start.ru_utime) / n,
            sys=(end.ru_stime - start.ru_stime) / n,
            faults=(end.ru_minflt - start.ru_minflt) / n,
        )

    if args.thread:
        t = threading.Thread(target=passes)
        t.start()
        t.join()
    else:
        passes()
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    print(
        json.dumps(
            {
                "settings": settings,
                "images_per_s": {k: args.batch / statistics.median(v) for k, v in times.items()},
                **usage,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "held_mb": resident / 2**20,
            }
        )
    )


def reference(
    target: str,
    batch: int,
    *,
    setting: str = "default",
    passes: int = 5,
    target_options: tuple[str, ...] = (),
    channels_last: bool = False,
    thread: bool = False,
) -> dict:
    """A bare forward pass of ``target`` in a fresh process with ``setting`` (see the top)."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        setting,
        "--target",
        target,
        "--batch",
        str(batch),
        "--passes",
        str(passes),
    ]
    cmd += [a for o in target_options for a in ("--target-option", o)]
    cmd += ["--channels-last"] if channels_last else []
    cmd += ["--thread"] if thread else []
    # A default child must not inherit what this process's tune_malloc put in the environment.
    from maia_core.allocator import untuned_environ

    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=untuned_environ())
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_gain(target: str, batch: int, tuned_ips: float, **kwargs) -> None:
    """For benchmarks that run tuned (as maia does): the same bare pass with glibc's default,
    in a fresh process, so the allocator's gain shows next to the tuned reference."""
    default = reference(target, batch, **kwargs)["images_per_s"]["model"]
    print(
        f"bare forward with glibc's default allocator (a fresh process): {default:.1f} images/s; "
        f"with maia's settings (this process): {tuned_ips:.1f} images/s, {tuned_ips / default:.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="efficientnet_lite0")
    p.add_argument("--target-option", action="append", default=[])
    p.add_argument("--batches", default="64,16")
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--thread", action="store_true")
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    batches = [int(b) for b in args.batches.split(",")]
    rows: dict[tuple[int, str], list[dict]] = {}
    for _ in range(args.rounds):
        for batch in batches:
            for setting in ("default", "tuned"):
                rows.setdefault((batch, setting), []).append(
                    reference(
                        args.target,
                        batch,
                        setting=setting,
                        passes=args.passes,
                        target_options=tuple(args.target_option),
                        channels_last=True,
                        thread=args.thread,
                    )
                )
    settings = rows[(batches[0], "tuned")][0]["settings"]
    print(
        f"{args.target}, bare forward pass on the CPU ({len(os.sched_getaffinity(0))} cores), "
        f"{args.rounds} rounds of {args.passes} passes, {'on a thread' if args.thread else 'main thread'}"
    )
    print(f"tuned = {settings or 'nothing (not glibc)'}; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{'batch':>5} {'allocator':<9} {'layout':<13} {'images/s':>9} {'x default':>10} "
        f"{'user s':>7} {'sys s':>7} {'faults':>8} {'peak MB':>8} {'held MB':>8}"
    )
    for batch in batches:
        for layout in ("model", "channels_last"):
            base = statistics.median(r["images_per_s"][layout] for r in rows[(batch, "default")])
            for setting in ("default", "tuned"):
                rs = rows[(batch, setting)]
                ips = statistics.median(r["images_per_s"][layout] for r in rs)

                def med(key: str, rs: list[dict] = rs) -> float:
                    return statistics.median(r[key] for r in rs)

                print(
                    f"{batch:>5} {setting:<9} {layout:<13} {ips:>9.1f} {ips / base:>10.2f} "
                    f"{med('user'):>7.2f} {med('sys'):>7.2f} {med('faults'):>8.0f} "
                    f"{med('peak_mb'):>8.0f} {med('held_mb'):>8.0f}"
                )
    print("(user, sys, faults: per pass, both layouts averaged; peak and held: per process)")


if __name__ == "__main__":
    main()
