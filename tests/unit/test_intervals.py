"""95% intervals of the metrics from the published noise: they cover the noiseless metric
about 95% of the time, and the scientist reads them (and chance) on every round line."""

from __future__ import annotations

import numpy as np
import pytest

from scientist.__main__ import round_line
from scientist.intervals import binary_intervals, multiclass_intervals, spans_chance
from scientist.metrics import binary_metrics, multiclass_metrics

BINS = 16


def ehr_counts(positives: float, negatives: float, shift: float) -> np.ndarray:
    """A (2, bins) histogram whose positives sit `shift` x 3 bins above the negatives."""
    x = np.arange(BINS)
    neg = np.exp(-0.5 * ((x - 6) / 3) ** 2)
    pos = np.exp(-0.5 * ((x - 6 - 3 * shift) / 3) ** 2)
    return np.vstack([negatives * neg / neg.sum(), positives * pos / pos.sum()])


def pathmnist_counts(classes: int = 9, per_class: float = 1100.0, accuracy: float = 0.6):
    """A confusion matrix of the given accuracy, and one-vs-rest histograms per class."""
    off = per_class * (1 - accuracy) / (classes - 1)
    confusion = np.diag(np.full(classes, per_class * accuracy)) + off * (1 - np.eye(classes))
    x = np.arange(15)
    neg, pos = np.exp(-0.5 * ((x - 5) / 2.5) ** 2), np.exp(-0.5 * ((x - 8) / 2.5) ** 2)
    rest = per_class * (classes - 1)
    ovr = np.stack([np.vstack([rest * neg / neg.sum(), per_class * pos / pos.sum()])] * classes)
    return confusion, ovr


def coverage(truth: dict, trials: int, draw) -> dict[str, float]:
    hits: dict[str, int] = {}
    for _ in range(trials):
        intervals = draw()
        for key, (low, high) in intervals.items():
            hits[key] = hits.get(key, 0) + int(low <= truth[key] <= high)
    return {key: count / trials for key, count in hits.items()}


# 120 trials: a true 95% coverage lands in [0.88, 0.995] with probability above 0.998.
@pytest.mark.parametrize(
    ("positives", "negatives", "sd"),
    [(300, 2700, 21.0), (1000, 9000, 10.0)],
    ids=["demo scale, noise sd 21", "full scale, noise sd 10"],
)
def test_ehr_intervals_cover_the_noiseless_metric_95_percent_of_the_time(
    positives: float, negatives: float, sd: float
) -> None:
    rng = np.random.default_rng(11)
    hist = ehr_counts(positives, negatives, shift=0.5)
    edges = np.linspace(0, 1, BINS + 1)
    truth = binary_metrics(hist, edges=edges)

    def draw(noise_sd: float = sd) -> dict:
        noised = hist + rng.normal(0, sd, hist.shape)
        return binary_intervals(noised, noise_sd, edges=edges, draws=150)

    covered = coverage(truth, 120, draw)
    for key in ("auroc", "accuracy", "f1"):
        assert 0.88 <= covered[key] <= 0.995, (key, covered)
    # The same check fails an interval that understates the noise: its coverage is 0.3-0.45
    # here, and 24 trials see 20 or more hits of such a coverage with probability below 1e-4.
    assert coverage(truth, 24, lambda: draw(sd / 4))["auroc"] < 0.8


@pytest.mark.parametrize(
    ("per_class", "accuracy"),
    [(1100.0, 0.6), (280.0, 0.72)],
    ids=["full scale", "demo scale: off-diagonal cells below the noise"],
)
def test_pathmnist_intervals_cover_the_noiseless_metric(per_class: float, accuracy: float) -> None:
    rng = np.random.default_rng(12)
    confusion, ovr = pathmnist_counts(per_class=per_class, accuracy=accuracy)
    truth = multiclass_metrics(confusion, ovr)
    sd = 15.0

    def draw() -> dict:
        return multiclass_intervals(
            confusion + rng.normal(0, sd, confusion.shape),
            ovr + rng.normal(0, sd, ovr.shape),
            sd,
            draws=100,
        )

    covered = coverage(truth, 80, draw)
    # 80 trials: a true 95% coverage lands in [0.86, 1] with probability above 0.998.
    # At demo scale the macro AUROC's own estimator (cells clipped at zero) is biased by
    # more than its spread, and its interval falls short (benchmarks/README.md, intervals).
    keys = ("accuracy", "macro_f1", "auroc") if per_class > 1000 else ("accuracy", "macro_f1")
    for key in keys:
        assert covered[key] >= 0.86, (key, covered)


def test_a_proportions_interval_holds_its_released_value_when_most_cells_are_empty() -> None:
    """The demo's PathMNIST release: a 9 x 9 confusion matrix whose off-diagonal cells are
    smaller than the noise. Resampling around clipped cells once put the interval of an
    accuracy of 0.72 at 0.56-0.66; around the released cells it holds 0.72."""
    rng = np.random.default_rng(13)
    confusion, ovr = pathmnist_counts(per_class=280.0, accuracy=0.72)
    for _ in range(10):
        noised_confusion = confusion + rng.normal(0, 15.0, confusion.shape)
        noised_ovr = ovr + rng.normal(0, 15.0, ovr.shape)
        released = multiclass_metrics(noised_confusion, noised_ovr)
        intervals = multiclass_intervals(noised_confusion, noised_ovr, 15.0, draws=100)
        for key in ("accuracy", "macro_f1"):
            assert intervals[key][0] <= released[key] <= intervals[key][1], (key, intervals)


def test_intervals_hold_the_released_value_and_widen_with_the_noise() -> None:
    hist = ehr_counts(300, 2700, shift=0.5)
    edges = np.linspace(0, 1, BINS + 1)
    released = binary_metrics(hist, edges=edges)
    narrow = binary_intervals(hist, 2.0, edges=edges)
    wide = binary_intervals(hist, 40.0, edges=edges)
    for key in ("auroc", "accuracy"):
        assert narrow[key][0] <= released[key] <= narrow[key][1]
        assert wide[key][1] - wide[key][0] > 3 * (narrow[key][1] - narrow[key][0])


def test_round_line_shows_the_interval_and_says_when_it_reaches_chance() -> None:
    near_chance = {"auroc": 0.55, "intervals": {"auroc": [0.46, 0.64]}, "count_noise_std": 21}
    clear = {"auroc": 0.75, "intervals": {"auroc": [0.70, 0.80]}, "count_noise_std": 21}

    vague = round_line({"round": 6, "metrics": near_chance})
    sure = round_line({"round": 6, "metrics": clear})

    assert "auroc 0.550 (0.46-0.64) no better than chance within the noise" in vague
    assert "auroc 0.750 (0.70-0.80)" in sure and "chance" not in sure
    assert spans_chance("auroc", [0.46, 0.64]) and not spans_chance("accuracy", [0.1, 0.9])
