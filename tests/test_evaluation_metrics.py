"""Evaluation metrics (checked by hand and against sklearn, scipy, numpy) and the summary table."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from maia_plugins.evaluation import metrics as m
from maia_plugins.evaluation.summary import COLUMNS, display_rows, rich_table, summarize, write_csv

SEEDS = range(6)


def random_case(seed: int, n: int | None = None):
    """Scores with ties (rounded) and a truth with at least one positive and one negative."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(5, 60))
    truth = rng.random(n) < rng.uniform(0.2, 0.6)
    truth[0], truth[1] = True, False
    scores = np.round(rng.normal(size=n) + truth * rng.uniform(0, 2), 1)
    pred = rng.random(n) < 0.5
    return scores, truth, pred


# -- predictive ------------------------------------------------------------------------------


def test_auc_separated_identical_reversed_and_ties():
    assert m.auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert m.auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert m.auc([1, 2, 3], [1, 2, 3]) == 0.5
    assert m.auc([7] * 4, [7] * 3) == 0.5
    # 2 beats 1 (1), 1 ties 1 (1/2): (1 + 0.5) / 2
    assert m.auc([1, 2], [1]) == 0.75


def test_auc_and_p_value_undefined_give_nan():
    for pos, neg in (([], [1.0]), ([1.0], []), ([], []), ([1.0, math.nan], [0.0])):
        assert math.isnan(m.auc(pos, neg))
        assert math.isnan(m.mann_whitney_p(pos, neg))


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_agrees_with_sklearn(seed):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    scores, truth, _ = random_case(seed)
    assert m.auc(scores[truth], scores[~truth]) == pytest.approx(
        roc_auc_score(truth, scores), abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_p_value_is_scipys_normal_approximation(seed):
    stats = pytest.importorskip("scipy.stats")
    scores, truth, _ = random_case(seed)
    expected = stats.mannwhitneyu(
        scores[truth], scores[~truth], alternative="greater", method="asymptotic"
    )
    assert m.mann_whitney_p(scores[truth], scores[~truth]) == pytest.approx(
        expected.pvalue, rel=1e-9
    )


def test_p_value_by_hand():
    # 7 above 7, no ties: U = 49, mean 24.5, variance 7*7*15/12, continuity 0.5.
    z = (49 - 24.5 - 0.5) / math.sqrt(7 * 7 * 15 / 12)
    assert m.mann_whitney_p(range(7, 14), range(7)) == pytest.approx(
        0.5 * math.erfc(z / math.sqrt(2))
    )
    assert m.mann_whitney_p(range(7, 14), range(7)) < 0.002
    assert m.mann_whitney_p(range(7), range(7, 14)) > 0.99  # one-sided: reversed is no evidence
    assert m.mann_whitney_p([2.0] * 5, [2.0] * 5) == 1.0  # all tied: no evidence at all


def test_mad_by_hand_and_degenerate():
    # mean pos 3, mean neg 1, sample std of [0, 1, 2] is 1.
    assert m.mad([2, 4], [0, 1, 2]) == pytest.approx(2.0)
    assert m.mad([3, 3], [1, 3]) == pytest.approx(1 / math.sqrt(2))
    assert m.mad([0], [1, 3]) == pytest.approx(-2 / math.sqrt(2))
    assert math.isnan(m.mad([1, 2], [0, 0, 0]))  # controls do not vary
    assert math.isnan(m.mad([1, 2], [0.5]))  # no sample std from one value
    assert math.isnan(m.mad([], [0, 1]))


def test_predictive_scores_are_strict_json():
    out = m.predictive_scores([0.9, 0.8, 0.7], [0.0, 0.0, 0.0])
    assert out["auc"] == 1.0 and out["mean_pos"] == pytest.approx(0.8) and out["mean_neg"] == 0.0
    assert out["mad"] is None  # std of the controls is 0
    assert 0 < out["p_value"] < 0.05
    assert (out["n_pos"], out["n_neg"]) == (3, 3)
    json.dumps(out, allow_nan=False)
    empty = m.predictive_scores([], [])
    assert empty == {
        "mean_pos": None,
        "mean_neg": None,
        "auc": None,
        "mad": None,
        "p_value": None,
        "n_pos": 0,
        "n_neg": 0,
    }


# -- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_iou_auprc_agree_with_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    average_precision_score, f1_score = skm.average_precision_score, skm.f1_score
    jaccard_score = skm.jaccard_score
    scores, truth, pred = random_case(seed)
    assert m.f1(pred, truth) == pytest.approx(f1_score(truth, pred), abs=1e-12)
    assert m.iou(pred, truth) == pytest.approx(jaccard_score(truth, pred), abs=1e-12)
    assert m.auprc(scores, truth) == pytest.approx(
        average_precision_score(truth, scores), abs=1e-12
    )
    # All tied scores: AP is the share of positives.
    assert m.auprc(np.ones(truth.size), truth) == pytest.approx(
        average_precision_score(truth, np.ones(truth.size))
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_and_cosine_agree_with_numpy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert m.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert m.cosine(a, b) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-12)
    assert m.pearson(a, 3 * a + 1) == pytest.approx(1.0)


def test_detection_metrics_on_degenerate_inputs():
    nothing = [False] * 4
    assert math.isnan(m.f1([True, False, True, False], nothing))  # nothing to detect
    assert math.isnan(m.iou([True, False, True, False], nothing))
    assert math.isnan(m.auprc([0.1, 0.2, 0.3, 0.4], nothing))
    assert m.f1(nothing, [True, False, False, False]) == 0.0  # never fires: defined, and 0
    assert m.iou(nothing, [True, False, False, False]) == 0.0
    assert math.isnan(m.pearson([1, 1, 1], [0, 1, 2]))  # constant
    assert math.isnan(m.pearson([1], [2]))
    assert math.isnan(m.cosine([0, 0], [1, 2]))
    assert math.isnan(m.cosine([], []))
    assert math.isnan(m.auprc([0.1, math.nan], [True, False]))
    with pytest.raises(ValueError, match="differ in length"):
        m.f1([True], [True, False])


def test_detection_scores_by_hand():
    acts = [0.0, 0.9, 0.8, 0.0, 0.2]
    presence = [False, True, True, False, False]
    out = m.detection_scores(acts, presence)
    # Fires on 3 images (0.9, 0.8, 0.2), 2 of them right: F1 = 4/5, IoU = 2/3.
    assert out["f1"] == pytest.approx(0.8) and out["iou"] == pytest.approx(2 / 3)
    assert out["auprc"] == 1.0  # both positives ranked first
    assert out["pearson"] == pytest.approx(np.corrcoef(acts, presence)[0, 1])
    assert (out["n"], out["n_present"], out["n_fired"]) == (5, 2, 3)
    assert m.detection_scores(acts, presence, fire_threshold=0.5)["f1"] == 1.0
    none = m.detection_scores([0.1, 0.2], [False, False])
    assert none["f1"] is None and none["auprc"] is None and none["pearson"] is None
    json.dumps(none, allow_nan=False)


# -- the summary -----------------------------------------------------------------------------


def unit(
    backbone,
    target,
    index,
    pos=None,
    neg=None,
    *,
    status="completed",
    rounds=3,
    cost=None,
    truth=None,
):
    predictive = None
    if pos is not None:
        predictive = {
            "prompts": "template",
            "n": len(pos),
            "positive": pos,
            "negative": neg,
            **m.predictive_scores(pos, neg),
        }
    return {
        "backbone": backbone, "target": target, "layer": "mono", "unit": index, "label": "zebra",
        "description": "stripes", "status": status, "rounds": rounds, "cost_usd": cost,
        "tools_used": {"text2image": 1}, "predictive": predictive, "ground_truth": truth,
    }  # fmt: skip


def truth(exact, similarity, **detection):
    return {
        "mode": "mono",
        "concepts": ["zebra"],
        "matched": ["zebra"] if exact else [],
        "exact": exact,
        "similarity": similarity,
        "detection": detection,
    }


SYN, RN = "synthetic:offline", "timm:resnet152"


def hand_records():
    return [
        unit("A", SYN, 0, [1.0, 1.0, 1.0], [0.0, 0.0], rounds=3, cost=0.1, truth=truth(True, 0.9, f1=1.0, iou=1.0, auprc=1.0)),
        unit("A", SYN, 1, [0.5], [0.5, 1.5], rounds=5, truth=truth(False, 0.5, f1=None, iou=0.5, auprc=0.8)),
        unit("A", RN, 0, [4.0, 2.0], [1.0, 1.0, 1.0], rounds=10, cost=0.25),
        unit("A", RN, 1, status="failed", rounds=2, cost=0.05),
        unit("B", SYN, 0, [0.2], [0.1], rounds=None, truth={"mode": "mono", "concepts": ["zebra"], "similarity": float("nan")}),
        unit("B", RN, 0, [3.0], [3.0], rounds=4),
    ]  # fmt: skip


def test_summarize_by_hand():
    rows = summarize(hand_records())
    assert [(r["backbone"], r["target"]) for r in rows] == [
        ("A", RN),
        ("B", RN),
        ("A", SYN),
        ("B", SYN),
    ]
    a_syn = rows[2]
    assert (a_syn["units"], a_syn["completed"], a_syn["scored"]) == (2, 2, 2)
    # AUC: unit 0 separates (1); unit 1: 0.5 ties 0.5 (1/2), loses to 1.5 (0): 1/4.
    assert a_syn["auc_mean"] == pytest.approx((1 + 0.25) / 2) and a_syn["auc_n"] == 2
    # MAD: unit 0's controls are constant (none); unit 1: (0.5 - 1) / std([0.5, 1.5], ddof=1).
    assert a_syn["mad_mean"] == pytest.approx(-0.5 / math.sqrt(0.5)) and a_syn["mad_n"] == 1
    # Pooled over images (MAIA) vs mean of per-unit means.
    assert a_syn["mean_pos_pooled"] == pytest.approx(3.5 / 4) and a_syn["images_pos"] == 4
    assert a_syn["mean_neg_pooled"] == pytest.approx(2.0 / 4) and a_syn["images_neg"] == 4
    assert a_syn["mean_pos_units"] == pytest.approx(0.75)
    assert a_syn["mean_neg_units"] == pytest.approx(0.5)
    assert a_syn["exact_pct"] == 50.0 and a_syn["exact_n"] == 2
    assert a_syn["similarity_mean"] == pytest.approx(0.7)
    assert (a_syn["f1_mean"], a_syn["f1_n"]) == (1.0, 1)  # the None is left out, and counted out
    assert a_syn["iou_mean"] == pytest.approx(0.75) and a_syn["auprc_mean"] == pytest.approx(0.9)
    assert a_syn["rounds_mean"] == 4.0 and a_syn["rounds_n"] == 2
    # One cost unknown: the sum of the known ones, and how many are known.
    assert (a_syn["cost_usd"], a_syn["cost_n"]) == (0.1, 1)

    a_rn = rows[0]
    assert (a_rn["units"], a_rn["completed"], a_rn["scored"]) == (2, 1, 1)
    assert a_rn["auc_mean"] == 1.0 and a_rn["mad_mean"] is None  # constant controls
    assert a_rn["exact_pct"] is None and a_rn["exact_n"] == 0 and a_rn["f1_mean"] is None
    assert a_rn["rounds_mean"] == 6.0
    assert a_rn["cost_usd"] == pytest.approx(0.3) and a_rn["cost_n"] == 2
    assert a_rn["significant_n"] == 1

    b_rn, b_syn = rows[1], rows[3]
    assert b_rn["auc_mean"] == 0.5 and b_rn["cost_usd"] is None and b_rn["significant_pct"] == 0.0
    assert b_syn["similarity_mean"] is None and b_syn["similarity_n"] == 0  # NaN is missing
    assert b_syn["exact_n"] == 0 and b_syn["rounds_mean"] is None and b_syn["rounds_n"] == 0


def test_summarize_tolerates_junk_and_json_round_trip():
    records = hand_records()
    assert summarize(json.loads(json.dumps(records))) == summarize(records)
    junk = [
        {
            "backbone": "C",
            "target": "x",
            "predictive": {"auc": "high", "positive": ["a", True, 1.0]},
            "rounds": True,
        },
        "not a record",
    ]
    (row,) = summarize(junk)
    assert row["auc_n"] == 0 and row["mean_pos_pooled"] == 1.0 and row["rounds_n"] == 0
    assert summarize([]) == []


def test_write_csv(tmp_path):
    rows = summarize(hand_records())
    path = write_csv(rows, tmp_path / "out" / "eval.csv")
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval.csv"]  # no temporary left
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        back = list(reader)
    assert len(back) == 4
    a_syn = back[2]
    assert (a_syn["backbone"], a_syn["target"]) == ("A", SYN)
    assert float(a_syn["auc_mean"]) == pytest.approx(0.625) and a_syn["auc_n"] == "2"
    assert back[0]["exact_pct"] == ""  # not available: an empty cell
    assert back[1]["cost_usd"] == ""


def test_rich_table_one_column_per_backbone_and_target():
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(rich_table(summarize(hand_records())))
    text = console.export_text()
    assert text.count(RN) == 2 and text.count(SYN) == 2
    auc_line = next(line for line in text.splitlines() if line.strip().startswith("AUC"))
    assert auc_line.split()[1:] == ["1.00", "0.50", "0.62", "1.00"]
    mad_line = next(line for line in text.splitlines() if line.strip().startswith("MAD"))
    assert mad_line.split()[1:] == ["–", "–", "-0.71", "(1)", "–"]
    assert "n/a" in text and "$0.10 (1 of 2 known)" in text


def test_display_leaves_out_empty_columns():
    headers, cells = display_rows(summarize(hand_records()))
    assert "Exact" in headers and "F1" in headers
    a_syn = dict(zip(headers, cells[2]))
    assert a_syn["Exact"] == "50%" and a_syn["F1"] == "1.00 (1)" and a_syn["MAD"] == "-0.71 (1)"
    assert a_syn["Pos / neg (pooled)"] == "0.88 / 0.50"
    assert a_syn["Pos / neg (unit means)"] == "0.75 / 0.50"
    no_truth = [r for r in hand_records() if r["target"] == RN]
    headers, _ = display_rows(summarize(no_truth))
    assert not {"Exact", "Similarity", "F1", "IoU", "AUPRC"} & set(headers)
    assert headers[:4] == ["Backbone", "Target", "Completed", "AUC"] and headers[-1] == "Cost"
