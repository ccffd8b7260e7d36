"""95% intervals for metrics read off noised counts, by parametric resampling.

Every count a hospital releases carries Gaussian noise of a published standard deviation
(`count_noise_std` per summed cell). A metric computed from those counts is therefore a
noisy estimate of the metric on the noiseless counts; how noisy depends on the metric and
on the counts (a few hundred positives at epsilon 1 make AUROC swing by 0.1). Resampling
the noise around the released counts shows that spread without asking anything more of the
hospitals: it is post-processing of public values, so it costs no privacy.

Noise is resampled around the released counts for the proportions (accuracy, F1...), which
sum noised cells as they are. The rank metrics are resampled around the counts clipped at zero
(a count is never negative, and an empty bin then stays near empty). The interval is the
percentile bootstrap,
[q(0.025), q(0.975)] of the resampled metric. AUROC and AUPRC clip noised cells at zero
before they rank, which biases them by an amount that depends on the counts; resampling
adds that bias a second time, so their interval is the union of the percentile interval and
the basic one, [2 theta - q(0.975), 2 theta - q(0.025)] with theta the released value,
which reflects the bias back. Coverage of the noiseless metric is checked in
tests/unit/test_intervals.py and measured in benchmarks/README.md ("Intervals"); it falls
short only when the noise on a class's total is larger than the class itself. An interval
speaks of the noise alone: the test set's own sampling error is not in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from scientist.metrics import binary_metrics, multiclass_metrics

LEVEL = 0.95
RESAMPLES = 400
# What a metric would be for a model that knows nothing; an interval reaching it is said so.
CHANCE = {"auroc": 0.5}
# Metrics from clipped cells: their interval also reflects the resampling's bias back.
RANK_METRICS = frozenset({"auroc", "auprc"})
INTERVAL_KEYS = {
    "ehr": ("auroc", "auprc", "accuracy", "precision", "recall", "f1"),
    "pathmnist": ("accuracy", "macro_f1", "auroc"),
}


def resampled_intervals(
    metric: Callable[[np.random.Generator | None], dict[str, Any]],
    keys: tuple[str, ...],
    *,
    draws: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """{key: [low, high]} from `metric(None)` (the released counts) and `draws` calls of
    `metric(rng)` (the counts with fresh noise of the published sd added)."""
    released = metric(None)
    rng = np.random.default_rng(seed)
    samples = [metric(rng) for _ in range(draws)]
    out = {}
    alpha = (1.0 - LEVEL) / 2
    for key in keys:
        theta = released.get(key)
        values = np.array([s[key] for s in samples], dtype=np.float64)
        values = values[np.isfinite(values)]
        if theta is None or not math.isfinite(theta) or values.size < draws / 2:
            out[key] = [math.nan, math.nan]
            continue
        low, high = np.quantile(values, [alpha, 1.0 - alpha])
        if key in RANK_METRICS:  # both the percentile and the basic interval
            low, high = min(low, 2 * theta - high), max(high, 2 * theta - low)
        out[key] = [float(np.clip(low, 0.0, 1.0)), float(np.clip(high, 0.0, 1.0))]
    return out


def binary_intervals(
    hist: np.ndarray, noise_std: float, *, edges: np.ndarray | None = None, **kwargs: Any
) -> dict[str, list[float]]:
    """Intervals of `binary_metrics` for a (2, bins) histogram with noise sd `noise_std`."""
    hist = np.asarray(hist, dtype=np.float64)

    def metric(rng: np.random.Generator | None) -> dict[str, Any]:
        if rng is None:
            return binary_metrics(hist, edges=edges)
        noise = rng.normal(0.0, noise_std, hist.shape)
        return _merged(
            binary_metrics(hist + noise, edges=edges),
            binary_metrics(_clipped(hist) + noise, edges=edges),
        )

    return resampled_intervals(metric, INTERVAL_KEYS["ehr"], **kwargs)


def multiclass_intervals(
    confusion: np.ndarray, ovr: np.ndarray, noise_std: float, **kwargs: Any
) -> dict[str, list[float]]:
    """Intervals of `multiclass_metrics` for a confusion matrix and one-vs-rest histograms
    whose cells all carry noise of sd `noise_std`."""
    confusion = np.asarray(confusion, dtype=np.float64)
    ovr = np.asarray(ovr, dtype=np.float64)

    def metric(rng: np.random.Generator | None) -> dict[str, Any]:
        if rng is None:
            return multiclass_metrics(confusion, ovr)
        noise = rng.normal(0.0, noise_std, confusion.shape)
        confusion_noised = confusion + noise
        # The rank metric reads only the one-vs-rest histograms: from clipped counts.
        return _merged(
            multiclass_metrics(confusion_noised, ovr),
            multiclass_metrics(
                confusion_noised, _clipped(ovr) + rng.normal(0, noise_std, ovr.shape)
            ),
        )

    return resampled_intervals(metric, INTERVAL_KEYS["pathmnist"], **kwargs)


def spans_chance(key: str, interval: list[float] | tuple[float, float]) -> bool:
    """Whether the interval reaches what a model that knows nothing would score."""
    chance = CHANCE.get(key)
    low, high = interval
    return chance is not None and not (math.isnan(low) or math.isnan(high)) and low <= chance


def _clipped(counts: np.ndarray) -> np.ndarray:
    return np.maximum(counts, 0.0)  # np.clip's, several times faster on small arrays


def _merged(raw: dict[str, Any], clipped: dict[str, Any]) -> dict[str, Any]:
    """Proportions from the resample around the raw counts (they sum noised cells as they
    are, unbiased); rank metrics from the resample around the counts clipped at zero."""
    return {**raw, **{key: clipped[key] for key in RANK_METRICS if key in clipped}}
