"""Evaluation releases and the metrics computed from them, against direct computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from datasites.contract.release import (
    MAX_BINS,
    binary_counts,
    check_edges,
    default_edges,
    multiclass_counts,
    sensitivity,
)
from datasites.privacy.evaluation import noisy, release_event
from datasites.privacy.noise import DISCRETE_NOISE_FACTOR
from scientist.bins import DEFAULT_BINS, MIN_BINS, bins_for, quantile_edges
from scientist.metrics import binary_metrics, multiclass_metrics

REPO = Path(__file__).resolve().parent.parent


# -- direct references: per-example computations on scores quantised to the same bins -------


BINARY_EDGES, MULTI_EDGES = default_edges("binary"), default_edges("multiclass")
N_BINS = BINARY_EDGES.size - 1


def quantised(scores: np.ndarray, edges: np.ndarray = BINARY_EDGES) -> np.ndarray:
    return np.digitize(scores, edges[1:-1])  # bin index 0..bins-1, 1.0 in the last


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U / (P N) with average ranks for ties."""
    ranks, labels = rankdata(scores), np.asarray(labels, dtype=int)
    positives, negatives = labels.sum(), (1 - labels).sum()
    return (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    total, previous_recall, ap = labels.sum(), 0.0, 0.0
    for threshold in np.unique(scores)[::-1]:
        called = scores >= threshold
        tp = np.sum(called & (labels == 1))
        recall = tp / total
        ap += (recall - previous_recall) * tp / called.sum()
        previous_recall = recall
    return ap


def f1(truth: np.ndarray, called: np.ndarray) -> float:
    tp = np.sum(truth & called)
    return 2 * tp / (2 * tp + np.sum(~truth & called) + np.sum(truth & ~called))


def binary_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.where(labels == 1, rng.beta(4, 2, n), rng.beta(2, 4, n))
    scores[:6] = [0.0, 0.15, 0.5, 0.5, 0.95, 1.0]  # exact edges, where binning could slip
    return scores, labels


def multiclass_data(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


# -- exactness without noise -------------------------------------------------------------


def test_binary_metrics_equal_direct_computation() -> None:
    scores, labels = binary_data(3000)
    bins, truth, called = quantised(scores), labels == 1, scores >= 0.5

    metrics = binary_metrics(binary_counts(scores, labels), edges=BINARY_EDGES)

    assert metrics["auroc"] == pytest.approx(rank_auroc(bins, labels), abs=1e-12)
    assert metrics["auprc"] == pytest.approx(average_precision(bins, labels), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean(called == truth), abs=1e-12)
    assert metrics["precision"] == pytest.approx(np.sum(truth & called) / called.sum())
    assert metrics["recall"] == pytest.approx(np.sum(truth & called) / truth.sum())
    assert metrics["f1"] == pytest.approx(f1(truth, called))
    assert (metrics["positives"], metrics["n"]) == (truth.sum(), 3000)


def test_multiclass_metrics_equal_direct_computation() -> None:
    classes = 4
    probs, labels = multiclass_data(2000, classes)
    predicted = probs.argmax(axis=1)

    counts = multiclass_counts(probs, labels)
    metrics = multiclass_metrics(counts["confusion"], counts["ovr"])

    expected_confusion = np.zeros((classes, classes), dtype=int)
    for truth, guess in zip(labels, predicted, strict=True):
        expected_confusion[truth, guess] += 1
    assert np.array_equal(counts["confusion"], expected_confusion)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert metrics["macro_f1"] == pytest.approx(
        np.mean([f1(labels == c, predicted == c) for c in range(classes)])
    )
    assert metrics["auroc"] == pytest.approx(
        np.mean(
            [rank_auroc(quantised(probs[:, c], MULTI_EDGES), labels == c) for c in range(classes)]
        )
    )
    assert metrics["per_class_recall"] == pytest.approx(
        [np.mean(predicted[labels == c] == c) for c in range(classes)]
    )
    assert metrics["n"] == 2000


def test_bins_follow_the_published_edges() -> None:
    edges = np.array([0.0, 0.01, 0.02, 0.5, 1.0])
    scores = np.array([0.0, 0.01 - 1e-9, 0.01, 0.5, 0.999, 1.0])

    counts = binary_counts(scores, np.zeros(6, dtype=int), edges)
    default = binary_counts(np.array([0.0, 0.4999, 0.5, 1.0]), np.zeros(4, dtype=int))
    half = int(np.flatnonzero(BINARY_EDGES == 0.5)[0])

    assert counts[0].tolist() == [2, 1, 0, 3] and counts.shape == (2, 4)
    assert default[0, 0] == 1 and default[0, half - 1] == 1 and default[0, half] == 1
    assert default[0, N_BINS - 1] == 1 and default.sum() == 4


def test_default_edges_spread_on_the_logit_scale() -> None:
    logits = np.log(BINARY_EDGES[1:-1] / (1 - BINARY_EDGES[1:-1]))

    assert np.allclose(np.diff(logits), 2 / 3) and logits[0] == pytest.approx(-8)
    assert 0.5 in BINARY_EDGES and MULTI_EDGES.size == 17
    # DP-trained readmission models predict 0.002-0.04: that band spans several bins.
    assert np.unique(quantised(np.linspace(0.002, 0.04, 100))).size >= 5


def test_per_class_edges_bin_each_class_on_its_own() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    edges = np.array([[0.0, 0.5, 1.0], [0.0, 0.2, 0.4, 1.0]][0:1] * 2)  # shared row
    per_class = [[0.0, 0.95, 1.0], [0.0, 0.05, 1.0]]

    shared = multiclass_counts(probs, np.array([0, 1]), edges)["ovr"]
    own = multiclass_counts(probs, np.array([0, 1]), per_class)["ovr"]

    assert shared[0].tolist() == [[1, 0], [0, 1]] and shared[1].tolist() == [[1, 0], [0, 1]]
    assert own[0].tolist() == [[1, 0], [1, 0]] and own[1].tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize(
    ("edges", "classes", "message"),
    [
        ([0.0, 0.5, 0.4, 1.0], None, "strictly increase"),
        ([0.1, 0.5, 1.0], None, "start at 0, end at 1"),
        ([0.0, 1.0], None, "2 to 32 bins, found 1"),
        (np.linspace(0, 1, MAX_BINS + 2), None, "2 to 32 bins, found 33"),
        ([[0.0, 0.5, 1.0]], None, "shape (bins + 1,)"),
        ([[0.0, 0.5, 1.0]] * 2, 3, "shape (3, bins + 1)"),
        (["a", "b"], None, "an array of numbers"),
        ([0.0, np.nan, 1.0], None, "strictly increase"),
    ],
)
def test_bad_edges_are_refused(edges: object, classes: int | None, message: str) -> None:
    with pytest.raises(ValueError) as error:
        check_edges(edges, classes)

    assert message in str(error.value)


def test_quantile_edges_fill_every_bin_and_keep_the_threshold() -> None:
    rng = np.random.default_rng(2)
    scores = 1 / (1 + np.exp(-rng.normal(-4.5, 0.5, 5000)))  # a DP readmission model

    edges = quantile_edges(scores, 10, threshold=0.5)
    counts = binary_counts(scores, np.zeros(scores.size, dtype=int), edges)[0]
    constant = quantile_edges(np.full(50, 0.3), 10, threshold=0.5)

    assert edges.size == 12 and 0.5 in edges and check_edges(edges) is not None
    assert counts[:10] == pytest.approx(np.full(10, 500), abs=2) and counts[10] == 0
    assert constant.tolist() == [0.0, 0.3, 0.5, 1.0]
    assert quantile_edges(rng.random(10_000), 100).size - 1 <= MAX_BINS


# -- sensitivity and noise -----------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3, 9])
def test_sensitivity_is_the_change_one_patient_makes(classes: int) -> None:
    probs, labels = multiclass_data(50, classes, seed=classes)
    without = multiclass_counts(probs[1:], labels[1:])
    with_one = multiclass_counts(probs, labels)

    change = math.sqrt(sum(np.sum((with_one[k] - without[k]) ** 2) for k in with_one))

    assert sensitivity(with_one) == pytest.approx(change) == pytest.approx(math.sqrt(1 + classes))
    scores, binary = binary_data(50)
    binary_change = np.linalg.norm(
        binary_counts(scores, binary) - binary_counts(scores[1:], binary[1:])
    )
    assert sensitivity(binary_counts(scores, binary)) == binary_change == 1.0


def test_noise_has_the_stated_standard_deviation() -> None:
    sigma, draws = 3.0, 400
    binary = np.zeros((2, N_BINS), dtype=np.int64)
    multi = {"confusion": np.full((3, 3), 5), "ovr": np.full((3, 2, N_BINS), 5)}

    binary_noise = np.stack([noisy(binary, noise_multiplier=sigma) for _ in range(draws)])
    multi_draws = [noisy(multi, noise_multiplier=sigma) for _ in range(draws)]

    # The std of m Gaussian samples has a relative standard error of 1 / sqrt(2m): each
    # check allows 5 of them (16,000 binary samples: 2.8%; 3,600 confusion cells: 5.9%; the
    # OS noise cannot be seeded, so a tighter bound would fail now and then). The discrete
    # noise is DISCRETE_NOISE_FACTOR larger than stated, on integers.
    sigma *= DISCRETE_NOISE_FACTOR
    assert binary_noise.dtype == np.int64
    assert binary_noise.std() == pytest.approx(sigma, rel=5 / math.sqrt(2 * binary_noise.size))
    assert abs(binary_noise.mean()) < 5 * sigma / math.sqrt(binary_noise.size)  # 5 SE
    for key in ("confusion", "ovr"):
        noise = np.stack([d[key] for d in multi_draws]) - multi[key]
        rel = 5 / math.sqrt(2 * noise.size)
        assert noise.std() == pytest.approx(sigma * 2.0, rel=rel)  # sqrt(1 + 3) = 2
        assert abs(noise.mean()) < 5 * sigma * 2.0 / math.sqrt(noise.size)
    assert release_event(sigma).sample_rate == 1.0 and release_event(sigma).steps == 1


def test_noise_must_be_positive() -> None:
    with pytest.raises(ValueError, match="noise_multiplier must be a positive finite number"):
        noisy(np.zeros((2, N_BINS)), noise_multiplier=0.0)


def test_noisy_counts_give_sane_metrics() -> None:
    scores, labels = binary_data(20000)
    exact = binary_metrics(binary_counts(scores, labels), edges=BINARY_EDGES)
    probs, classes = multiclass_data(5000, 4)
    counts = multiclass_counts(probs, classes)
    exact_multi = multiclass_metrics(counts["confusion"], counts["ovr"])

    released = binary_metrics(
        noisy(binary_counts(scores, labels), noise_multiplier=5.0), edges=BINARY_EDGES
    )
    noised = noisy(counts, noise_multiplier=5.0)
    released_multi = multiclass_metrics(noised["confusion"], noised["ovr"])
    tiny = binary_metrics(noisy(binary_counts(scores[:30], labels[:30]), noise_multiplier=50.0))

    for key in ("auroc", "auprc", "accuracy", "f1"):
        assert released[key] == pytest.approx(exact[key], abs=0.03)
    # The noise is fresh OS randomness each run: over 30 draws the multiclass AUROC moved by
    # 0.017 on average and at most 0.027 (noise std 11 on each of 4 x 2 x 16 cells).
    for key, within in (("auroc", 0.05), ("accuracy", 0.03), ("macro_f1", 0.03)):
        assert released_multi[key] == pytest.approx(exact_multi[key], abs=within)
    for key in ("auroc", "auprc", "accuracy", "precision", "recall", "f1"):
        assert math.isnan(tiny[key]) or 0.0 <= tiny[key] <= 1.0


# -- degenerate releases -----------------------------------------------------------------


def test_degenerate_histograms_give_nan_not_errors() -> None:
    no_positives = binary_metrics(
        binary_counts(np.array([0.2, 0.7]), np.array([0, 0])), edges=BINARY_EDGES
    )
    empty = binary_metrics(np.zeros((2, N_BINS)))
    all_negative_noise = binary_metrics(-np.ones((2, N_BINS)))
    nothing_called = binary_metrics(
        binary_counts(np.array([0.1, 0.2]), np.array([0, 1])), edges=BINARY_EDGES
    )

    assert math.isnan(no_positives["auroc"]) and math.isnan(no_positives["auprc"])
    assert math.isnan(no_positives["recall"]) and no_positives["accuracy"] == 0.5
    assert all(math.isnan(empty[k]) for k in ("auroc", "auprc", "accuracy", "f1"))
    assert empty["n"] == 0.0 and all_negative_noise["n"] == -2.0 * N_BINS
    assert math.isnan(all_negative_noise["accuracy"]) and math.isnan(all_negative_noise["auroc"])
    assert math.isnan(nothing_called["precision"]) and nothing_called["recall"] == 0.0
    assert nothing_called["f1"] == 0.0


def test_multiclass_with_an_absent_class() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    counts = multiclass_counts(probs, np.array([0, 1, 0]))

    metrics = multiclass_metrics(counts["confusion"], counts["ovr"])
    empty = multiclass_metrics(np.zeros((3, 3)), np.zeros((3, 2, N_BINS)))

    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert math.isnan(metrics["per_class_recall"][2]) and metrics["auroc"] == 1.0
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["auroc"]) and empty["n"] == 0.0


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.array([0.2, 1.2]), np.array([0, 1]), "scores must be probabilities in [0, 1]"),
        (np.array([0.2, np.nan]), np.array([0, 1]), "scores must be probabilities in [0, 1]"),
        (np.array([0.2, 0.3]), np.array([0, 2]), "labels must be in 0..1"),
        (np.array([0.2, 0.3]), np.array([0]), "labels must have shape (2,), found (1,)"),
    ],
)
def test_bad_inputs_are_refused(scores: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError) as error:
        binary_counts(scores, labels)

    assert message in str(error.value)


def test_accuracy_from_noised_confusion_is_unbiased() -> None:
    """Clipping each noised cell at zero would inflate the total by ~0.4 sigma per empty
    off-diagonal cell and pull accuracy far down; summing raw cells does not."""
    rng = np.random.default_rng(5)
    confusion = np.diag(np.full(9, 200.0)) + np.full((9, 9), 600.0 / 72) * (1 - np.eye(9))
    truth = np.trace(confusion) / confusion.sum()
    ovr = np.zeros((9, 2, N_BINS))
    estimates = [
        multiclass_metrics(confusion + rng.normal(0, 60.0, confusion.shape), ovr)["accuracy"]
        for _ in range(300)
    ]
    assert np.mean(estimates) == pytest.approx(truth, abs=0.02)


def test_auroc_under_heavy_noise_is_stable() -> None:
    """A demo-sized EHR release at epsilon 1: ~300 positives over 10 bins, noise std 47 per
    summed cell. Rank metrics on zero-clipped cells stay near the truth; on raw cells their
    spread doubles (sd 0.18) because the positives' noised total can approach zero."""
    rng = np.random.default_rng(3)
    negatives = np.array([900, 800, 600, 300, 120, 50, 20, 8, 2, 0], float)
    positives = np.array([40, 50, 60, 50, 40, 30, 15, 10, 5, 0], float)
    hist = np.stack([negatives, positives])
    truth = binary_metrics(hist)["auroc"]
    noisy_auroc = [
        binary_metrics(hist + rng.normal(0, 47, hist.shape))["auroc"] for _ in range(300)
    ]
    assert abs(np.mean(noisy_auroc) - truth) < 0.05
    assert np.std(noisy_auroc) < 0.12


def _binned_auroc_rmse(bins: int, positives: int, noise_std: float, reps: int = 150) -> float:
    """RMSE of the noised, binned AUROC against the exact one: binormal scores (AUROC about
    0.6), 9% positives, quantile edges from an independent public-like sample."""
    rng = np.random.default_rng(positives)
    n, shift = int(positives / 0.09), math.sqrt(2) * 0.2533  # Phi^-1(0.6)
    public = rng.normal(size=5000) + shift * (rng.random(5000) < 0.09)
    inner = np.quantile(public, np.linspace(0, 1, bins + 1)[1:-1])
    errors = []
    for _ in range(reps):
        labels = rng.random(n) < 0.09
        scores = rng.normal(size=n) + shift * labels
        exact = (rankdata(scores)[labels].sum() - labels.sum() * (labels.sum() + 1) / 2) / (
            labels.sum() * (~labels).sum()
        )
        hist = np.zeros((2, bins + 1))  # + the threshold's (empty) bin, as the study sends
        np.add.at(hist, (labels.astype(int), np.searchsorted(inner, scores)), 1)
        noised = hist + rng.normal(0.0, noise_std, hist.shape)
        errors.append(binary_metrics(noised)["auroc"] - exact)
    return float(np.sqrt(np.mean(np.square(errors))))


@pytest.mark.parametrize(("positives", "noise_std"), [(250, 12.0), (250, 17.0), (1260, 17.0)])
def test_the_chosen_bin_count_reads_the_auroc_about_as_well_as_the_best(
    positives: int, noise_std: float
) -> None:
    # Prepare: the RMSE of every bin count from 3 to 10 (the demo's and full scale's counts)
    rmse = {bins: _binned_auroc_rmse(bins, positives, noise_std) for bins in (3, 4, 6, 8, 10)}
    # Execute
    chosen = bins_for(positives, noise_std)
    # Assert: within 15% of the best count's error (the Monte Carlo error of 150 draws is
    # about 6%), and better than ten bins when positives are few
    assert chosen in range(MIN_BINS, DEFAULT_BINS + 1)
    error = rmse.get(chosen) or _binned_auroc_rmse(chosen, positives, noise_std)
    assert error <= 1.15 * min(rmse.values())
    if positives < 500:
        assert error < 0.8 * rmse[10]


def test_bins_for_falls_back_to_the_default_on_unreadable_inputs() -> None:
    assert bins_for(float("nan"), 10.0) == DEFAULT_BINS
    assert bins_for(100.0, 0.0) == DEFAULT_BINS
    assert bins_for(-50.0, 10.0) == MIN_BINS
    assert bins_for(1e12, 1.0) == DEFAULT_BINS


def test_proportions_and_rank_cells_are_clipped_as_np_clip_clips_them() -> None:
    # The metrics clamp with min/max and np.maximum (np.clip of a scalar was most of their
    # time): the same values as np.clip, nan kept, infinities clamped.
    from scientist.metrics import _ranked, _ratio

    for num in (-3.0, -0.0, 0.0, 0.25, 1.0, 7.5, math.inf, -math.inf, math.nan):
        for den in (0.5, 1.0, 4.0):
            expected = float(np.clip(num / den, 0.0, 1.0))
            got = _ratio(np.float64(num), np.float64(den))
            assert got == expected or (math.isnan(got) and math.isnan(expected)), (num, den)
    assert math.isnan(_ratio(1.0, 0.0)) and math.isnan(_ratio(1.0, -2.0))
    cells = np.array([-2.0, -0.0, 0.0, 3.0, math.inf, -math.inf, math.nan])
    for ours in _ranked(cells, cells):
        np.testing.assert_array_equal(ours, np.clip(cells, 0.0, None))
