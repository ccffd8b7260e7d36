"""The obviously-correct reference the privacy tests compare against.

Opacus's own RDP accountant, stepped once per DP-SGD step, mechanism by mechanism: slow,
but it is the accountant everyone trusts, with no shortcut of ours in the way.
"""

from __future__ import annotations

from collections import Counter

from opacus.accountants import RDPAccountant

from datasites.accounting import ALPHAS, DpEvent

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
