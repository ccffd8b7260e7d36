"""Privacy events and their composition: what a hospital's epsilon is made of.

Every release computed from private rows is a `DpEvent`, a small immutable value in the
spirit of Google's dp-accounting: a Poisson-subsampled Gaussian mechanism applied `steps`
times. DP-SGD is such a series (one event per training round); a noised evaluation release
or a dataset-size count is the plain Gaussian mechanism, sample rate 1 and one step.

Events compose with privacy loss distributions (PLD) [Koskela, Jalko & Honkela 2020;
Doroshenko et al., "Connect the Dots", PETS 2022], through Google's `dp-accounting`: the
distribution of each mechanism's privacy loss is discretised pessimistically (every loss
rounded up, so the figure is an upper bound at any grid) and composed exactly by
convolution. For DP-SGD this is close to tight, and it needs less noise than Renyi DP for
the same epsilon (benchmarks/README.md, "accounting"), which only bounds the loss through its
moments; the saving is utility bought at no privacy cost.

Train and test are disjoint parts, and compose in parallel [McSherry, "Privacy Integrated
Queries", SIGMOD 2009]: each EHR patient is assigned to one part by a keyed hash of its own
id (`synthetic.partition`), each PathMNIST patch keeps the split of the hospital's own file,
so adding or removing one unit changes one part and leaves the other as it was. Every
mechanism reads one part (DP-SGD rounds and the size release the training part, evaluations
the test part; a later mechanism may also read earlier outputs, which is post-processing).
Given the outputs so far, a mechanism on the unchanged part has the same output distribution
under both neighbours, so its privacy loss is zero: the loss of the whole history is that of
the changed part's mechanisms alone, composed adaptively. Its epsilon is therefore the
larger of the two parts' compositions, never their sum (`parallel_epsilon`), and a study
calibrates each part to its target on its own.

The Renyi figure stays alongside as a cross-check (`rdp_epsilon`): Opacus's own
`RDPAccountant` arithmetic [Mironov 2017; Mironov, Talwar & Zhang 2019], over more orders
than Opacus's default (up to 1024, as dp-accounting does) so that small releases can be
stated at all. Both are valid upper bounds; PLD is the one the ledger enforces.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as privacy_analysis

ALPHAS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS) + (
    64,
    72,
    80,
    96,
    112,
    128,
    160,
    192,
    256,
    320,
    384,
    512,
    768,
    1024,
)
"""RDP orders: Opacus's, then larger integer orders (scipy's binomials overflow past ~1030)."""

PLD_DISCRETIZATION = 1e-3
"""Grid step of the privacy loss: losses round up to it, so each figure is an upper bound.

A coarser grid overstates epsilon more, a finer one builds each mechanism's distribution
more slowly; 1e-3 stays within the tolerance the tests hold it to against a 10x finer grid
(tests/unit/test_accounting.py; timings in benchmarks/README.md, "accounting").
"""
MAX_COMPOSED_STEPS = 1_000_000
"""Steps of one mechanism beyond which its composition is stated as unbounded (inf).

Composition takes time that grows with the steps; a hostile plan asking for 10^12 would
hold the accountant (and the operator's `show`) for hours. Infinity is a valid upper bound,
far above any cap, and the site policy already refuses such studies for their compute.
"""
ACCOUNTANT = "pld"
"""What the ledger's figures are: recorded in each ledger, so a change is a migration."""

CALIBRATION_RTOL = 1e-3
_SIGMA_RANGE = (1e-2, 1e6)

# Opacus warns when the best order is an end of the grid. The bound is valid all the same
# (only not the tightest possible): at order 1024 for releases near the floor, at order 1.1
# for epsilons far above any cap, which calibration passes through while it searches.
warnings.filterwarnings(
    "ignore", message="Optimal order is the (smallest|largest) alpha", category=UserWarning
)


def _positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, found {type(value).__name__}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, found {value!r}.")
    return float(value)


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, found {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, found {value}.")
    return value


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number in (0, 1), found {delta!r}.")
    return float(delta)


@dataclass(frozen=True)
class DpEvent:
    """A Poisson-subsampled Gaussian mechanism applied `steps` times.

    Each step includes every record independently with probability `sample_rate` and adds
    Gaussian noise of standard deviation `noise_multiplier` times the L2 sensitivity. The
    accounting assumes exactly that: a loader that samples more often, or fixed-size batches,
    invalidates the stated epsilon. `sample_rate=1` is the plain Gaussian mechanism.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _positive_finite("noise_multiplier", self.noise_multiplier)
        )
        rate = _positive_finite("sample_rate", self.sample_rate)
        if rate > 1:
            raise ValueError(f"sample_rate must be in (0, 1], found {rate!r}.")
        object.__setattr__(self, "sample_rate", rate)
        _count("steps", self.steps, minimum=1)


def _history(events: Iterable[DpEvent]) -> list[tuple[float, float, int]]:
    """Opacus history entries, one per distinct (noise, rate), in a canonical order.

    RDP is additive, so merging equal mechanisms is exact; sorting makes the figure depend on
    the multiset of events only, never on the order a ledger happened to record them in.
    """
    steps: Counter[tuple[float, float]] = Counter()
    for event in events:
        if not isinstance(event, DpEvent):
            raise ValueError(f"events must be DpEvent values, found {type(event).__name__}.")
        steps[(event.noise_multiplier, event.sample_rate)] += event.steps
    return [(sigma, q, count) for (sigma, q), count in sorted(steps.items())]


def epsilon(events: Iterable[DpEvent], delta: float) -> float:
    """The (epsilon, delta)-DP guarantee of all `events` composed; 0.0 for none.

    The PLD of each distinct mechanism, self-composed for its steps, then all composed: the
    pessimistic estimate of dp-accounting's `PLDAccountant` for the same events.
    """
    delta = _check_delta(delta)
    history = _history(events)
    if not history:
        return 0.0
    if any(steps > MAX_COMPOSED_STEPS for _, _, steps in history):
        return math.inf
    return _composed_epsilon(tuple(history), delta)


@lru_cache(maxsize=1024)
def _composed_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """The PLD figure of one canonical history. A ledger recomposes the same history on
    every check of a call (FFT compositions, most of the accounting's time); the figure is a
    pure function of the history and delta, so it is kept."""
    composed = None
    for sigma, q, steps in history:
        one = _pld_per_step(sigma, q)
        series = one.self_compose(steps) if steps > 1 else one
        composed = series if composed is None else composed.compose(series)
    return float(composed.get_epsilon_for_delta(delta))


@lru_cache(maxsize=128)
def _pld_per_step(sigma: float, q: float) -> pld_lib.PrivacyLossDistribution:
    """The PLD of one step of the sampled Gaussian; building it is most of the cost."""
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivity=1.0,
        sampling_prob=q,
        value_discretization_interval=PLD_DISCRETIZATION,
        pessimistic_estimate=True,
        use_connect_dots=True,
    )


def rdp_epsilon(events: Iterable[DpEvent], delta: float) -> float:
    """The same guarantee by Renyi DP: the cross-check, never below the PLD figure.

    Opacus's RDPAccountant over `ALPHAS`: RDP composition [Mironov 2017] of the sampled
    Gaussian [Mironov et al. 2019], converted with Balle et al. 2020, Theorem 21.
    """
    delta = _check_delta(delta)
    history = _history(events)
    if not history:
        return 0.0
    # What RDPAccountant.get_epsilon computes, with the per-step RDP curve of each
    # (sigma, q) cached: a ledger composes the same few mechanisms on every call.
    rdp = sum(steps * _rdp_per_step(sigma, q) for sigma, q, steps in history)
    eps, _ = privacy_analysis.get_privacy_spent(orders=list(ALPHAS), rdp=rdp, delta=delta)
    return float(eps)


@lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one step of the sampled Gaussian at every order in ALPHAS (read-only)."""
    curve = privacy_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ALPHAS)
    curve = np.asarray(curve, dtype=float)
    curve.setflags(write=False)
    return curve


ACCOUNTANTS: dict[str, Callable[[Iterable[DpEvent], float], float]] = {
    "pld": epsilon,
    "rdp": rdp_epsilon,
}

TRAIN_PART, TEST_PART = "train", "test"


def parallel_epsilon(
    parts: Mapping[str, Iterable[DpEvent]], delta: float, accountant: str = ACCOUNTANT
) -> float:
    """The guarantee of events on disjoint parts of the data: the largest part's figure.

    Sound only when each record is in exactly one part by a function of that record alone,
    and each event reads one part (see the module docstring).
    """
    cost = _accountant(accountant)
    return max((cost(list(events), delta) for events in parts.values()), default=0.0)


def _accountant(name: str) -> Callable[[Iterable[DpEvent], float], float]:
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be 'pld' or 'rdp', found {name!r}.")
    return ACCOUNTANTS[name]


def epsilon_floor(delta: float, releases: int = 1) -> float:
    """The least epsilon `releases` Gaussian releases can be stated at (the most noise)."""
    delta = _check_delta(delta)
    return epsilon([DpEvent(_SIGMA_RANGE[1], 1.0, _count("releases", releases, minimum=1))], delta)


@dataclass(frozen=True)
class StudyBudget:
    """What one approved study will spend at one hospital, event by event.

    `train` is one round of DP-SGD (local_epochs passes of Poisson-sampled batches);
    `evaluation` is one noised-counts release of the model's test predictions.
    """

    train: DpEvent
    evaluation: DpEvent
    rounds: int
    evaluations: int

    def __post_init__(self) -> None:
        _count("rounds", self.rounds, minimum=1)
        _count("evaluations", self.evaluations, minimum=0)

    def planned_events(self) -> list[DpEvent]:
        return [self.train] * self.rounds + [self.evaluation] * self.evaluations

    def parts(self) -> dict[str, list[DpEvent]]:
        """The planned events by the part of the data they read."""
        return {
            TRAIN_PART: [self.train] * self.rounds,
            TEST_PART: [self.evaluation] * self.evaluations,
        }

    def total_epsilon(self, delta: float, accountant: str = ACCOUNTANT) -> float:
        """The study's whole cost: its parts composed in parallel (the larger of the two)."""
        return parallel_epsilon(self.parts(), delta, accountant)


def calibrate_study(
    *,
    epsilon: float,
    delta: float,
    n: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    evaluations: int,
    eval_share: float = 1.0,
    local_steps: int = 0,
    accountant: str = ACCOUNTANT,
) -> StudyBudget:
    """The least noise that keeps a whole study (training and evaluations) within epsilon.

    Training reads the training part and evaluations the test part, which compose in
    parallel, so each is calibrated on its own: the evaluation noise is the smallest (to
    0.1%) for which the evaluations cost at most `eval_share * epsilon` (all of it by
    default), the training noise the smallest for which the rounds cost at most `epsilon`.
    The result always satisfies `total_epsilon(delta) <= epsilon`. The training event
    samples at `batch_size / n`: the runtime must Poisson-sample at that rate (or lower) for
    the figure to hold.
    With no evaluations the evaluation noise is still set (as for one) but never spent.
    A round is `local_steps` steps if that is set, else `local_epochs * ceil(n / batch_size)`.
    Deterministic, so a hospital recalibrating the same study gets the same record.
    `accountant="rdp"` calibrates by the Renyi cross-check instead (to measure what PLD saves).
    """
    return _calibrate(
        float(_positive_finite("epsilon", epsilon)),
        _check_delta(delta),
        _count("n", n, minimum=1),
        _count("batch_size", batch_size, minimum=1),
        _count("local_epochs", local_epochs, minimum=1),
        _count("rounds", rounds, minimum=1),
        _count("evaluations", evaluations, minimum=0),
        _positive_finite("eval_share", eval_share),
        _count("local_steps", local_steps, minimum=0),
        _accountant(accountant),
    )


@lru_cache(maxsize=256)
def _calibrate(
    target: float,
    delta: float,
    n: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    evaluations: int,
    eval_share: float,
    local_steps: int,
    cost: Callable[[Iterable[DpEvent], float], float],
) -> StudyBudget:
    if batch_size > n:
        raise ValueError(f"batch_size must be at most n, found {batch_size} > {n}.")
    if not eval_share <= 1:
        raise ValueError(f"eval_share must be in (0, 1], found {eval_share!r}.")
    releases = max(evaluations, 1)
    floor = cost([DpEvent(_SIGMA_RANGE[1], 1.0, releases)], delta)
    if eval_share * target <= floor:
        raise ValueError(
            f"epsilon {target:g} is too small to account at delta {delta:g} (its evaluation "
            f"share must exceed {floor:.4f}); raise epsilon or eval_share."
        )
    sigma_eval = _smallest_sigma(
        lambda s: cost([DpEvent(s, 1.0, releases)], delta), eval_share * target
    )
    evaluation = DpEvent(sigma_eval, 1.0, 1)
    train_steps = local_steps or local_epochs * math.ceil(n / batch_size)
    rate = batch_size / n

    def budget(sigma: float) -> StudyBudget:
        return StudyBudget(DpEvent(sigma, rate, train_steps), evaluation, rounds, evaluations)

    sigma_train = _smallest_sigma(lambda s: cost(budget(s).parts()[TRAIN_PART], delta), target)
    return budget(sigma_train)


def _smallest_sigma(cost: Callable[[float], float], target: float) -> float:
    """The smallest noise (to CALIBRATION_RTOL) whose cost is within target.

    `cost` decreases with the noise and is close to a power law, so a secant step in log-log
    space lands near the answer; probing just either side of it closes the bracket in a few
    evaluations of the (slow) accountant. Bisection steps in when the secant does not help.
    """
    width = math.log1p(CALIBRATION_RTOL)
    # In log-noise: cost is above target at `low` (gap > 0) and within it at `high`.
    (low, g_low), (high, g_high) = _bracket(cost, target)
    while high - low > width:
        span = high - low
        guess = _secant(low, g_low, high, g_high)
        probes = [guess - 0.4 * width, guess + 0.4 * width]
        for x in (min(max(p, low + width / 4), high - width / 4) for p in probes):
            if low < x < high:
                g = _gap(cost, x, target)
                if g > 0:
                    low, g_low = x, g
                else:
                    high, g_high = x, g
        if high - low > min(span / 2, width):  # the secant did not halve the bracket
            mid = (low + high) / 2
            g = _gap(cost, mid, target)
            if g > 0:
                low, g_low = mid, g
            else:
                high, g_high = mid, g
    return math.exp(high)


def _gap(cost: Callable[[float], float], log_sigma: float, target: float) -> float:
    """log(cost / target): positive when over budget, +inf when the cost is unbounded."""
    value = cost(math.exp(log_sigma))
    return math.log(value / target) if value > 0 else -math.inf


def _secant(x0: float, g0: float, x1: float, g1: float) -> float:
    if not (math.isfinite(g0) and math.isfinite(g1)) or g0 == g1:
        return (x0 + x1) / 2
    return x1 - g1 * (x1 - x0) / (g1 - g0)


Point = tuple[float, float]


def _bracket(cost: Callable[[float], float], target: float) -> tuple[Point, Point]:
    """(infeasible, feasible) log-noises with their gaps, stepping from noise 1.

    A gap of g suggests moving log-noise by about g (cost ~ 1/noise); 20% more overshoots
    on purpose so the first step usually crosses the target.
    """
    lowest, highest = (math.log(s) for s in _SIGMA_RANGE)
    x, g = 0.0, _gap(cost, 0.0, target)
    step = 1.0
    while True:
        move = min(max(abs(g) * 1.2, 0.05), 3.0) if math.isfinite(g) else step
        nxt = min(max(x + (move if g > 0 else -move), lowest), highest)
        g_next = _gap(cost, nxt, target)
        if (g > 0) != (g_next > 0):
            return ((x, g), (nxt, g_next)) if g > 0 else ((nxt, g_next), (x, g))
        if nxt in (lowest, highest):
            if g_next <= 0:
                return (lowest, g_next), (lowest, g_next)  # even the least noise fits
            raise ValueError("no noise level reaches this epsilon; raise epsilon.")
        x, g, step = nxt, g_next, step * 2
