"""Poisson sampling into fixed-size padded batches: the overflow bound against the exact
binomial tail, what truncation adds to delta for the default recipes, and the batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from datasites.privacy.ledger import SIZE_NOISE_MULTIPLIER, SIZE_TAIL, size_upper_bound
from datasites.privacy.noise import DISCRETE_NOISE_FACTOR
from datasites.privacy.sampling import (
    OVERFLOW_PER_STEP,
    PoissonBatches,
    batch_bound,
    overflow_bound,
)
from datasites.privacy.stream import RandomStream

DELTA = 1e-5
STUDY_EPSILON = 5.0  # the default site policy's largest study epsilon
ROUNDS, EPOCHS = 20, 3
# The default recipes: (batch size, hospital sizes from the smallest to the largest).
RECIPES = {
    "ehr": (512, (5_000, 10_000, 20_000, 40_000, 80_000)),
    "pathmnist": (256, (2_000, 5_000, 20_000, 50_000, 90_000)),
}


def _rows(released: int) -> int:
    return size_upper_bound(released)


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_truncation_adds_under_a_thousandth_of_delta_to_a_default_study(task: str) -> None:
    """A whole study's steps times the exact P(overflow) of a step, at the row bound R (the
    most rows a dataset of that released size holds), stays under delta / 1000, also with the
    (1 + e^epsilon) factor of the two-sided argument at epsilon 5."""
    batch, sizes = RECIPES[task]
    for n in sizes:
        rows, rate = _rows(n), batch / n
        size = batch_bound(rows, rate)
        steps = ROUNDS * EPOCHS * math.ceil(n / batch)
        exact = stats.binom.sf(size, rows, rate)  # P(Binomial(R, q) > size)
        added = (1 + math.exp(STUDY_EPSILON)) * steps * exact
        assert steps * exact < DELTA / 1000, (task, n)
        assert added < DELTA / 1000, (task, n, added)
        assert size < 2 * batch, (task, n, size)


@pytest.mark.parametrize(
    ("rows", "rate"), [(1_024, 0.25), (2_381, 0.128), (80_381, 0.0064), (781, 0.75), (50, 0.5)]
)
def test_the_chernoff_bound_dominates_the_exact_tail(rows: int, rate: float) -> None:
    size = batch_bound(rows, rate)
    for b in range(max(0, size - 60), size + 1):
        assert stats.binom.sf(b, rows, rate) <= overflow_bound(rows, rate, b) * (1 + 1e-9)
    assert overflow_bound(rows, rate, size) <= OVERFLOW_PER_STEP
    assert overflow_bound(rows, rate, size - 1) > OVERFLOW_PER_STEP
    assert overflow_bound(rows, 1.0, rows - 1) == 1.0 and batch_bound(rows, 1.0) == rows


def test_the_row_bound_covers_the_released_size_noise() -> None:
    """P(true n > size_upper_bound(released)) = P(noise < -margin) <= SIZE_TAIL, computed
    exactly for the discrete Gaussian the ledger draws."""
    scale = SIZE_NOISE_MULTIPLIER * DISCRETE_NOISE_FACTOR
    margin = size_upper_bound(0)
    support = np.arange(-40 * int(scale), 40 * int(scale) + 1)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * scale**2))
    tail = weights[support < -margin].sum() / weights.sum()
    assert tail <= SIZE_TAIL
    assert margin < 8 * scale


def _batches(real: int, bound: int, rate: float, **kwargs: float) -> PoissonBatches:
    return PoissonBatches(real=real, bound=bound, rate=rate, stream=RandomStream(), **kwargs)


def test_every_step_has_the_same_size_and_only_real_rows_are_sampled() -> None:
    # Prepare: 300 real rows under a public bound of 700
    batches = _batches(300, 700, 0.3)
    counts = []
    for _ in range(200):
        # Execute
        indices, mask, sampled = batches.draw()
        # Assert
        assert indices.shape == mask.shape == (batches.size,)
        assert int(mask.sum()) == sampled and bool(mask[:sampled].all())
        assert bool((indices[mask] < 300).all()) and not indices[~mask].any()
        assert len(set(indices[mask].tolist())) == sampled
        counts.append(sampled)
    # Binomial(300, 0.3): mean 90, variance 63 (200 draws: standard error 0.56)
    assert abs(np.mean(counts) - 90) < 5 * math.sqrt(63 / 200)
    assert batches.size == batch_bound(700, 0.3)


def test_an_overflowing_sample_is_truncated_to_a_uniform_subset() -> None:
    # Prepare: a batch size of 20 (tail 0.99) for Binomial(40, 1/2): 44% of the steps overflow
    batches = _batches(40, 40, 0.5, tail=0.99)
    seen = np.zeros(40)
    overflowed = 0
    for _ in range(4_000):
        # Execute
        indices, mask, sampled = batches.draw()
        # Assert
        assert sampled <= batches.size and len(set(indices[mask].tolist())) == sampled
        overflowed += sampled == batches.size  # overflowed, or exactly 20 (12.5%)
        seen[indices[mask].numpy()] += 1
    # Every row is equally likely to be kept: the counts agree to 5 standard errors.
    assert batches.size == 20 and overflowed > 1_600
    assert np.all(np.abs(seen - seen.mean()) < 5 * math.sqrt(seen.mean()))
