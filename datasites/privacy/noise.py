"""Noise that leaks nothing through its own representation.

A Gaussian mechanism is private on the real line; on a computer, the float an addition
returns depends on the true value through its rounding, and an attacker who sees the exact
bits of `value + noise` can tell adjacent inputs apart [Mironov, CCS 2012, for Laplace;
Jin et al., "Are We There Yet? Timing and Floating-Point Attacks on Differential Privacy
Systems", S&P 2022, for Opacus's Gaussian]. A predictable generator is worse still: whoever
can replay it subtracts the noise. So:

- Counts (evaluation histograms, the loss sum on a fixed grid, a dataset's size) get
  discrete Gaussian noise [Canonne, Kamath & Steinke, "The Discrete Gaussian for
  Differential Privacy", NeurIPS 2020], sampled exactly in integer arithmetic from the OS's
  CSPRNG (`secrets`): the release is an integer, there is no rounding to exploit. Its privacy
  matches the continuous Gaussian's to within about 1%; `DISCRETE_NOISE_FACTOR` adds 2% to the
  noise so that the continuous event the ledger charges dominates it (tested against
  dp-accounting's exact discrete-Gaussian PLD over the noise levels a study uses).
- Training noise on float weights is drawn the way Opacus's `secure_mode` does: each value is
  the sum of four Gaussian draws halved [Holohan & Braghin, "Secure Random Sampling in
  Differential Privacy", ESORICS 2021], which smooths the float artefacts, and every draw
  comes from a ChaCha20 stream keyed with 256 bits from the OS (`datasites.privacy.stream`;
  Opacus would use torchcsprng, which no longer builds). A seeded generator is no source at
  any seed size: torch's CPU generator keeps only 32 bits of its seed, and an audit
  regenerated a round's noise from it (issue 26).
"""

from __future__ import annotations

import math
import secrets
from fractions import Fraction

import numpy as np
import torch

from datasites.privacy.stream import RandomStream

DISCRETE_NOISE_FACTOR = 1.02
"""Discrete Gaussian noise is this much larger than the continuous event charged for it."""

_SIGMA2_GRID = 1024  # sigma^2 is rounded up to a multiple of 1/1024: exact, and never less
_RNG = secrets.SystemRandom()


def discrete_gaussian(sigma: float, size: int | tuple[int, ...] = ()) -> np.ndarray:
    """int64 draws of the discrete Gaussian N_Z(0, s^2), s = sigma * DISCRETE_NOISE_FACTOR.

    P(x) is proportional to exp(-x^2 / (2 s^2)) on the integers. Exact: Algorithm 3 of
    Canonne, Kamath & Steinke (rejection from a discrete Laplace), with every random choice
    an OS-random integer and every probability a fraction; nothing rounds.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number, found {sigma!r}.")
    if not math.isfinite(sigma):
        raise ValueError(f"sigma must be finite, found {sigma!r}.")
    scaled = sigma * DISCRETE_NOISE_FACTOR
    sigma2 = Fraction(math.ceil(scaled * scaled * _SIGMA2_GRID), _SIGMA2_GRID)
    count = int(np.prod(size, dtype=np.int64))
    draws = [_sample_dgauss(sigma2) for _ in range(count)]
    return np.asarray(draws, dtype=np.int64).reshape(size)


def secure_gaussian(numel: int, std: float, stream: RandomStream) -> torch.Tensor:
    """`numel` float32 draws of N(0, std^2), each the halved sum of four (Opacus secure_mode),
    summed in float64 from the cryptographic `stream`."""
    draws = stream.normal(4 * numel).view(4, numel)
    return draws.sum(0).mul_(std / 2).float()


# -- the exact sampler (CKS20, Algorithms 1-3; after the authors' reference code) ----------


def _bernoulli(p: Fraction) -> bool:
    return _RNG.randrange(p.denominator) < p.numerator


def _bernoulli_exp_at_most_1(x: Fraction) -> bool:
    """True with probability exp(-x), 0 <= x <= 1 (von Neumann's series)."""
    k = 1
    while _bernoulli(x / k):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(x: Fraction) -> bool:
    """True with probability exp(-x), x >= 0."""
    while x > 1:
        if not _bernoulli_exp_at_most_1(Fraction(1)):
            return False
        x -= 1
    return _bernoulli_exp_at_most_1(x)


def _geometric_exp(x: Fraction) -> int:
    """A geometric draw with P(k) proportional to exp(-k x), x > 0."""
    s, t = x.numerator, x.denominator
    while True:
        u = _RNG.randrange(t)
        if _bernoulli_exp(Fraction(u, t)):
            break
    v = 0
    while _bernoulli_exp(Fraction(1)):
        v += 1
    return (v * t + u) // s


def _discrete_laplace(t: int) -> int:
    """P(k) proportional to exp(-|k| / t) on the integers."""
    while True:
        negative = _bernoulli(Fraction(1, 2))
        magnitude = _geometric_exp(Fraction(1, t))
        if not (negative and magnitude == 0):
            return -magnitude if negative else magnitude


def _sample_dgauss(sigma2: Fraction) -> int:
    t = math.isqrt(sigma2.numerator // sigma2.denominator) + 1
    while True:
        candidate = _discrete_laplace(t)
        bias = (abs(candidate) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(bias):
            return candidate
