"""Evaluation releases: noised aggregate counts, never predictions or per-patient scores.

A model's test-set performance leaves the hospital as histograms of predicted
probabilities (and, for several classes, a confusion matrix). Each patient adds 1 to a
fixed number of cells, so adding or removing one patient moves the release by a known L2
distance (its sensitivity); Gaussian noise of `noise_multiplier` times that distance on
every cell is the Gaussian mechanism, accounted as `release_event(noise_multiplier)`.
Every metric the scientist computes from the noised counts is post-processing and costs
nothing more. Bins are fixed in advance (never data-dependent) so the layout itself
reveals nothing.
"""

from __future__ import annotations

import math

import numpy as np

from datasites.accounting import DpEvent

# Ten bins: coarse enough that each cell holds many patients relative to the Gaussian
# noise a small evaluation budget buys, fine enough for a useful ROC curve.
N_BINS = 10
BIN_EDGES = np.linspace(0, 1, N_BINS + 1)

Counts = np.ndarray | dict[str, np.ndarray]


def release_event(noise_multiplier: float) -> DpEvent:
    """The ledger event of one `noisy` release: the Gaussian mechanism, applied once."""
    return DpEvent(noise_multiplier, 1.0, 1)


def _bins(scores: np.ndarray) -> np.ndarray:
    """Bin k holds [edge k, edge k+1); 1.0 falls in the last bin."""
    index = np.searchsorted(BIN_EDGES, scores, side="right") - 1
    return np.clip(index, 0, N_BINS - 1)


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


def binary_counts(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(2, N_BINS) int64: histograms of P(positive) for negatives (row 0) and positives (row 1).

    One patient is one cell: L2 sensitivity 1.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    _check_scores("scores", scores)
    labels = _check_labels(np.asarray(labels).reshape(-1), scores.size, 2)
    flat = labels * N_BINS + _bins(scores)
    return np.bincount(flat, minlength=2 * N_BINS).reshape(2, N_BINS)


def multiclass_counts(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The confusion matrix (C, C) [true, argmax] and one-vs-rest histograms (C, 2, N_BINS).

    `ovr[c]` histograms probs[:, c] for patients not of class c (row 0) and of class c
    (row 1). One patient is 1 + C cells: L2 sensitivity sqrt(1 + C).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, classes >= 2), found {probs.shape}.")
    _check_scores("probs", probs)
    n, classes = probs.shape
    labels = _check_labels(np.asarray(labels).reshape(-1), n, classes)
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(labels * classes + predicted, minlength=classes * classes)
    member = labels[:, None] == np.arange(classes)[None, :]  # (n, C)
    cell = (np.arange(classes)[None, :] * 2 + member) * N_BINS + _bins(probs)
    ovr = np.bincount(cell.reshape(-1), minlength=classes * 2 * N_BINS)
    return {
        "confusion": confusion.reshape(classes, classes),
        "ovr": ovr.reshape(classes, 2, N_BINS),
    }


def sensitivity(counts: Counts) -> float:
    """L2 sensitivity of a whole release under adding or removing one patient."""
    if isinstance(counts, dict):
        confusion = np.asarray(counts["confusion"])
        classes = confusion.shape[0]
        if confusion.shape != (classes, classes) or np.shape(counts["ovr"]) != (
            classes, 2, N_BINS,
        ):  # fmt: skip
            raise ValueError("multiclass counts must hold confusion (C, C) and ovr (C, 2, bins).")
        return math.sqrt(1 + classes)
    if np.shape(counts) != (2, N_BINS):
        raise ValueError(f"binary counts must have shape (2, {N_BINS}), found {np.shape(counts)}.")
    return 1.0


def noisy(counts: Counts, *, noise_multiplier: float, rng: np.random.Generator) -> Counts:
    """The Gaussian mechanism: N(0, (noise_multiplier * sensitivity)^2) on every cell.

    Charge it to the ledger as `release_event(noise_multiplier)` before it leaves. `rng`
    must be unpredictable to the scientist (seeded from the OS), or the noise can be removed.
    """
    std = release_event(noise_multiplier).noise_multiplier * sensitivity(counts)

    def add(cells: np.ndarray) -> np.ndarray:
        cells = np.asarray(cells, dtype=np.float64)
        return cells + rng.normal(0.0, std, size=cells.shape)

    if isinstance(counts, dict):
        return {key: add(counts[key]) for key in ("confusion", "ovr")}
    return add(counts)
