"""How long `maia --help` takes, next to a bare Python start, measured side by side.

    python benchmarks/bench_startup.py [--repeat 15]

The budget is 0.3 s of wall time for `maia --help` on a 2-core machine (issue 18). The CPU
time of each command (user and system, its children's included) is printed too: on a shared
machine it moves less with the load than wall time does.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MAIA = str(Path(sys.executable).parent / "maia")
# As a user starts it: compiled modules cached on disk (a test or CI shell may turn that off).
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of ``repeat`` runs."""
    times, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=USER_ENV)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times, cpu


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
    results = {name: ([], []) for name, _ in rows}
    for _ in range(args.repeat):  # interleaved, so the load hits every command alike
        for name, cmd in rows:
            wall, cpu = timed(cmd, 1)
            results[name][0].extend(wall)
            results[name][1].extend(cpu)
    base = statistics.median(results["python -c pass"][0])
    print(f"load average {os.getloadavg()[0]:.1f}, {args.repeat} runs each")
    print(f"{'command':<16} {'median s':>9} {'max s':>7} {'x python':>9} {'CPU s':>7}")
    for name, (times, cpu) in results.items():
        med = statistics.median(times)
        print(
            f"{name:<16} {med:>9.3f} {max(times):>7.3f} {med / base:>9.1f} "
            f"{statistics.median(cpu):>7.3f}"
        )
    help_median = statistics.median(results["maia --help"][0])
    verdict = "within" if help_median <= 0.3 else "OVER"
    print(f"\nmaia --help median {help_median:.3f} s: {verdict} the 0.3 s budget")


if __name__ == "__main__":
    main()
