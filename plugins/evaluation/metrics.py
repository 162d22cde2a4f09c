"""Scores for a unit's label: predictive (CoSy/MAIA) and detection (NeuronEval), numpy only.

Predictive scores compare the unit's activations on images made to show the label
(``pos``) with those on images made to avoid it (``neg``):

- ``auc``: the probability that a positive image out-scores a negative one (ties count half),
  i.e. ROC AUC, Mann-Whitney U / (n_pos n_neg). 1 = perfectly separated, 0.5 = no better than
  chance, 0 = reversed. CoSy's headline score.
- ``mad``: CoSy's mean activation difference, ``(mean(pos) - mean(neg)) / std(neg)`` with the
  sample standard deviation (``ddof=1``, as ``torch.Tensor.std`` in CoSy's code): how many
  control standard deviations the positives sit above the controls.
- ``mann_whitney_p``: one-sided p-value that positives score higher than negatives.

Detection scores compare, over a probe set of images, whether the unit fires with whether the
ground-truth concept is present. NeuronEval (Oikarinen et al., ICML 2025) found that F1, IoU,
AUPRC, Pearson correlation and cosine similarity pass both its sanity checks (missing and
extra labels), unlike recall or AUC; so these are the ones offered.

Degenerate inputs never raise: a score that is undefined for them is ``nan`` (documented per
function). Any NaN among the inputs makes the score NaN too: a broken activation should show
up, not be silently dropped. The ``*_scores`` dicts, meant for JSON, hold ``None`` instead of
NaN, so ``eval.json`` stays strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

NAN = float("nan")
ArrayLike = Sequence[float] | np.ndarray


def _vector(x: Any, dtype: Any = float) -> np.ndarray:
    return np.asarray(x, dtype=dtype).reshape(-1)


def _pair(a: Any, b: Any, dtype: Any = float) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(a, dtype), _vector(b, dtype)
    if a.shape != b.shape:
        raise ValueError(f"the two inputs differ in length: {a.shape[0]} and {b.shape[0]}")
    return a, b


def _ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks from 1 with ties given their average rank; and the size of each tie group."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # A new group starts wherever the sorted value changes.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sizes = np.diff(np.r_[starts, xs.size])
    average = starts + (sizes + 1) / 2.0  # mean of ranks start+1 .. start+size
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes


def _u_statistic(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray]:
    ranks, ties = _ranks(np.concatenate([pos, neg]))
    return float(ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0), ties


def auc(pos: ArrayLike, neg: ArrayLike) -> float:
    """ROC AUC that ``pos`` scores above ``neg``: U / (n_pos n_neg), ties counting half.

    NaN when either side is empty or holds a NaN. Equals sklearn's
    ``roc_auc_score([1]*n_pos + [0]*n_neg, pos + neg)``.
    """
    p, n = _vector(pos), _vector(neg)
    if p.size == 0 or n.size == 0 or np.isnan(p).any() or np.isnan(n).any():
        return NAN
    u, _ = _u_statistic(p, n)
    return u / (p.size * n.size)


def mad(pos: ArrayLike, neg: ArrayLike) -> float:
    """CoSy's normalised mean difference: ``(mean(pos) - mean(neg)) / std(neg, ddof=1)``.

    NaN when ``pos`` is empty, when ``neg`` has fewer than two values (no sample standard
    deviation), or when every negative is the same (std 0: the difference cannot be put in
    units of the controls' spread). CoSy's code divides by 1 in that last case instead, which
    mixes raw and normalised numbers in one average; we leave such units out of MAD's mean
    (AUC still scores them). Synthetic neurons often score exactly 0 on every control image, so
    expect few MADs there.
    """
    p, n = _vector(pos), _vector(neg)
    if p.size == 0 or n.size < 2:
        return NAN
    std = float(np.std(n, ddof=1))
    if not std > 0:  # also catches a NaN std
        return NAN
    return float((p.mean() - n.mean()) / std)


def mann_whitney_p(pos: ArrayLike, neg: ArrayLike) -> float:
    """One-sided Mann-Whitney p-value for "positives score higher than negatives".

    The normal approximation of U with the tie correction and a continuity correction of 0.5,
    which is what ``scipy.stats.mannwhitneyu(pos, neg, alternative="greater",
    method="asymptotic")`` computes. With 7 prompts a side (MAIA's default) it is an
    approximation: the exact p of a perfect separation is 1/3432 = 0.00029, this gives 0.0010.
    NaN when a side is empty or holds a NaN; 1.0 when every value is the same (no evidence).
    """
    p, n = _vector(pos), _vector(neg)
    if p.size == 0 or n.size == 0 or np.isnan(p).any() or np.isnan(n).any():
        return NAN
    u, ties = _u_statistic(p, n)
    n1, n2 = p.size, n.size
    total = n1 + n2
    tie_term = float((ties.astype(float) ** 3 - ties).sum())
    variance = n1 * n2 / 12.0 * ((total + 1) - tie_term / (total * (total - 1)))
    if not variance > 0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))  # the standard normal's upper tail


def _booleans(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Both as booleans (nonzero = true); None when either holds a NaN."""
    p, t = _pair(pred, truth, dtype=float)
    if np.isnan(p).any() or np.isnan(t).any():
        return None
    return p != 0, t != 0


def f1(pred: Any, truth: Any) -> float:
    """F1 of the unit firing (``pred``) against the concept being present (``truth``).

    ``2 TP / (2 TP + FP + FN)``. NaN when ``truth`` has no positive: with nothing to detect the
    score says nothing about the label (sklearn returns 0 or its ``zero_division``).
    """
    pair = _booleans(pred, truth)
    if pair is None or not pair[1].any():
        return NAN
    p, t = pair
    tp = float((p & t).sum())
    return 2 * tp / (2 * tp + float((p & ~t).sum()) + float((~p & t).sum()))


def iou(pred: Any, truth: Any) -> float:
    """Jaccard index ``|pred & truth| / |pred | truth|``, as NetDissect scores a unit's mask.

    NaN when ``truth`` has no positive (as for ``f1``).
    """
    pair = _booleans(pred, truth)
    if pair is None or not pair[1].any():
        return NAN
    p, t = pair
    return float((p & t).sum()) / float((p | t).sum())


def auprc(scores: ArrayLike, truth: Any) -> float:
    """Average precision of ranking by ``scores``, as sklearn's ``average_precision_score``.

    ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, from the highest down;
    tied scores enter together. Threshold-free, so it needs no firing threshold. NaN when
    ``truth`` has no positive or ``scores`` holds a NaN.
    """
    s, t = _pair(scores, truth, dtype=float)
    t = t != 0
    if not t.any() or np.isnan(s).any():
        return NAN
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    # The last index of each group of equal scores: the points of the precision-recall curve.
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tp = np.cumsum(t)[ends]
    precision = tp / (ends + 1.0)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation. NaN with fewer than two values, or when either vector is constant."""
    x, y = _pair(a, b)
    if x.size < 2:
        return NAN
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if not denominator > 0:
        return NAN
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity (uncentred). NaN when either vector is empty or all zeros."""
    x, y = _pair(a, b)
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if not denominator > 0:
        return NAN
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _mean(x: np.ndarray) -> float | None:
    return _json_number(float(x.mean())) if x.size else None


def predictive_scores(pos_acts: ArrayLike, neg_acts: ArrayLike) -> dict[str, Any]:
    """The predictive evaluation of one unit, JSON-ready (``None`` where a score is undefined).

    Keys: ``mean_pos``, ``mean_neg``, ``auc``, ``mad``, ``p_value`` (one-sided Mann-Whitney),
    ``n_pos``, ``n_neg``.
    """
    p, n = _vector(pos_acts), _vector(neg_acts)
    return {
        "mean_pos": _mean(p),
        "mean_neg": _mean(n),
        "auc": _json_number(auc(p, n)),
        "mad": _json_number(mad(p, n)),
        "p_value": _json_number(mann_whitney_p(p, n)),
        "n_pos": int(p.size),
        "n_neg": int(n.size),
    }


def detection_scores(acts: ArrayLike, presence: Any, fire_threshold: float = 0.0) -> dict[str, Any]:
    """How well the unit's firing tracks the concept's presence over a probe set, JSON-ready.

    The unit fires on an image when its activation is above ``fire_threshold`` (0: synthetic
    neurons are exactly 0 without their concept). F1 and IoU score that binary firing; AUPRC
    and Pearson the raw activations, so they need no threshold. Keys: ``f1``, ``iou``,
    ``auprc``, ``pearson``, ``n``, ``n_present``, ``n_fired``, ``fire_threshold``; ``None``
    where a score is undefined (no image with the concept, constant activations).
    """
    a, t = _pair(acts, presence, dtype=float)
    present = t != 0
    fired = a > fire_threshold
    broken = bool(np.isnan(a).any())  # a NaN activation is neither firing nor silent
    return {
        "f1": None if broken else _json_number(f1(fired, present)),
        "iou": None if broken else _json_number(iou(fired, present)),
        "auprc": _json_number(auprc(a, present)),
        "pearson": _json_number(pearson(a, present.astype(float))),
        "n": int(a.size),
        "n_present": int(present.sum()),
        "n_fired": int(fired.sum()),
        "fire_threshold": float(fire_threshold),
    }
