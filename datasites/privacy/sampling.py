"""Poisson sampling into batches of one fixed size, so that a step's work follows public
figures only.

The accounted mechanism (`datasites.privacy.dp`) samples each row independently with
probability q; the sampled count k ~ Binomial(n, q) follows the exact private n, and a step
that trains on k rows takes time that follows it too (issue 26). Here every step:

- flips one coin per row of a public row bound R (the released n plus a margin, see
  `TrainSpec.row_bound`), whatever the real count; coins past the real rows are discarded;
- returns exactly B_max row indices, the sampled ones first and padding after, with a mask:
  the trainer gives a padding row a zero clipping factor, so it does the same forward and
  backward work as a real one and changes nothing;
- keeps a uniformly random B_max of the sampled rows in the rare step that sampled more.

That is truncated Poisson sampling [Chua et al., "Scalable DP-SGD: Shuffling vs. Poisson
Subsampling", NeurIPS 2024; JAX Privacy's padded batches]. It equals the accounted
mechanism except on an overflow, so with p = P(overflow) per step and T steps the
(epsilon, delta) of the untruncated mechanism becomes (epsilon, delta + (1 + e^epsilon) T p)
(each of two neighbours differs from its untruncated run with probability at most T p). B_max
keeps p below `OVERFLOW_PER_STEP` = 1e-15 by a Chernoff bound for Binomial(R, q), which
dominates the count of any dataset of at most R rows; for the default recipes' whole studies
that adds under 2e-10 to delta at epsilon 5 (tests/unit/test_sampling.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from datasites.privacy.stream import RandomStream

__all__ = ["OVERFLOW_PER_STEP", "PoissonBatches", "batch_bound", "overflow_bound"]

OVERFLOW_PER_STEP = 1e-15


def overflow_bound(rows: int, rate: float, size: int) -> float:
    """Chernoff's bound on P(Binomial(rows, rate) > size): exp(-rows KL((size+1)/rows || rate))."""
    if size >= rows:
        return 0.0
    share = (size + 1) / rows
    if share <= rate:
        return 1.0
    return math.exp(-rows * _kl(share, rate))


def batch_bound(rows: int, rate: float, tail: float = OVERFLOW_PER_STEP) -> int:
    """The least B with overflow_bound(rows, rate, B) <= tail: the padded batch size."""
    low, high = max(0, math.floor(rows * rate) - 1), rows
    while low < high:  # overflow_bound decreases in B; it is 0 at B = rows
        middle = (low + high) // 2
        if overflow_bound(rows, rate, middle) <= tail:
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
    """Each step's Poisson sample of `real` rows at `rate`, as `size` indices and a mask.

    `bound` is the public row bound R: every step flips max(R, real) coins, so with R at
    least the real count the work is that of R whatever the data holds. `tail` is the
    overflow probability the batch size allows (tests set a large one to see truncation).
    `padded=False` returns the sampled rows alone, whose work follows the data: only for
    measuring what padding costs (benchmarks/dp_throughput.py).
    """

    def __init__(
        self,
        *,
        real: int,
        bound: int,
        rate: float,
        stream: RandomStream,
        tail: float = OVERFLOW_PER_STEP,
        padded: bool = True,
    ) -> None:
        self.real, self.rate, self.stream, self.padded = real, rate, stream, padded
        self.coins = max(bound, real)
        self.size = max(1, batch_bound(bound, rate, tail))
        self._is_real = np.arange(self.coins) < real
        self._slots = torch.arange(self.size)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(indices, mask, k): `size` row indices, True for the k sampled rows, which come
        first; padding indices are 0 and masked."""
        chosen = np.flatnonzero(self.stream.bernoulli(self.coins, self.rate) & self._is_real)
        if chosen.size > self.size:
            # Overflow (probability < OVERFLOW_PER_STEP): a uniform subset of the sample.
            chosen = chosen[self.stream.subset(chosen.size, self.size)]
        if not self.padded:
            return torch.from_numpy(chosen), torch.ones(chosen.size, dtype=torch.bool), chosen.size
        indices = np.zeros(self.size, dtype=np.int64)
        indices[: chosen.size] = chosen
        return torch.from_numpy(indices), self._slots < chosen.size, int(chosen.size)
