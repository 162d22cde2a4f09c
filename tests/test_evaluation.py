"""``maia eval`` and ``maia bench`` end to end: replayed and baseline results scored by prediction
and against ground truth, resumable, with an LLM evaluator behind the real SDK."""

from __future__ import annotations

import json

import pytest
from fake_providers import FakeProvider, reply

from conftest import FIXTURES, maia, write_replay
from maia_core.loop.run import RunConfig, run
from maia_plugins.evaluation.commands import run_eval

# A subset of synthetic:offline covering every mode, small enough for the suite: single
# concepts (objects and colours), ORs and an AND the survey finds. maia bench and
# benchmarks/bench_eval.py run all 61 (the search for ANDs that nothing drives alone included,
# which takes this CPU about 80 s more); their figures are in the README.
UNITS = "mono=0,12,24,36:or=0,4:and=4"


def exact_rates(records):
    by_mode: dict[str, list[bool]] = {}
    for r in records:
        by_mode.setdefault(r["layer"], []).append(bool(r["ground_truth"]["exact"]))
    everything = [x for v in by_mode.values() for x in v]
    return {m: sum(v) / len(v) for m, v in by_mode.items()}, sum(everything) / len(everything)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The baseline and a constant label on the same synthetic neurons, then maia eval."""
    root = tmp_path_factory.mktemp("bench")
    out = maia(
        "run",
        "--target",
        "synthetic:offline",
        "--units",
        UNITS,
        "--backbone",
        "baseline",
        "--results",
        str(root / "results"),
        "--device",
        "cpu",
        "--reporter",
        "json,html",
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr
    # maia bench in one command: the constant label's runs, then maia eval of both backbones.
    constant = write_replay(
        root / "constant.json", ["[DESCRIPTION]: a teapot, whatever the unit\n[LABEL]: teapot"]
    )
    out = maia(
        "bench",
        "--units",
        UNITS,
        "--backbone",
        f"replay:{constant}",
        "--results",
        str(root / "results"),
        "--device",
        "cpu",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(p.read_text()) for p in sorted((root / "results").rglob("eval.json"))]
    return root, records


def test_the_baseline_labels_synthetic_neurons_exactly(bench):
    _, records = bench
    baseline = [r for r in records if r["backbone"] == "baseline"]
    assert len(baseline) == 7
    per_mode, overall = exact_rates(baseline)
    assert per_mode["mono"] >= 0.9, per_mode
    assert overall >= 0.6, per_mode


def test_the_baseline_predicts_better_than_a_constant_label(bench):
    _, records = bench

    def mean_auc(name):
        aucs = [
            r["predictive"]["auc"]
            for r in records
            if r["backbone"].startswith(name) and r["predictive"]["auc"] is not None
        ]
        return sum(aucs) / len(aucs)

    assert mean_auc("baseline") > mean_auc("replay") + 0.2


def test_eval_writes_its_files_and_does_no_work_twice(bench):
    root, records = bench
    results = root / "results"
    evals = sorted(results.rglob("eval.json"))
    assert len(evals) == 14
    record = json.loads(evals[0].read_text())
    predictive = record["predictive"]
    assert predictive["prompts"] == "template" and predictive["text2image"] == "scenes"
    assert len(predictive["positive"]) == len(predictive["positive_prompts"]) == 7
    assert isinstance(predictive["seed"], int) and 0.0 <= predictive["auc"] <= 1.0
    assert record["ground_truth"]["concepts"] and "detection" in record["ground_truth"]
    for name in ("eval.csv", "eval.html", "plots/summary_panel.png"):
        assert (results / name).is_file(), name
    csv = (results / "eval.csv").read_text()
    assert "baseline" in csv and "synthetic:offline" in csv
    html = (results / "eval.html").read_text()
    assert "Content-Security-Policy" in html and "teapot" in html
    before = {p: p.stat().st_mtime_ns for p in evals}
    again = maia("eval", str(results), "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert "evaluating" not in again.stderr  # nothing scored again
    assert {p: p.stat().st_mtime_ns for p in evals} == before


def test_an_evaluator_backbone_writes_the_prompts_that_are_rendered(bench, tmp_path, monkeypatch):
    root, _ = bench
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    unit = next((root / "results" / "baseline").rglob("mono/0/result.json")).parent
    copy = tmp_path / "r" / "baseline" / "synthetic-offline" / "mono" / "0"
    copy.mkdir(parents=True)
    for name in ("result.json", "history.json"):
        (copy / name).write_text((unit / name).read_text())
    positives = ["1. a zebra on grass", "2. two zebras", "- a zebra close up"]
    negatives = ["a red teapot", "a blue bicycle", "a plain yellow background"]

    def answer(body):
        text = body["messages"][-1]["content"]
        lines = positives if "should NOT" not in text else negatives
        return reply("Here are the prompts:\n" + "\n".join(lines))

    with FakeProvider("openai", answer) as fp:
        records = run_eval(
            [tmp_path / "r"],
            evaluator="gpt-4o",
            evaluator_options=[f"base_url={fp.base_url}"],
            n=3,
            device="cpu",
            quiet=True,
        )
    [record] = records
    predictive = record["predictive"]
    assert predictive["prompts"] == "llm"
    assert predictive["positive_prompts"] == ["a zebra on grass", "two zebras", "a zebra close up"]
    assert predictive["negative_prompts"] == negatives
    assert len(predictive["positive"]) == 3 and len(predictive["negative"]) == 3
    # the zebra neuron fires on the zebra prompts it was given, not on the others
    assert min(predictive["positive"]) > 0.5 and max(predictive["negative"]) < 0.05
    assert predictive["evaluator_usage"]["input_tokens"] == 200
    assert (
        len(fp.requests) == 2 and "Label: zebra" in fp.requests[0].body["messages"][-1]["content"]
    )


def test_eval_of_units_without_ground_truth_and_bad_folders(tmp_path):
    turns = write_replay(tmp_path / "t.json", ["[DESCRIPTION]: zebras\n[LABEL]: zebra"])
    run(
        RunConfig(
            target="efficientnet_lite0",
            units="blocks.6=0",
            backbone=f"replay:{turns}",
            results=tmp_path / "r",
            reporters=["json"],
            device="cpu",
        )
    )
    [record] = run_eval([tmp_path / "r"], device="cpu", quiet=True)
    assert record["ground_truth"] is None and record["predictive"]["auc"] is not None
    out = maia("eval", str(tmp_path / "missing"))
    assert (
        out.returncode == 2
        and "does not exist" in out.stderr
        and len(out.stderr.strip().splitlines()) == 1
    )


def test_demo_notebook_runs(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    notebook = nbformat.read(FIXTURES.parent.parent / "demo.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
