"""How long `maia --help` takes, next to a bare Python start, measured side by side.

    python benchmarks/bench_startup.py [--repeat 15]

The budget is 0.5 s of wall time for `maia --help` on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

MAIA = str(Path(sys.executable).parent / "maia")


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("maia --help", [MAIA, "--help"]),
        ("maia plugins", [MAIA, "plugins"]),
    ]
    timed(rows[1][1], 2)  # warm the file cache
    results = {name: timed(cmd, args.repeat) for name, cmd in rows}
    base = statistics.median(results["python -c pass"])
    print(f"{'command':<16} {'median s':>9} {'max s':>7} {'x python':>9}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:<16} {med:>9.3f} {max(times):>7.3f} {med / base:>9.1f}")
    help_median = statistics.median(results["maia --help"])
    print(f"\nmaia --help median {help_median:.3f} s: {'within' if help_median < 0.5 else 'OVER'} the 0.5 s budget")


if __name__ == "__main__":
    main()
