"""``maia bench`` on a whole synthetic set with the baseline, and ``maia eval``'s seconds per unit.

    python benchmarks/bench_eval.py [--set synthetic:offline] [--units mono:or:and] [-j 2]
                                    [--device cpu] [--keep DIR]

Side by side in one run, on the same units:

- ``maia run --backbone baseline`` over the set (the investigations): wall time, s/unit;
- ``maia eval`` of those results with template prompts and the ``scenes`` generator: wall time
  and seconds per unit (the model host's loading included, once);
- ``maia eval`` again: a re-run that finds every ``eval.json`` and scores nothing;
- the baseline's accuracy: exact labels per mode, mean AUC, and the same for a constant label
  replayed on the same units, as the comparison point.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAIA = str(Path(sys.executable).parent / "maia")


def timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([MAIA, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", default="synthetic:offline")
    p.add_argument("--units", default="mono:or:and")
    p.add_argument("-j", "--concurrency", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", type=Path, help="keep the results here (default: a temporary folder)")
    args = p.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="maia-bench-eval-"))
    results = root / "results"
    common = [
        "--target",
        args.set,
        "--units",
        args.units,
        "--results",
        str(results),
        "--device",
        args.device,
    ]

    run_s = timed(
        "run", *common, "--backbone", "baseline", "-j", str(args.concurrency), "--reporter", "json"
    )
    constant = root / "constant.json"
    constant.write_text(json.dumps(["[DESCRIPTION]: a teapot, whatever the unit\n[LABEL]: teapot"]))
    timed("run", *common, "--backbone", f"replay:{constant}", "--reporter", "json")
    eval_s = timed("eval", str(results), "--device", args.device)
    again_s = timed("eval", str(results), "--device", args.device)

    records = [json.loads(f.read_text()) for f in results.rglob("eval.json")]
    baseline = [r for r in records if r["backbone"] == "baseline"]
    constant_records = [r for r in records if r["backbone"] != "baseline"]
    modes: dict[str, list[bool]] = {}
    for r in baseline:
        modes.setdefault(r["layer"], []).append(bool((r.get("ground_truth") or {}).get("exact")))

    def mean_auc(rs: list[dict]) -> float:
        aucs = [
            r["predictive"]["auc"] for r in rs if (r.get("predictive") or {}).get("auc") is not None
        ]
        return sum(aucs) / max(1, len(aucs))

    n = len(baseline)
    print(
        f"units: {n} ({args.set} {args.units}), concurrency {args.concurrency}, device {args.device}"
    )
    print(f"maia run --backbone baseline: {run_s:.0f} s ({run_s / n:.1f} s/unit)")
    print(
        f"maia eval, template prompts:   {eval_s:.0f} s for {len(records)} units ({eval_s / len(records):.2f} s/unit)"
    )
    print(f"maia eval again (resumed):     {again_s:.1f} s")
    for mode, hits in modes.items():
        print(f"baseline exact, {mode}: {sum(hits)}/{len(hits)}")
    every = [h for v in modes.values() for h in v]
    print(f"baseline exact, all: {sum(every)}/{len(every)} ({100 * sum(every) / len(every):.0f}%)")
    print(
        f"mean AUC: baseline {mean_auc(baseline):.2f}, constant label {mean_auc(constant_records):.2f}"
    )
    print(f"results in {root}")


if __name__ == "__main__":
    main()
