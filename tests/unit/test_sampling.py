"""Poisson sampling with a round's work fixed by public figures: the budget against scipy's
exact binomial tail (and Chernoff's bound above it), what an overrun adds to delta for the
default recipes, the samples and the padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from datasites.privacy.ledger import SIZE_NOISE_MULTIPLIER, SIZE_TAIL, size_upper_bound
from datasites.privacy.noise import DISCRETE_NOISE_FACTOR
from datasites.privacy.sampling import (
    OVERFLOW_PER_ROUND,
    PoissonBatches,
    batch_bound,
    overflow_bound,
    overflow_probability,
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
def test_an_overrun_adds_under_a_thousandth_of_delta_to_a_default_study(task: str) -> None:
    """A whole study's rounds times the exact P(a round samples more than its budget), at
    the row bound R (the most rows a dataset of that released size holds), stays under
    delta / 1000 with the (1 + e^epsilon) factor of the two-sided argument at epsilon 5;
    and the budget costs little over the expected rows at full scale."""
    batch, sizes = RECIPES[task]
    for n in sizes:
        rows, rate = _rows(n), batch / n
        steps = EPOCHS * math.ceil(n / batch)
        budget = batch_bound(rows * steps, rate)
        exact = stats.binom.sf(budget, rows * steps, rate)  # P(Binomial(T R, q) > budget)
        added = (1 + math.exp(STUDY_EPSILON)) * ROUNDS * exact
        assert added < DELTA / 1000, (task, n, added)
        expected = steps * n * rate
        assert budget < (1.25 if n >= 20_000 else 1.5) * expected, (task, n, budget / expected)


CASES = [(1_024, 0.25), (2_381, 0.128), (80_381, 0.0064), (781, 0.75), (50, 0.5), (271_143, 0.0028)]


@pytest.mark.parametrize(("rows", "rate"), CASES)
def test_the_budget_is_the_least_size_whose_exact_tail_is_within_the_target(
    rows: int, rate: float
) -> None:
    """The reference: scipy's binomial survival function. The budget's tail is at most the
    target, one row less would exceed it (up to the 1e-6 safety margin), and the budget is
    never above the one Chernoff's bound gave."""
    size = batch_bound(rows, rate)
    assert stats.binom.sf(size, rows, rate) <= OVERFLOW_PER_ROUND
    assert stats.binom.sf(size - 1, rows, rate) * (1 + 1e-5) > OVERFLOW_PER_ROUND
    chernoff = next(b for b in range(size, rows + 1) if overflow_bound(rows, rate, b) <= 1e-12)
    assert size <= chernoff


@pytest.mark.parametrize(("rows", "rate"), CASES)
def test_the_exact_tail_equals_scipys(rows: int, rate: float) -> None:
    mean, sd = rows * rate, math.sqrt(rows * rate * (1 - rate))
    for k in range(-5, 15):
        size = min(rows, max(-1, round(mean + k * sd / 2)))
        expected = stats.binom.sf(size, rows, rate)
        got = overflow_probability(rows, rate, size)
        assert got == pytest.approx(expected, rel=1e-7, abs=1e-300), (size, got, expected)
    assert overflow_probability(rows, rate, rows) == 0.0
    assert overflow_probability(rows, 1.0, rows - 1) == 1.0 and batch_bound(rows, 1.0) == rows
    assert overflow_probability(rows, 0.0, 0) == 0.0


@pytest.mark.parametrize(("rows", "rate"), CASES)
def test_the_chernoff_bound_dominates_the_exact_tail(rows: int, rate: float) -> None:
    size = batch_bound(rows, rate)
    for b in range(max(0, size - 60), size + 1):
        assert stats.binom.sf(b, rows, rate) <= overflow_bound(rows, rate, b) * (1 + 1e-9)
    assert overflow_bound(rows, 1.0, rows - 1) == 1.0


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


def _batches(real: int, bound: int, rate: float, steps: int, **kwargs: float) -> PoissonBatches:
    return PoissonBatches(
        real=real, bound=bound, rate=rate, steps=steps, stream=RandomStream(), **kwargs
    )


def test_only_real_rows_are_sampled_and_the_padding_fills_the_budget() -> None:
    # Prepare: 300 real rows under a public bound of 700, rounds of 4 steps
    counts = []
    for _ in range(50):
        batches = _batches(300, 700, 0.3, steps=4)
        total = 0
        for _ in range(4):
            # Execute
            indices, sampled = batches.draw()
            # Assert: distinct real rows only
            assert indices.shape == (sampled,) and bool((indices < 300).all())
            assert len(set(indices.tolist())) == sampled
            counts.append(sampled)
            total += sampled
        padding = batches.padding()
        # The padding brings the round to its budget, in a number of passes set by public
        # figures only (the same for every round of these sizes)
        assert total + sum(padding) == batches.budget == batch_bound(700 * 4, 0.3)
        assert len(padding) == batches.passes == math.ceil((batches.budget - 4 * 210) / 210)
        assert max(padding) - min(padding) <= 1
    # Binomial(300, 0.3): mean 90, variance 63 (200 draws: standard error 0.56)
    assert abs(np.mean(counts) - 90) < 5 * math.sqrt(63 / 200)


def test_a_round_that_samples_past_its_budget_is_not_truncated() -> None:
    # Prepare: a budget far below the expected 60 rows, so that the round overruns it
    batches = _batches(40, 40, 0.5, steps=3)
    batches.budget = 10
    # Execute
    sampled = [batches.draw()[1] for _ in range(3)]
    # Assert: the samples are the mechanism's own (no truncation), and nothing is padded
    assert sum(sampled) > 10 and max(sampled) > 10 / 3
    assert sum(batches.padding()) == 0


def test_without_padding_nothing_is_added() -> None:
    batches = _batches(300, 700, 0.3, steps=4, padded=False)
    for _ in range(4):
        batches.draw()
    assert batches.padding() == []
