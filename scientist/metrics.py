"""Model metrics from the hospitals' noised, summed evaluation counts.

Hospitals release histograms of predicted probabilities over fixed bins (and a confusion
matrix for several classes), each cell noised; the scientist sums them across hospitals and
computes everything here. That is post-processing of DP releases, so it costs no privacy.
Noise can make cells negative. For proportions (accuracy, precision, recall, F1) cells are
summed as they are (sums of noise are unbiased) and only the final value is clipped into
[0, 1]; for the rank metrics (AUROC, AUPRC) cells are clipped at 0 first, which is
bounded. Within a bin all scores are tied, so AUROC is the Mann-Whitney statistic with
ties counted 1/2 (the trapezoid under the ROC over bin thresholds) and AUPRC is average
precision over bin thresholds. Undefined metrics (no positives, nothing predicted, a noised
total that is not positive) are nan.

Bins are taken as equal-width on [0, 1] from the histogram's shape unless `edges` is given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NAN = float("nan")


def _ratio(num: float, den: float) -> float:
    """A proportion from noised sums, kept in [0, 1]; nan when the denominator is not > 0.

    Noised cells are summed as they are, negative ones included: sums of zero-mean noise
    are unbiased, whereas clipping each cell at zero adds about 0.4 sigma per empty cell
    (72 off-diagonal cells of a 9-class confusion matrix) and pulled accuracy down by a
    third in a real study. Only the final proportion is clipped.
    """
    # min/max on the scalar: np.clip of a scalar costs most of a metric's time; nan stays nan.
    return float(min(max(num / den, 0.0), 1.0)) if den > 0 else NAN


def _ranked(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells clipped at zero for the rank metrics (AUROC, AUPRC).

    Those are ratios of products of cumulative sums; with a noise-dominated row (a few
    hundred positives at epsilon 1) raw cells make them swing far outside [0, 1], where
    clipping is bounded and only mildly biased. Sums (accuracy, recall...) stay raw.
    """
    return np.maximum(negatives, 0.0), np.maximum(positives, 0.0)


def _hist(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != 2:
        raise ValueError(f"a binary histogram has shape (2, bins), found {hist.shape}.")
    return hist[0], hist[1]


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(tie), from binned counts."""
    if positives.sum() <= 0 or negatives.sum() <= 0:
        return NAN
    below = np.concatenate(([0.0], np.cumsum(negatives)[:-1]))
    wins = float(np.sum(positives * (below + 0.5 * negatives)))
    return _ratio(wins, positives.sum() * negatives.sum())


def _average_precision(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Sum over thresholds, from the top bin down, of (recall gained) x precision there."""
    tp = np.cumsum(positives[::-1])
    fp = np.cumsum(negatives[::-1])
    total = tp[-1] if tp.size else 0.0
    if total <= 0:
        return NAN
    gained = np.diff(np.concatenate(([0.0], tp))) / total
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return float(min(max(np.sum(gained * np.clip(precision, 0.0, 1.0)), 0.0), 1.0))


def _bin_starts(bins: int, edges: np.ndarray | None) -> np.ndarray:
    if edges is None:
        return np.linspace(0.0, 1.0, bins + 1)[:-1]
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape != (bins + 1,):
        raise ValueError(f"edges must have {bins + 1} values for {bins} bins, found {edges.shape}.")
    return edges[:-1]


def binary_metrics(
    hist: np.ndarray, *, edges: np.ndarray | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """auroc, auprc, and accuracy/precision/recall/f1 predicting positive from `threshold`.

    `hist` is (2, bins): row 0 the negatives' histogram of P(positive), row 1 the
    positives'. A bin is predicted positive when its lower edge is at or above `threshold`.
    """
    negatives, positives = _hist(hist)
    called = _bin_starts(negatives.size, edges) >= threshold
    tp, fp = positives[called].sum(), negatives[called].sum()
    fn, tn = positives[~called].sum(), negatives[~called].sum()
    n = tp + fp + fn + tn
    return {
        "auroc": _auroc(*_ranked(negatives, positives)),
        "auprc": _average_precision(*_ranked(negatives, positives)),
        "accuracy": _ratio(tp + tn, n),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "positives": float(tp + fn),
        "n": float(n),
    }


def _mean_defined(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else NAN


def multiclass_metrics(confusion: np.ndarray, ovr: np.ndarray) -> dict[str, Any]:
    """accuracy, macro F1, macro one-vs-rest AUROC, per-class recall and n.

    `confusion` is (C, C) [true, predicted]; `ovr` is (C, 2, bins), per class c the
    histograms of P(c) for other classes (row 0) and class c (row 1). Macro averages skip
    classes where the metric is undefined (a class absent and never predicted; a class with
    no examples for AUROC).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    ovr = np.asarray(ovr, dtype=np.float64)
    classes = confusion.shape[0]
    if confusion.shape != (classes, classes) or ovr.ndim != 3 or ovr.shape[:2] != (classes, 2):
        raise ValueError(
            f"expected confusion (C, C) and ovr (C, 2, bins), found {confusion.shape} "
            f"and {ovr.shape}."
        )
    tp = np.diag(confusion)
    actual, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    f1 = [_ratio(2 * tp[c], actual[c] + predicted[c]) for c in range(classes)]
    return {
        "accuracy": _ratio(tp.sum(), confusion.sum()),
        "macro_f1": _mean_defined(f1),
        "auroc": _mean_defined([_auroc(*_ranked(*_hist(ovr[c]))) for c in range(classes)]),
        "per_class_recall": [_ratio(tp[c], actual[c]) for c in range(classes)],
        "n": float(confusion.sum()),
    }
