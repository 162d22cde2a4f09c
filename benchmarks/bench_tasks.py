"""``maia bench --task reliance`` with the baseline on ``reliance:offline``, with and without
reflection, against a replayed constant answer; wall times for the whole set and per model.

    python benchmarks/bench_tasks.py [--units output] [--reflect 0 --reflect 2] [-j 2]
                                     [--device cpu] [--keep DIR]

Side by side in one run, on the same models:

- ``maia bench --task reliance --backbone baseline --reflect ...`` (the investigations, then
  ``maia eval``, the table and the plots): the wall time of the whole command, and each
  model's investigation time from its ``result.json``;
- a constant answer replayed on the same models (``background: grass`` for every class, the
  most common category of the set at its most common value) and evaluated the same way;
- the baseline's category and value accuracy by alpha and by category (single-condition
  models), both parts found on the AND/OR models, predictiveness and its ceiling, and the same
  with reflection, so its gain is one comparison away.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAIA = str(Path(sys.executable).parent / "maia")
CONSTANT = (
    "[BIAS DESCRIPTION]: The class scores higher on grass than on gravel, whatever the class.\n"
    "[BIAS LABEL]: on grass\n[RELIANCE]:\n"
    "category: background; high: grass; low: gravel; scores: 0.9 vs 0.1"
)


def timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([MAIA, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def pct(flags: list[bool]) -> str:
    return f"{100 * sum(flags) / len(flags):.0f}% ({sum(flags)}/{len(flags)})" if flags else "–"


def mean(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.2f}" if values else "–"


def summary(records: list[dict], name: str) -> None:
    singles = [r for r in records if (r.get("ground_truth") or {}).get("parts") == 1]
    pairs = [r for r in records if ((r.get("ground_truth") or {}).get("parts") or 0) > 1]
    print(f"\n## {name}: {len(records)} models scored")
    for alpha in (0.9, 0.5):
        rs = [r["ground_truth"] for r in singles if r["ground_truth"].get("alpha") == alpha]
        print(
            f"single, alpha {alpha}: category {pct([t['category_right'] for t in rs])}, "
            f"value {pct([t['value_right'] for t in rs])}"
        )
    strong = [r for r in records if (r.get("ground_truth") or {}).get("alpha") == 0.9]
    print(
        f"every alpha 0.9 model (singles, AND, OR): category {pct([r['ground_truth']['category_right'] for r in strong])}"
    )
    for mode in ("and", "or"):
        ts = [r["ground_truth"] for r in pairs if r["ground_truth"].get("mode") == mode]
        found = [t["parts_found"] for t in ts]
        print(
            f"{mode.upper()}: both {pct([f == 2 for f in found])}, one {pct([f == 1 for f in found])}, "
            f"none {pct([f == 0 for f in found])}, combined right {pct([t['combine_right'] for t in ts])}"
        )
    by_cat: dict[str, list[bool]] = {}
    for r in singles:
        t = r["ground_truth"]
        if t.get("alpha") == 0.9:
            by_cat.setdefault(str(t["category"]), []).append(bool(t["category_right"]))
    print(
        "by category (alpha 0.9): "
        + ", ".join(f"{c} {sum(v)}/{len(v)}" for c, v in sorted(by_cat.items()))
    )
    predictive = [(r.get("predictive") or {}).get("predictiveness") for r in records]
    ceiling = [(r.get("ground_truth") or {}).get("ceiling") for r in records]
    print(f"predictiveness {mean(predictive)} (ceiling, the truth's own: {mean(ceiling)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", default="output")
    p.add_argument("--reflect", type=int, action="append")
    p.add_argument("-j", "--concurrency", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", type=Path, help="keep the results here (default: a temporary folder)")
    args = p.parse_args()
    reflect = args.reflect or [0, 2]
    root = args.keep or Path(tempfile.mkdtemp(prefix="maia-bench-tasks-"))
    bench = root / "bench"
    reflect_args = [a for n in reflect for a in ("--reflect", str(n))]
    bench_s = timed(
        "bench", "--task", "reliance", "--backbone", "baseline", "--units", args.units,
        *reflect_args, "-j", str(args.concurrency), "--results", str(bench), "--device", args.device,
    )  # fmt: skip
    constant = root / "constant.json"
    constant.write_text(json.dumps([CONSTANT]))
    const_results = root / "constant"
    timed(
        "run", "-t", "reliance:offline", "-u", args.units, "--task", "reliance",
        "-b", f"replay:{constant}", "--results", str(const_results), "--reporter", "json",
        "--device", args.device,
    )  # fmt: skip
    timed("eval", str(const_results), "--device", args.device, "--out", str(root / "constant-eval"))

    def records(folder: Path) -> list[dict]:
        return [json.loads(f.read_text()) for f in sorted(folder.rglob("eval.json"))]

    print(
        f"# maia bench --task reliance --backbone baseline {' '.join(reflect_args)}, -j {args.concurrency}, {args.device}"
    )
    print(f"whole command (investigations, eval, table, plots): {bench_s:.0f} s")
    for n in reflect:
        folder = bench / f"reflect-{n}" if reflect != [0] else bench
        walls = [
            json.loads(f.read_text())["wall_time_s"]
            for f in folder.rglob("result.json")
            if json.loads(f.read_text()).get("status") == "completed"
        ]
        if walls:
            print(
                f"reflect {n}: {len(walls)} models, investigation per model: mean {statistics.mean(walls):.1f} s, "
                f"median {statistics.median(walls):.1f} s, max {max(walls):.1f} s"
            )
        summary(records(folder), f"baseline, reflect {n}")
        kept = [json.loads(f.read_text()).get("reflection") for f in folder.rglob("result.json")]
        kept = [k for k in kept if k]
        if kept:
            redone = sum(len(k["cycles"]) > 1 for k in kept)
            changed = sum(k["kept"] != 1 for k in kept)
            print(
                f"reflection: {redone} of {len(kept)} models investigated again, {changed} kept a later answer"
            )
    summary(records(const_results), "constant answer (background: grass), replayed")
    print(f"\nresults kept in {root}")


if __name__ == "__main__":
    main()
