"""The framework's own overhead per round, excluding backbone and model compute.

    python benchmarks/bench_overhead.py [--rounds 25]

A replay backbone (no model call) drives investigations of EfficientNet-Lite0 through the
process sandbox with the json and html reporters on. Two workloads, side by side:

- ``print``: each round's cell prints one line;
- ``images``: each round's cell displays four 224 px images, so the transcript grows as a
  real one does (100 images by round 25) and history.json is rewritten every round.

Overhead per round = (loop wall time - time spent inside cells - backbone time) / rounds,
so what is left is maia's: prompt building, the sandbox round trip, transcript handling
and the reporters. The budget is 50 ms per round.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from maia_core.loop.run import RunConfig, run

CELLS = {
    "print": "x = {i}\nprint('round', x)",
    "images": "imgs = [Image.fromarray((np.random.default_rng({i} + k).random((224, 224, 3)) * 255).astype('uint8')) for k in range(4)]\n"
    "for k, img in enumerate(imgs):\n    tools.display(img, f'image {{k}}')",
}


def measure(workload: str, rounds: int, tmp: Path) -> dict[str, float]:
    turns = [f"```python\n{CELLS[workload].format(i=i)}\n```" for i in range(rounds)]
    turns.append("[DESCRIPTION]: benchmark\n[LABEL]: benchmark")
    replay = tmp / f"{workload}.json"
    replay.write_text(json.dumps(turns))
    config = RunConfig(
        target="efficientnet_lite0",
        units="blocks.6=0",
        backbone=f"replay:{replay}",
        results=tmp / workload,
        reporters=["json", "html"],
        max_rounds=rounds + 1,
        force=True,
    )
    start = time.perf_counter()
    [inv] = run(config)
    total = time.perf_counter() - start
    r = inv.result
    cell_seconds = sum(m.meta.get("seconds", 0.0) for m in inv.messages if m.role == "user")
    per_round = (r.wall_time_s - cell_seconds) / r.rounds
    history_kb = (inv.out_dir / "history.json").stat().st_size / 1024
    return {
        "rounds": r.rounds,
        "loop_s": r.wall_time_s,
        "cells_s": cell_seconds,
        "overhead_ms": per_round * 1000,
        "total_s": total,
        "history_kb": history_kb,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = {w: measure(w, args.rounds, Path(d)) for w in CELLS}
    print(
        f"{'workload':<8} {'rounds':>6} {'loop s':>7} {'in cells s':>10} {'overhead ms/round':>18} {'history.json KB':>16}"
    )
    for w, m in rows.items():
        print(
            f"{w:<8} {m['rounds']:>6} {m['loop_s']:>7.2f} {m['cells_s']:>10.2f} {m['overhead_ms']:>18.1f} {m['history_kb']:>16.0f}"
        )
    worst = max(m["overhead_ms"] for m in rows.values())
    print(
        f"\nworst overhead {worst:.1f} ms per round: {'within' if worst < 50 else 'OVER'} the 50 ms budget"
    )


if __name__ == "__main__":
    main()
