"""The evaluation release format: bin edges, the layout of the counts, their sensitivity.

A model's test-set performance leaves a hospital as histograms of predicted probabilities
(and, for several classes, a confusion matrix), never predictions or per-patient scores.
Each patient adds 1 to a fixed number of cells, so adding or removing one patient moves the
release by a known L2 distance (`sensitivity`); the hospital adds noise scaled to it
(`datasites.privacy.evaluation.noisy`) and the scientist reads metrics off the noised sums
(`scientist.metrics`). Both sides read this file, so they agree on the layout.

The bin edges are the scientist's choice per evaluation, made before the release from
public information (in practice: quantiles of the global model's predictions on the mocks),
so every bin holds many patients whatever the model's calibration. DP-SGD on a rare
outcome squeezes predictions into a narrow band (0.002-0.04 for 30-day readmission), where
fixed equal-width bins put everyone in one cell and make the AUROC 0.5. Edges only decide
which cell a patient adds 1 to, so any edges fixed before the release leave the sensitivity
and the privacy cost unchanged. Without edges, `default_edges` applies: fixed and evenly
spaced on the logit scale, where predicted probabilities spread out.
"""

from __future__ import annotations

import math

import numpy as np

# Default inner edges, evenly spaced on logit(p): every 2/3 over [-8, 2] for one outcome
# (rare outcomes sit low; logit 0 = the 0.5 threshold is an edge), every 1 over [-7, 7] for
# one-vs-rest scores of several classes. The end bins are open: 17 and 16 bins.
_DEFAULT_LOGITS = {"binary": np.linspace(-8, 2, 16), "multiclass": np.linspace(-7, 7, 15)}
MAX_BINS = 32  # more cells only add noise to the rank metrics

# Per-example loss is clipped to this bound before it is summed and released, so one
# patient changes the released sum by at most LOSS_BOUND.
LOSS_BOUND = 5.0
LOSS_STEPS = 1024  # a patient's clipped loss is released in steps of LOSS_BOUND / 1024
Counts = np.ndarray | dict[str, np.ndarray]


def default_edges(kind: str = "binary") -> np.ndarray:
    """Probability edges from 0 to 1, evenly spaced in logit between the ends."""
    inner = 1.0 / (1.0 + np.exp(-np.round(_DEFAULT_LOGITS[kind], 9)))
    return np.concatenate(([0.0], inner, [1.0]))


def check_edges(edges: object, classes: int | None = None) -> np.ndarray:
    """Validated float64 edges: (k + 1,) for one outcome or (classes, k + 1) per class.

    Each row starts at 0, ends at 1 and strictly increases, with 2 <= k <= MAX_BINS. A
    single row given for several classes applies to each of them. Messages name shapes and
    rules only; edges are the scientist's own input, never private.
    """
    try:
        array = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # 10**400 overflows a float
        raise ValueError("edges must be an array of numbers.") from None
    if classes is not None and array.ndim == 1:
        array = np.tile(array, (classes, 1))
    rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
    expected = 1 if classes is None else 2
    if array.ndim != expected or (classes is not None and array.shape[0] != classes):
        want = "(bins + 1,)" if classes is None else f"({classes}, bins + 1) or (bins + 1,)"
        raise ValueError(f"edges must have shape {want}, found {array.shape}.")
    if not 3 <= rows.shape[1] <= MAX_BINS + 1:
        raise ValueError(f"edges must define 2 to {MAX_BINS} bins, found {rows.shape[1] - 1}.")
    if not (
        np.all(np.isfinite(rows))
        and np.all(rows[:, 0] == 0)
        and np.all(rows[:, -1] == 1)
        and np.all(np.diff(rows, axis=1) > 0)
    ):
        raise ValueError("edges must start at 0, end at 1 and strictly increase.")
    return array


def _bins(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin k holds [edge k, edge k+1); 1.0 falls in the last bin."""
    index = np.searchsorted(edges, scores, side="right") - 1
    return np.clip(index, 0, edges.size - 2)


def _check_scores(name: str, scores: np.ndarray) -> None:
    if not np.all(np.isfinite(scores)) or scores.min(initial=0) < 0 or scores.max(initial=0) > 1:
        raise ValueError(f"{name} must be probabilities in [0, 1]; found values outside it.")


def _check_labels(labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), found {labels.shape}.")
    integral = np.issubdtype(labels.dtype, np.integer) or np.all(np.mod(labels, 1) == 0)
    if labels.size and not integral:
        raise ValueError("labels must be integers; found non-integer values.")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in 0..{classes - 1}; found values outside it.")
    return labels


def binary_counts(
    scores: np.ndarray, labels: np.ndarray, edges: np.ndarray | None = None
) -> np.ndarray:
    """(2, bins) int64: histograms of P(positive) for negatives (row 0) and positives (row 1).

    One patient is one cell: L2 sensitivity 1.
    """
    edges = default_edges("binary") if edges is None else check_edges(edges)
    bins = edges.size - 1
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    _check_scores("scores", scores)
    labels = _check_labels(np.asarray(labels).reshape(-1), scores.size, 2)
    flat = labels * bins + _bins(scores, edges)
    return np.bincount(flat, minlength=2 * bins).reshape(2, bins)


def multiclass_counts(
    probs: np.ndarray, labels: np.ndarray, edges: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The confusion matrix (C, C) [true, argmax] and one-vs-rest histograms (C, 2, bins).

    `ovr[c]` histograms probs[:, c] over `edges[c]` for patients not of class c (row 0) and
    of class c (row 1). One patient is 1 + C cells: L2 sensitivity sqrt(1 + C).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, classes >= 2), found {probs.shape}.")
    _check_scores("probs", probs)
    n, classes = probs.shape
    labels = _check_labels(np.asarray(labels).reshape(-1), n, classes)
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(labels * classes + predicted, minlength=classes * classes)
    edges = check_edges(default_edges("multiclass") if edges is None else edges, classes)
    bins = edges.shape[1] - 1
    member = labels[:, None] == np.arange(classes)[None, :]  # (n, C)
    binned = np.stack([_bins(probs[:, c], edges[c]) for c in range(classes)], axis=1)
    cell = (np.arange(classes)[None, :] * 2 + member) * bins + binned
    ovr = np.bincount(cell.reshape(-1), minlength=classes * 2 * bins)
    return {
        "confusion": confusion.reshape(classes, classes),
        "ovr": ovr.reshape(classes, 2, bins),
    }


def sensitivity(counts: Counts) -> float:
    """L2 sensitivity of a whole release under adding or removing one patient."""
    if isinstance(counts, dict):
        confusion = np.asarray(counts["confusion"])
        classes = confusion.shape[0]
        ovr = np.shape(counts["ovr"])
        if confusion.shape != (classes, classes) or len(ovr) != 3 or ovr[:2] != (classes, 2):
            raise ValueError("multiclass counts must hold confusion (C, C) and ovr (C, 2, bins).")
        return math.sqrt(1 + classes)
    if len(np.shape(counts)) != 2 or np.shape(counts)[0] != 2:
        raise ValueError(f"binary counts must have shape (2, bins), found {np.shape(counts)}.")
    return 1.0
