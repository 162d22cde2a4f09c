"""What containing a kernel costs, and what the warm pool saves: side by side in one run.

    python benchmarks/bench_kernel_start.py [--repeat 10]

For each containment (``bwrap``, the default, and ``none``), interleaved so a change in the
machine's load falls on both: the time from starting a kernel to its ``ready`` (numpy and
Pillow imported, proxies ready), which is what a unit would wait without the pool; and the
time a unit waits to take one from a warm pool (``KernelPool.take``), which is what it waits
with it. The sandbox's own start is the difference between the two containments' cold starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maia_core.execution import containment  # noqa: E402
from maia_core.execution.sandbox import KernelPool, KernelProcess  # noqa: E402


def cold(mode: str) -> float:
    start = time.perf_counter()
    kernel = KernelProcess(mode, None)
    kernel.wait_ready()
    elapsed = time.perf_counter() - start
    assert kernel.error is None, kernel.error
    kernel.reap()
    return elapsed


def warm(mode: str) -> float:
    pool = KernelPool(mode, None, size=1)
    pool.fill()
    while not pool._ready:  # wait until one is warm, as between a run's units
        time.sleep(0.01)
    start = time.perf_counter()
    kernel = pool.take()
    elapsed = time.perf_counter() - start
    kernel.reap()
    pool.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(containment.check("bwrap"))
    modes = ("bwrap", "none")
    for mode in modes:  # warm the file cache
        cold(mode)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for mode in modes:
            results.setdefault((mode, "cold start"), []).append(cold(mode))
            results.setdefault((mode, "take from the pool"), []).append(warm(mode))
    print(f"{'containment':<12} {'what':<20} {'median ms':>10} {'max ms':>8}")
    for (mode, what), times in results.items():
        print(
            f"{mode:<12} {what:<20} {1000 * statistics.median(times):>10.1f} {1000 * max(times):>8.1f}"
        )
    extra = statistics.median(results[("bwrap", "cold start")]) - statistics.median(
        results[("none", "cold start")]
    )
    print(f"\nthe sandbox adds {1000 * extra:.0f} ms to a cold start; a unit takes a warm kernel.")


if __name__ == "__main__":
    main()
