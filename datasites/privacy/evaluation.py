"""Evaluation releases: noised aggregate counts, never predictions or per-patient scores.

The counts' layout and sensitivity are the contract's (`datasites.contract.release`);
discrete Gaussian noise of `noise_multiplier` times that sensitivity on every cell is the
Gaussian mechanism on integers (`datasites.privacy.noise`: exact, OS-random, no float to
round), accounted as `release_event(noise_multiplier)`. Every metric the scientist computes
from the noised counts is post-processing and costs nothing more.
"""

from __future__ import annotations

import numpy as np

from datasites.contract.release import Counts, sensitivity
from datasites.privacy.accounting import DpEvent
from datasites.privacy.noise import discrete_gaussian


def release_event(noise_multiplier: float) -> DpEvent:
    """The ledger event of one `noisy` release: the Gaussian mechanism, applied once."""
    return DpEvent(noise_multiplier, 1.0, 1)


def noisy(counts: Counts, *, noise_multiplier: float) -> Counts:
    """The Gaussian mechanism on integers: N_Z(0, (noise_multiplier * sensitivity)^2) per cell.

    Charge it to the ledger as `release_event(noise_multiplier)` before it leaves. The noise
    is discrete Gaussian from the OS's CSPRNG (slightly larger than stated, so that the
    continuous event charged dominates it), and the released cells are int64.
    """
    std = release_event(noise_multiplier).noise_multiplier * sensitivity(counts)

    def add(cells: np.ndarray) -> np.ndarray:
        cells = np.asarray(cells, dtype=np.int64)
        return cells + discrete_gaussian(std, cells.shape)

    if isinstance(counts, dict):
        return {key: add(counts[key]) for key in ("confusion", "ovr")}
    return add(counts)
