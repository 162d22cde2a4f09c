"""Many investigations at once: wall time, memory and overhead against concurrency.

    python benchmarks/bench_concurrency.py [--units 16] [--latency 1.0] [--levels 1,4,8,16]

A scripted backbone (a local server speaking OpenAI's protocol, through the real SDK) answers
every request after ``--latency`` seconds, as a hosted model would. Each of ``--units`` units
of EfficientNet-Lite0 (``blocks.6``) is studied in 4 rounds: three experiments (call_neuron
on four images, the masked images displayed) and the answer. For each concurrency, side by
side in one run:

- wall time from the first backbone request to the last result (model loading apart), and the
  speedup over concurrency 1; the goal is at least 0.75 x N up to N = 8;
- the model host's peak resident memory, and the largest kernel's;
- the framework's overhead per round: wall time of a unit, minus the backbone's latency and
  the model host's time on the cells' calls, divided by its rounds (the agent's code, image
  traffic through the host, the loop, the transcript and the reporters included); the goal is
  under 20 ms at N = 8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_providers import FakeProvider, reply  # noqa: E402

from maia_core.loop.run import RunConfig, run  # noqa: E402

EXPERIMENT = (
    "```python\n"
    "from PIL import ImageDraw\n"
    "imgs = []\n"
    "for c in ('red', 'green', 'blue', 'white'):\n"
    "    img = Image.new('RGB', (224, 224), c)\n"
    "    ImageDraw.Draw(img).ellipse((40 + {i} * 10, 40, 180, 180), fill='black')\n"
    "    imgs.append(img)\n"
    "acts, masked = system.call_neuron(imgs)\n"
    "for a, m in zip(acts, masked):\n"
    "    tools.display(m, f'activation {{a:.3f}}')\n"
    "```"
)
TURNS = [EXPERIMENT.format(i=i) for i in range(3)] + [
    "[DESCRIPTION]: benchmark\n[LABEL]: benchmark"
]


class Sampler:
    """Peak resident memory of this process's model host and kernels, sampled every 0.5 s (a
    sampler that reads every process twice a second would take CPU from what it measures)."""

    def __init__(self) -> None:
        self.host = 0
        self.kernel = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.wait(0.5):
            for p in me.children(recursive=True):
                try:
                    cmd = " ".join(p.cmdline())
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                if "execution.host" in cmd:
                    self.host = max(self.host, rss)
                elif "execution.kernel" in cmd:
                    self.kernel = max(self.kernel, rss)


def measure(n: int, units: int, latency: float, tmp: Path) -> dict[str, float]:
    def answer(body):
        k = sum(m["role"] == "assistant" for m in body["messages"])
        return reply(TURNS[min(k, len(TURNS) - 1)], delay=latency)

    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    with FakeProvider("openai", answer) as fp, Sampler() as memory:
        started = time.monotonic()
        invs = run(
            RunConfig(
                target="efficientnet_lite0",
                units=f"blocks.6=0-{units - 1}",
                backbone="gpt-4o",
                base_url=fp.base_url,
                results=tmp / f"n{n}",
                reporters=["json"],
                concurrency=n,
                device="cpu",
            )
        )
        ended = time.monotonic()
        first = fp.requests[0].at
    assert all(i.result.status == "completed" for i in invs), [i.result.error for i in invs]
    # The model host's time on the cells' calls (forward passes, and waiting for the model
    # thread) is not the framework's; everything else is, image traffic included.
    per_round = []
    for inv in invs:
        in_host = sum(m.meta.get("host_seconds", 0.0) for m in inv.messages if m.role == "user")
        per_round.append(
            (inv.result.wall_time_s - latency * inv.result.rounds - in_host) / inv.result.rounds
        )
    return {
        "load_s": first - started,
        "wall_s": ended - first,
        "host_mb": memory.host / 2**20,
        "kernel_mb": memory.kernel / 2**20,
        "overhead_ms": 1000 * sum(per_round) / len(per_round),
        "cells_ms": 1000
        * sum(m.meta.get("seconds", 0.0) for i in invs for m in i.messages if m.role == "user")
        / sum(i.result.rounds - 1 for i in invs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as d:
        rows = {n: measure(n, args.units, args.latency, Path(d)) for n in levels}
    base = rows[levels[0]]["wall_s"] * levels[0]
    print(
        f"{args.units} units x {len(TURNS)} rounds, backbone latency {args.latency:g} s, efficientnet_lite0 on the CPU"
    )
    print(
        f"{'N':>3} {'load s':>7} {'wall s':>7} {'speedup':>8} {'goal':>6} {'host MB':>8} {'kernel MB':>10} {'overhead ms/round':>18} {'cell ms':>8}"
    )
    for n, m in rows.items():
        speedup = base / m["wall_s"]
        print(
            f"{n:>3} {m['load_s']:>7.1f} {m['wall_s']:>7.1f} {speedup:>8.2f} {0.75 * n:>6.2f} {m['host_mb']:>8.0f} "
            f"{m['kernel_mb']:>10.0f} {m['overhead_ms']:>18.1f} {m['cells_ms']:>8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
