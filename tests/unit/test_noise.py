"""The noise itself: the discrete Gaussian's distribution, that the continuous event the
ledger charges dominates it (dp-accounting's exact discrete-Gaussian PLD). The secure-mode
Gaussian on training weights is tested with its stream (test_stream.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy import stats

from datasites.contract.release import sensitivity
from datasites.privacy.noise import DISCRETE_NOISE_FACTOR, discrete_gaussian
from datasites.runtime.execute import LOSS_STEPS

DELTA = 1e-5


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_discrete_gaussian_has_the_discrete_gaussian_distribution(sigma: float) -> None:
    draws = discrete_gaussian(sigma, 20_000)
    s = sigma * DISCRETE_NOISE_FACTOR
    support = np.arange(-int(8 * s) - 1, int(8 * s) + 2)
    pmf = np.exp(-(support.astype(float) ** 2) / (2 * s * s))
    pmf /= pmf.sum()
    # Pool the tails so every cell expects at least 20 draws, then a chi-square test.
    expected = pmf * draws.size
    keep = expected >= 20
    observed = np.array([np.sum(draws == k) for k in support[keep]])
    observed = np.append(observed, draws.size - observed.sum())
    expected = np.append(expected[keep], draws.size - expected[keep].sum())

    _, p_value = stats.chisquare(observed, expected)

    assert draws.dtype == np.int64
    assert p_value > 1e-4  # a correct sampler fails this once in 10,000 runs


def test_discrete_gaussian_is_fresh_and_shaped() -> None:
    first, second = discrete_gaussian(100.0, (3, 4)), discrete_gaussian(100.0, (3, 4))

    assert first.shape == (3, 4) and first.dtype == np.int64
    assert not np.array_equal(first, second)  # OS randomness: no seed to replay
    assert discrete_gaussian(2.0).shape == ()


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan, True, "2"])
def test_discrete_gaussian_refuses_a_bad_sigma(sigma: object) -> None:
    with pytest.raises(ValueError, match="sigma must be"):
        discrete_gaussian(sigma)  # type: ignore[arg-type]


def _continuous(sigma: float) -> float:
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivity=1.0,
        value_discretization_interval=1e-4,
    ).get_epsilon_for_delta(DELTA)


def _discrete(sigma: float, cells: int, loss_steps: int) -> float:
    """Exact PLD of a release whose adjacent datasets differ by 1 in `cells` cells and by
    `loss_steps` in the loss coordinate, with the noise the runtime draws."""
    per_cell = pld_lib.from_discrete_gaussian_mechanism(
        sigma * DISCRETE_NOISE_FACTOR, sensitivity=1, value_discretization_interval=1e-4
    )
    release = per_cell.self_compose(cells) if cells > 1 else per_cell
    if loss_steps:
        release = release.compose(
            pld_lib.from_discrete_gaussian_mechanism(
                sigma * DISCRETE_NOISE_FACTOR * LOSS_STEPS,
                sensitivity=loss_steps,
                value_discretization_interval=1e-4,
            )
        )
    return release.get_epsilon_for_delta(DELTA)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 30.0])
@pytest.mark.parametrize(
    ("release", "cells"),
    [("size count", 1), ("binary evaluation", 1), ("pathmnist evaluation", 10)],
)
def test_the_charged_continuous_event_dominates_the_discrete_release(
    sigma: float, release: str, cells: int
) -> None:
    # The runtime noises each cell at sigma * joint and the loss at sigma * joint * STEPS,
    # where joint is the L2 sensitivity of counts and loss together, and charges the
    # continuous Gaussian at noise multiplier sigma (sensitivity 1 after scaling).
    counts = (
        np.zeros((2, 4))
        if cells == 1
        else {"confusion": np.zeros((9, 9)), "ovr": np.zeros((9, 2, 4))}
    )
    with_loss = release != "size count"
    joint = math.hypot(sensitivity(counts), 1.0) if with_loss else 1.0

    charged = _continuous(sigma)
    worst = _discrete(sigma * joint, cells, LOSS_STEPS if with_loss else 0)

    assert worst <= charged
