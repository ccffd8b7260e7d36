"""Exact scores the benchmarks share: what a model really reached, without any noise.

Imported by name from the benchmark scripts (their folder is on sys.path when they run, and
`tests.conftest.load_benchmark` puts it there for the tests that read them).
"""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC: (rank sum of positives - n+(n+ + 1)/2) / (n+ n-), ties averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(labels) == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
