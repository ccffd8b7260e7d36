"""Poisson sampling whose work over a round follows public figures only.

The accounted mechanism (`datasites.privacy.dp`) samples each row independently with
probability q; the sampled count k ~ Binomial(n, q) follows the exact private n, and a step
that trains on k rows takes time that follows it too (issue 26). What a scientist can time
is a whole call, so the round is what gets a fixed amount of work:

- every step flips one coin per row of a public row bound R (the released n plus a margin,
  see `TrainSpec.row_bound`), whatever the real count; coins past the real rows are
  discarded, and the step trains on exactly the rows sampled (the mechanism as accounted:
  no truncation, no fixed batch);
- after the round's steps, masked passes (zero rows, clipping factor 0: the same forward and
  backward work as real rows, no effect on the weights) bring the rows processed up to the
  round's budget B, in a number of passes fixed by public figures. B is the least size
  with P(Binomial(T R, q) > B) at most `OVERFLOW_PER_ROUND`, the exact binomial tail
  (`overflow_probability`, summed in log space; Chernoff's bound, `overflow_bound`, gave a
  budget about 1% larger at the same tail); the round's sampled total is Binomial(T n, q)
  with n <= R, so it exceeds B that rarely.

A round that does exceed B just takes longer: its output is the accounted mechanism's, and
its time says "more than B rows were sampled" with probability at most p per round, so over
m rounds the guarantee is (epsilon, delta + (1 + e^epsilon) m p) (either neighbour shows the
event with probability at most m p). At the default recipes that adds under 1e-8 to delta
(tests/unit/test_sampling.py). Per-step padding to a fixed batch would cost 1.4-1.75x the
expected work at the same tail; the round's budget costs a few percent at full scale.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from datasites.privacy.stream import RandomStream

__all__ = [
    "OVERFLOW_PER_ROUND",
    "PoissonBatches",
    "batch_bound",
    "overflow_bound",
    "overflow_probability",
]

OVERFLOW_PER_ROUND = 1e-12


def overflow_bound(rows: int, rate: float, size: int) -> float:
    """Chernoff's bound on P(Binomial(rows, rate) > size): exp(-rows KL((size+1)/rows || rate))."""
    if size >= rows:
        return 0.0
    share = (size + 1) / rows
    if share <= rate:
        return 1.0
    return math.exp(-rows * _kl(share, rate))


def overflow_probability(rows: int, rate: float, size: int) -> float:
    """P(Binomial(rows, rate) > size), exactly (up to float rounding, a relative 1e-9 here).

    Each term's logarithm comes from lgamma; the sum starts at the term nearest the mode and
    runs away from it (the terms fall off geometrically there) until they no longer change
    it: upwards from size + 1 for a tail above the mode, else as one minus the lower tail."""
    if size >= rows or rate <= 0.0:
        return 0.0
    if size < 0:
        return 1.0
    if rate >= 1.0:
        return 1.0
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    head = math.lgamma(rows + 1)

    def log_term(k: int) -> float:
        return (
            head
            - math.lgamma(k + 1)
            - math.lgamma(rows - k + 1)
            + k * log_rate
            + (rows - k) * log_rest
        )

    mode = math.floor((rows + 1) * rate)
    if size + 1 >= mode:
        return _log_space_sum(log_term, range(size + 1, rows + 1))
    return max(0.0, 1.0 - _log_space_sum(log_term, range(size, -1, -1)))


def _log_space_sum(log_term: Any, ks: range) -> float:
    """The sum of exp(log_term(k)) over `ks`, whose terms decrease: relative to the first
    term, stopping once a term is below 1e-20 of the running sum."""
    first = log_term(ks[0])
    total = 0.0
    for k in ks:
        term = math.exp(log_term(k) - first)
        total += term
        if term < 1e-20 * total:
            break
    return total * math.exp(first)


@lru_cache(maxsize=256)
def batch_bound(rows: int, rate: float, tail: float = OVERFLOW_PER_ROUND) -> int:
    """The least B with P(Binomial(rows, rate) > B) <= tail: a round's row budget.

    The probability is computed with a relative margin of 1e-6 on top of its float
    rounding, so that the budget never falls short of the exact one. Remembered: a study
    asks for the same public figures every round (the search takes about 0.6 ms)."""
    low, high = max(0, math.floor(rows * rate) - 1), rows
    while low < high:  # the tail decreases in B; it is 0 at B = rows
        middle = (low + high) // 2
        if overflow_probability(rows, rate, middle) * (1 + 1e-6) <= tail:
            high = middle
        else:
            low = middle + 1
    return low


def _kl(share: float, rate: float) -> float:
    """KL(Bernoulli(share) || Bernoulli(rate)), with 0 log 0 = 0."""
    total = share * math.log(share / rate)
    if share < 1.0:
        total += (1.0 - share) * math.log((1.0 - share) / (1.0 - rate))
    return total


class PoissonBatches:
    """A round's Poisson samples of `real` rows at `rate`, and the padding that fixes its work.

    `bound` is the public row bound R: every step flips max(R, real) coins, so with R at
    least the real count the coins are R's whatever the data holds. `steps` is the round's
    step count (public: the plan's), which sets the budget. `tail` is the overflow
    probability the budget allows (tests set a large one). `padded=False` skips the padding,
    so that the round's work follows the data: only for measuring what padding costs
    (benchmarks/dp_throughput.py).
    """

    def __init__(
        self,
        *,
        real: int,
        bound: int,
        rate: float,
        steps: int,
        stream: RandomStream,
        tail: float = OVERFLOW_PER_ROUND,
        padded: bool = True,
    ) -> None:
        self.real, self.rate, self.stream, self.padded = real, rate, stream, padded
        self.coins = max(bound, real)
        self.budget = batch_bound(self.coins * steps, rate, tail)
        expected = bound * rate
        # Passes of about one expected batch each, as many as the public figures expect.
        self.passes = max(1, math.ceil((self.budget - steps * expected) / max(expected, 1.0)))
        self.sampled = 0
        self._is_real = np.arange(self.coins) < real

    def draw(self) -> tuple[torch.Tensor, int]:
        """One step's sample: the indices of the sampled real rows, and their count."""
        chosen = np.flatnonzero(self.stream.bernoulli(self.coins, self.rate) & self._is_real)
        self.sampled += int(chosen.size)
        return torch.from_numpy(chosen), int(chosen.size)

    def padding(self) -> list[int]:
        """The sizes of the masked passes that bring the round's rows up to its budget:
        always `passes` of them (some may be empty after a round that sampled more)."""
        if not self.padded:
            return []
        left = max(0, self.budget - self.sampled)
        share, extra = divmod(left, self.passes)
        return [share + (1 if i < extra else 0) for i in range(self.passes)]
