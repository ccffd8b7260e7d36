"""A canary audit of the hospitals' DP-SGD: what an attacker can tell empirically stays below
what the accountant claims.

Worst case for one step: every other example has a zero gradient on the audited weight,
and the canary's gradient points along it with a norm far above the clipping bound. The
attacker sees the released weight after one step of `datasites.privacy.dp.dp_train` on the dataset
with and without the canary, many times each, and thresholds it. By the definition of
(epsilon, delta)-DP, TPR <= e^epsilon * FPR + delta for every threshold, so
epsilon >= log((TPR - delta) / FPR); with Clopper-Pearson bounds (95%, split over the
thresholds tried) that is a lower bound on the true epsilon that holds with high
probability. It must stay below the accountant's figure, and without noise the same audit
must find a large epsilon (so it can fail).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import beta

from datasites.contract.encoding import N_FEATURES
from datasites.contract.zoo import build_model
from datasites.privacy.accounting import DpEvent, epsilon
from datasites.privacy.dp import TrainSpec, dp_train

DELTA = 1e-5
AUDITED = 7  # the weight the canary's gradient points along
RUNS = 400
SIGMA = 2.0  # one full-batch step: the accountant claims 2.17 at DELTA
CONFIDENCE = 0.05


def datasets() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(without, with) the canary: 31 rows with zero features, then the canary's row."""
    features = np.zeros((32, N_FEATURES), np.float32)
    labels = np.zeros(32, np.float32)
    features[-1, AUDITED] = 100.0  # a gradient of norm 50 on one weight, clipped to 1
    return (features[:-1], labels[:-1]), (features, labels)


def released_weight(data: tuple[np.ndarray, np.ndarray], sigma: float, seed: int) -> float:
    torch.manual_seed(0)
    model = build_model("ehr_logistic")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    spec = TrainSpec(
        batch_size=len(data[1]),
        lr=1.0,
        local_epochs=1,
        max_grad_norm=1.0,
        noise_multiplier=sigma,
        local_steps=1,
    )
    outcome = dp_train(model, *data, spec, task="ehr", test_key=seed.to_bytes(32, "little"))
    return float(outcome.weights["0.weight"][0, AUDITED])


def empirical_epsilon(sigma: float, runs: int = RUNS) -> float:
    """The largest Clopper-Pearson lower bound on epsilon over a few thresholds."""
    without, with_canary = datasets()
    # The canary's clipped gradient is positive (label 0, positive feature), so SGD moves
    # the weight down: "canary present" is a small released weight.
    neg = -np.array([released_weight(without, sigma, s) for s in range(runs)])
    pos = -np.array([released_weight(with_canary, sigma, runs + s) for s in range(runs)])
    thresholds = np.quantile(np.concatenate([neg, pos]), [0.5, 0.7, 0.9, 0.97])
    alpha = CONFIDENCE / len(thresholds)
    best = 0.0
    for t in thresholds:
        true_pos, false_pos = int((pos > t).sum()), int((neg > t).sum())
        tpr_low = beta.ppf(alpha / 2, true_pos, runs - true_pos + 1) if true_pos else 0.0
        fpr_high = beta.ppf(1 - alpha / 2, false_pos + 1, runs - false_pos)
        if tpr_low > DELTA and fpr_high > 0:
            best = max(best, math.log((tpr_low - DELTA) / fpr_high))
    return best


def test_the_empirical_epsilon_of_one_step_stays_below_the_accountants() -> None:
    sigma = SIGMA
    # The batch is the whole set, but sampling is Poisson at rate 31/31 or 32/32 = 1: the
    # canary is always in, the strongest case for the attacker.
    claimed = epsilon([DpEvent(noise_multiplier=sigma, sample_rate=1.0, steps=1)], DELTA)

    found = empirical_epsilon(sigma)

    assert found < claimed, (found, claimed)


def test_the_audit_finds_a_large_epsilon_when_the_noise_is_off() -> None:
    claimed_with_noise = epsilon([DpEvent(noise_multiplier=SIGMA, sample_rate=1.0, steps=1)], DELTA)

    found = empirical_epsilon(0.0)

    assert found > claimed_with_noise
