"""DP events and calibration against independent references.

The ledger's accountant is PLD (dp-accounting); it is checked against dp-accounting itself
on a finer grid with every event composed on its own, against Opacus's PRV accountant (an
independent implementation of the same idea), against the Gaussian mechanism's exact
formula, and against Opacus's RDP accountant, which must never state less.
"""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import optimize, stats

from datasites.privacy import accounting
from datasites.privacy.accounting import (
    ALPHAS,
    MAX_COMPOSED_STEPS,
    DpEvent,
    StudyBudget,
    calibrate_study,
    epsilon,
    epsilon_floor,
    parallel_epsilon,
    rdp_epsilon,
)
from tests.privacy_reference import agrees_with_pld, opacus_epsilon

# Calibration passes through huge epsilons, where Opacus notes that order 1.1 is optimal.
# PRV takes logs of zero at the edge of its grid, harmlessly.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
]

DELTA = 1e-5
TRAIN = DpEvent(noise_multiplier=1.5, sample_rate=0.02, steps=40)
OTHER_TRAIN = DpEvent(noise_multiplier=2.0, sample_rate=0.05, steps=20)
EVAL = DpEvent(noise_multiplier=30.0, sample_rate=1.0, steps=1)
SIZE = DpEvent(noise_multiplier=50.0, sample_rate=1.0, steps=1)
TRAIN_BUDGET = StudyBudget(TRAIN, EVAL, rounds=3, evaluations=2)

# Heterogeneous histories as a ledger holds them: one study's rounds and evaluations, two
# studies interleaved on one dataset with its size release, a long study with many evals.
HISTORIES = {
    "one study": [TRAIN, EVAL] * 5 + [EVAL],
    "two studies and the size": [SIZE, TRAIN, EVAL, OTHER_TRAIN, TRAIN, EVAL, OTHER_TRAIN, EVAL],
    "long study": [SIZE] + [DpEvent(0.9, 0.01, 400), DpEvent(80.0, 1.0, 1)] * 5,
    "loud and quiet": [DpEvent(0.7, 0.1, 10), DpEvent(4.0, 0.5, 3), DpEvent(300.0, 1.0, 1)],
}


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_epsilon_agrees_with_dp_accounting_pld_to_its_discretisation(name: str) -> None:
    events = HISTORIES[name]

    ours = epsilon(events, DELTA)

    assert agrees_with_pld(ours, events)
    assert ours == epsilon(list(reversed(events)), DELTA)  # a multiset: order is irrelevant


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_epsilon_agrees_with_opacus_prv_accountant(name: str) -> None:
    events = HISTORIES[name]
    accountant = PRVAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]

    prv = accountant.get_epsilon(delta=DELTA, eps_error=0.005)

    assert epsilon(events, DELTA) == pytest.approx(prv, rel=0.01, abs=0.01)


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_rdp_cross_check_is_opacus_and_never_below_pld(name: str) -> None:
    events = HISTORIES[name]

    rdp = rdp_epsilon(events, DELTA)

    assert rdp == opacus_epsilon(events)
    assert epsilon(events, DELTA) < rdp


def test_interleaved_opacus_history_agrees_with_the_rdp_figure() -> None:
    accountant = RDPAccountant()
    for event in [TRAIN, EVAL, TRAIN, EVAL]:
        for _ in range(event.steps):
            accountant.step(noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate)

    expected = accountant.get_epsilon(delta=DELTA, alphas=list(ALPHAS))

    assert rdp_epsilon([TRAIN, EVAL, TRAIN, EVAL], DELTA) == pytest.approx(expected, rel=1e-12)


def test_extra_orders_only_tighten_opacus_defaults() -> None:
    accountant = RDPAccountant()
    accountant.history = [(TRAIN.noise_multiplier, TRAIN.sample_rate, TRAIN.steps)]

    assert rdp_epsilon([TRAIN], DELTA) <= accountant.get_epsilon(delta=DELTA)
    assert set(RDPAccountant.DEFAULT_ALPHAS) <= set(ALPHAS)


def test_disjoint_parts_compose_in_parallel() -> None:
    parts = {"train": [TRAIN, OTHER_TRAIN], "test": [EVAL] * 3}

    both = parallel_epsilon(parts, DELTA)

    assert both == max(epsilon([TRAIN, OTHER_TRAIN], DELTA), epsilon([EVAL] * 3, DELTA))
    assert both < epsilon([TRAIN, OTHER_TRAIN, EVAL, EVAL, EVAL], DELTA)  # never the sum
    assert parallel_epsilon(parts, DELTA, "rdp") == max(
        opacus_epsilon([TRAIN, OTHER_TRAIN]), opacus_epsilon([EVAL] * 3)
    )
    assert parallel_epsilon({}, DELTA) == parallel_epsilon({"train": []}, DELTA) == 0.0


def test_an_absurd_composition_is_stated_unbounded_at_once() -> None:
    # A hostile plan's 10^12 steps would hold the PLD accountant for hours; inf is a valid
    # bound above any cap, and calibration then says no noise reaches the target.
    huge = DpEvent(noise_multiplier=1.0, sample_rate=0.01, steps=10**12)

    assert epsilon([huge], DELTA) == math.inf
    assert epsilon([DpEvent(1.0, 0.01, MAX_COMPOSED_STEPS)], DELTA) < math.inf
    with pytest.raises(ValueError, match="no noise level reaches this epsilon"):
        calibrate_study(
            epsilon=1.0,
            delta=DELTA,
            n=1000,
            batch_size=10,
            local_epochs=1,
            rounds=10,
            evaluations=0,
            local_steps=10**6,
        )


def test_no_events_cost_nothing() -> None:
    assert epsilon([], DELTA) == 0.0
    assert rdp_epsilon([], DELTA) == 0.0


def test_composition_is_monotone() -> None:
    events = [TRAIN, EVAL, OTHER_TRAIN, TRAIN, EVAL]

    running = [epsilon(events[:k], DELTA) for k in range(len(events) + 1)]

    assert all(a < b for a, b in zip(running, running[1:], strict=False))
    assert epsilon([TRAIN, TRAIN], DELTA) < epsilon([TRAIN], DELTA) * 2  # sub-additive
    assert epsilon([DpEvent(3.0, 0.02, 40)], DELTA) < epsilon([TRAIN], DELTA)
    assert epsilon([TRAIN], 1e-3) < epsilon([TRAIN], DELTA)


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The exact epsilon of the Gaussian mechanism [Balle & Wang 2018, Theorem 8]."""

    def excess(eps: float) -> float:
        return (
            stats.norm.cdf(0.5 / sigma - eps * sigma)
            - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma)
            - delta
        )

    return optimize.brentq(excess, 0.0, 50.0, xtol=1e-12)


@pytest.mark.parametrize(("sigma", "releases"), [(50.0, 1), (20.0, 5), (3.0, 11), (1000.0, 1)])
def test_gaussian_releases_match_the_exact_formula(sigma: float, releases: int) -> None:
    # k Gaussian releases of noise sigma are one release of noise sigma / sqrt(k).
    exact = analytic_gaussian_epsilon(sigma / math.sqrt(releases), DELTA)

    stated = epsilon([DpEvent(sigma, 1.0, 1)] * releases, DELTA)

    assert exact <= stated <= exact * 1.01 + 5e-5


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier must be a positive finite number, found 0.0"),
        ({"noise_multiplier": "1"}, "noise_multiplier must be a number, found str"),
        ({"sample_rate": 1.5}, "sample_rate must be in (0, 1], found 1.5"),
        ({"sample_rate": math.nan}, "sample_rate must be a positive finite number, found nan"),
        ({"steps": 0}, "steps must be at least 1, found 0"),
        ({"steps": 2.0}, "steps must be an int, found float"),
        ({"steps": True}, "steps must be an int, found bool"),
    ],
)
def test_event_validation_says_expected_and_found(kwargs: dict, expected: str) -> None:
    args = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, **kwargs}

    with pytest.raises(ValueError) as error:
        DpEvent(**args)

    assert expected in str(error.value)


def test_epsilon_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="delta must be a number in"):
        epsilon([TRAIN], 1.0)
    with pytest.raises(ValueError, match="events must be DpEvent values, found tuple"):
        epsilon([(1.0, 0.1, 1)], DELTA)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="accountant must be 'pld' or 'rdp', found 'moments'"):
        TRAIN_BUDGET.total_epsilon(DELTA, accountant="moments")


# -- calibration --------------------------------------------------------------------------

GRID = [  # (epsilon, n, batch_size, rounds, evaluations): the corners and a spread between
    (0.5, 500, 32, 1, 0),
    (0.5, 500, 256, 20, 21),
    (0.5, 50000, 32, 20, 21),
    (8.0, 500, 32, 20, 21),
    (8.0, 50000, 512, 1, 0),
    (8.0, 50000, 32, 20, 0),
    (1.0, 2500, 256, 10, 11),
    (2.0, 12000, 128, 5, 6),
    (4.0, 800, 64, 15, 3),
    (3.0, 30000, 512, 20, 21),
]


@pytest.mark.parametrize(("eps", "n", "batch", "rounds", "evaluations"), GRID)
def test_calibration_never_exceeds_and_nearly_fills_the_target(
    eps: float, n: int, batch: int, rounds: int, evaluations: int
) -> None:
    budget = calibrate_study(
        epsilon=eps,
        delta=DELTA,
        n=n,
        batch_size=batch,
        local_epochs=1,
        rounds=rounds,
        evaluations=evaluations,
    )

    total = budget.total_epsilon(DELTA)
    assert total <= eps
    assert total >= 0.98 * eps
    assert budget.train.sample_rate == batch / n
    assert budget.train.steps == math.ceil(n / batch)
    assert len(budget.planned_events()) == rounds + evaluations
    less_noise = DpEvent(budget.train.noise_multiplier * (1 - 2e-3), batch / n, budget.train.steps)
    assert (
        StudyBudget(less_noise, budget.evaluation, rounds, evaluations).total_epsilon(DELTA) > eps
    )
    # Training and evaluations read disjoint parts: each is calibrated to the whole target.
    train_alone = epsilon(budget.parts()["train"], DELTA)
    assert eps * 0.98 <= train_alone <= eps
    if evaluations:
        evals_alone = epsilon([budget.evaluation] * evaluations, DELTA)
        assert evals_alone == pytest.approx(eps, rel=0.01)
        assert evals_alone <= eps
        assert total == max(train_alone, evals_alone)


def test_eval_share_sets_the_evaluations_cost() -> None:
    budget = calibrate_study(
        epsilon=2.0,
        delta=DELTA,
        n=2000,
        batch_size=200,
        local_epochs=2,
        rounds=4,
        evaluations=5,
        eval_share=0.3,
    )

    assert epsilon([budget.evaluation] * 5, DELTA) == pytest.approx(0.6, rel=0.01)
    assert budget.train.steps == 2 * 10
    assert 0.98 * 2.0 <= budget.total_epsilon(DELTA) <= 2.0
    default = calibrate_study(
        epsilon=2.0, delta=DELTA, n=2000, batch_size=200, local_epochs=2, rounds=4, evaluations=5
    )
    assert default.train == budget.train  # the evaluations' share costs training nothing
    assert default.evaluation.noise_multiplier < budget.evaluation.noise_multiplier


def test_local_steps_set_the_steps_per_round_and_the_noise_follows() -> None:
    # Prepare: a quarter epoch per round for four times the rounds
    common = dict(epsilon=2.0, delta=DELTA, n=2000, batch_size=100, evaluations=2)
    epochs = calibrate_study(**common, local_epochs=1, rounds=5)
    steps = calibrate_study(**common, local_epochs=1, rounds=20, local_steps=5)
    # Assert: the same 100 steps in all, charged as they are taken
    assert steps.train.steps == 5 and epochs.train.steps == 20
    assert steps.train.noise_multiplier == pytest.approx(epochs.train.noise_multiplier, rel=2e-3)
    assert 0.98 * 2.0 <= steps.total_epsilon(DELTA) <= 2.0
    more = calibrate_study(**common, local_epochs=1, rounds=20, local_steps=10)
    assert more.train.noise_multiplier > steps.train.noise_multiplier


def test_calibration_is_deterministic() -> None:
    kwargs = dict(
        epsilon=1.0, delta=DELTA, n=2500, batch_size=256, local_epochs=1, rounds=10, evaluations=11
    )
    first = calibrate_study(**kwargs)
    accounting._calibrate.cache_clear()

    assert calibrate_study(**kwargs) == first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epsilon": 0.0}, "epsilon must be a positive finite number, found 0.0"),
        ({"epsilon": math.inf}, "epsilon must be a positive finite number, found inf"),
        ({"delta": 0.0}, "delta must be a number in (0, 1), found 0.0"),
        ({"delta": 1.0}, "delta must be a number in (0, 1), found 1.0"),
        ({"batch_size": 3000}, "batch_size must be at most n, found 3000 > 2500"),
        ({"batch_size": 0}, "batch_size must be at least 1, found 0"),
        ({"n": 2500.0}, "n must be an int, found float"),
        ({"local_epochs": 0}, "local_epochs must be at least 1, found 0"),
        ({"rounds": 0}, "rounds must be at least 1, found 0"),
        ({"evaluations": -1}, "evaluations must be at least 0, found -1"),
        ({"local_steps": -1}, "local_steps must be at least 0, found -1"),
        ({"eval_share": 1.5}, "eval_share must be in (0, 1], found 1.5"),
        ({"eval_share": 0.0}, "eval_share must be a positive finite number, found 0.0"),
    ],
)
def test_calibration_errors_are_one_clear_sentence(change: dict, message: str) -> None:
    kwargs = dict(
        epsilon=1.0, delta=DELTA, n=2500, batch_size=256, local_epochs=1, rounds=10, evaluations=11
    )

    with pytest.raises(ValueError) as error:
        calibrate_study(**{**kwargs, **change})

    assert message in str(error.value)
    assert str(error.value).endswith(".")
    assert str(error.value).count(". ") == 0


def test_floor_is_what_the_most_noise_costs() -> None:
    assert epsilon_floor(DELTA) == epsilon([DpEvent(1e6, 1.0, 1)], DELTA)
    assert epsilon_floor(DELTA, 101) < 0.001  # a tenth of epsilon 0.01 is accountable
    assert epsilon_floor(DELTA) <= epsilon_floor(DELTA, 101)


@pytest.mark.parametrize(("eps", "n", "batch", "rounds", "evaluations"), GRID[-4:])
def test_pld_calibration_needs_less_noise_than_rdp(
    eps: float, n: int, batch: int, rounds: int, evaluations: int
) -> None:
    kwargs = dict(
        epsilon=eps,
        delta=DELTA,
        n=n,
        batch_size=batch,
        local_epochs=1,
        rounds=rounds,
        evaluations=evaluations,
    )

    pld, rdp = calibrate_study(**kwargs), calibrate_study(**kwargs, accountant="rdp")

    assert rdp.total_epsilon(DELTA, accountant="rdp") <= eps
    assert pld.train.noise_multiplier < rdp.train.noise_multiplier
    assert pld.evaluation.noise_multiplier < rdp.evaluation.noise_multiplier
    # The RDP-calibrated study costs less than its target under PLD: a migrated ledger's
    # studies keep their noise and stay within what was approved.
    assert rdp.total_epsilon(DELTA) < eps
