"""The obviously-correct references the privacy tests compare against.

dp-accounting's own PLD accountant on a 10x finer grid, each event composed as it came, and
Opacus's own RDP accountant, stepped once per DP-SGD step: slow, but they are the
accountants everyone trusts, with no shortcut of ours in the way.
"""

from __future__ import annotations

from collections import Counter

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from opacus.accountants import RDPAccountant

from datasites.privacy.accounting import ALPHAS, DpEvent

DELTA = 1e-5


def opacus_epsilon(events: list[DpEvent], delta: float = DELTA) -> float:
    accountant = RDPAccountant()
    steps: Counter[tuple[float, float]] = Counter()
    for event in events:
        steps[(event.noise_multiplier, event.sample_rate)] += event.steps
    for (sigma, q), count in sorted(steps.items()):
        for _ in range(count):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta=delta, alphas=list(ALPHAS))


def pld_epsilon(events: list[DpEvent], delta: float = DELTA) -> float:
    """dp-accounting's PLD accountant at grid 1e-4 (the ledger uses 1e-3), event by event."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for event in events:
        mechanism = dp_accounting.GaussianDpEvent(event.noise_multiplier)
        if event.sample_rate < 1:
            mechanism = dp_accounting.PoissonSampledDpEvent(event.sample_rate, mechanism)
        accountant.compose(mechanism, event.steps)
    return accountant.get_epsilon(delta)


def agrees_with_pld(stated: float, events: list[DpEvent], delta: float = DELTA) -> bool:
    """Whether `stated` is the PLD figure of `events` to the ledger grid's rounding.

    Pessimistic on a coarser grid: never below the finer figure, above it by at most 0.5%.
    """
    reference = pld_epsilon(events, delta)
    return reference * (1 - 1e-6) <= stated <= reference * 1.005 + 1e-3
