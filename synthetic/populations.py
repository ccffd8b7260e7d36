"""A family of named EHR federations, so a recipe is judged on more than the data it was tuned on.

The issue that introduced this (issue 14) found a recipe tuned on one synthetic population that
lost 0.07 AUROC on the real extract. Each member below changes one thing a real federation
varies in, away from `default` (the population calibrated to the real extract's learning
difficulty, `benchmarks/ehr_difficulty.py`):

- signal strength (`weak`, `strong`): centralized AUROC from about 0.62 to 0.72;
- how the signal spreads (`scattered`): many small effects instead of a few strong ones;
- prevalence (`rare`, `common`): 6% and 15% readmitted within 30 days;
- hospital size (`small_sites`, `large_sites`): about 2,000 and 25,000 patients each;
- case mix (`uniform`, `divergent`): identical hospitals, or hospitals far apart;
- the direction the federation drifts from the public reference (`elsewhere`).

Every member is a pure function of its fields and the seed: `hospitals(seed)` is the same
tables on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from synthetic.ehr import CaseMix, Signal, generate_ehr
from synthetic.partition import hospital_sizes

# The real extract: 101,766 encounters of about 70,000 patients (1.45 encounters each).
REAL_ENCOUNTERS = 101_766
ENCOUNTERS_PER_PATIENT = 1.45
HOSPITAL_ID_STRIDE = 10_000_000


@dataclass(frozen=True)
class Population:
    """A federation of hospitals: who their patients are, and how readmission depends on them."""

    name: str
    description: str
    signal: Signal = field(default_factory=Signal)
    encounters: int = REAL_ENCOUNTERS
    """Encounters over all hospitals."""
    hospitals_count: int = 5
    case_mix: float = 1.0
    """How far apart the hospitals' case mixes are: 0 identical, 1 as `CaseMix.for_hospital`,
    above 1 further apart."""
    drift: float = 0.55
    drift_seed: int = 3

    def sizes(self, seed: int) -> np.ndarray:
        """Encounters per hospital (uneven, as `launch.py` splits them)."""
        return hospital_sizes(self.encounters, self.hospitals_count, seed)

    def mixes(self, seed: int) -> list[CaseMix]:
        return [self._mix(index, seed) for index in range(self.hospitals_count)]

    def table(self, index: int, seed: int, rows: int, *, identifiers: bool = False) -> pd.DataFrame:
        """Hospital `index`'s extract of `rows` encounters (what `launch.py` hosts there)."""
        return generate_ehr(
            rows,
            seed=seed * 1_000 + index,
            case_mix=self._mix(index, seed),
            id_start=1 + index * HOSPITAL_ID_STRIDE,
            identifiers=identifiers,
            signal=self.signal,
        )

    def hospitals(self, seed: int) -> list[pd.DataFrame]:
        """Each hospital's extract, with disjoint ids."""
        return [self.table(i, seed, int(rows)) for i, rows in enumerate(self.sizes(seed))]

    def pooled(self, seed: int) -> pd.DataFrame:
        """All hospitals' extracts as one table: what a centralized analysis would see."""
        return pd.concat(self.hospitals(seed), ignore_index=True)

    def _mix(self, index: int, seed: int) -> CaseMix:
        mix = CaseMix.for_hospital(index, seed, drift=self.drift, drift_seed=self.drift_seed)
        if self.case_mix == 1.0:
            return mix
        default = CaseMix()
        k = self.case_mix

        def scaled(name: str, low: float, high: float, *, log: bool = False) -> float:
            base, value = getattr(default, name), getattr(mix, name)
            if log:
                moved = math.exp(math.log(base) + k * (math.log(value) - math.log(base)))
            else:
                moved = base + k * (value - base)
            return round(min(max(moved, low), high), 3)

        return replace(
            mix,
            age_shift=scaled("age_shift", -20.0, 20.0),
            acuity=scaled("acuity", 0.25, 4.0, log=True),
            length_of_stay=scaled("length_of_stay", 0.5, 2.0, log=True),
            missingness=scaled("missingness", 0.1, 10.0, log=True),
            african_american_share=scaled("african_american_share", 0.0, 0.95),
            female_share=scaled("female_share", 0.3, 0.7),
        )


def _member(name: str, description: str, **changes: object) -> Population:
    return Population(name=name, description=description, **changes)  # type: ignore[arg-type]


_PATIENTS_SMALL, _PATIENTS_LARGE = 2_000, 25_000
POPULATIONS: dict[str, Population] = {
    p.name: p
    for p in (
        _member("default", "calibrated to the real extract's learning difficulty"),
        _member("weak", "weaker signal", signal=Signal(strength=0.68)),
        _member("strong", "stronger signal", signal=Signal(strength=1.1)),
        _member(
            "scattered",
            "signal spread over many small effects",
            signal=Signal(strength=0.55, diffuse=0.45),
        ),
        _member("rare", "6% readmitted", signal=Signal(prevalence=0.06)),
        _member("common", "15% readmitted", signal=Signal(prevalence=0.15)),
        _member(
            "small_sites",
            "five hospitals of about 2,000 patients",
            encounters=round(5 * _PATIENTS_SMALL * ENCOUNTERS_PER_PATIENT),
        ),
        _member(
            "large_sites",
            "four hospitals of about 25,000 patients",
            encounters=round(4 * _PATIENTS_LARGE * ENCOUNTERS_PER_PATIENT),
            hospitals_count=4,
        ),
        _member("uniform", "identical case mix at every hospital", case_mix=0.0),
        _member("divergent", "case mixes twice as far apart", case_mix=2.0),
        _member("elsewhere", "a federation drifted another way", drift_seed=1),
    )
}
