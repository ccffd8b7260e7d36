"""Give each local hospital its source data: generated, or a share of real files.

Synthetic hospitals differ the way real ones do: sizes (log-normal), EHR case mix
(`CaseMix.for_hospital`), pathology label skew (Dirichlet) and stain (`Stain.for_hospital`).
Real files are validated before anything is written, then split patient-disjointly with
the same kinds of heterogeneity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datasites.server.sources import write_sources
from datasites.site.paths import HospitalConfig
from synthetic.ehr import load_ehr_csv
from synthetic.partition import class_proportions, hospital_sizes, split_by_label, split_patients
from synthetic.pathology import CLASS_SHARES, Stain, generate_pathmnist, load_pathmnist_npz
from synthetic.populations import POPULATIONS

Splits = dict[str, tuple[np.ndarray, np.ndarray]]

# Per hospital at --scale small (the tests' federations) and medium (the demo's: EHR test
# sets large enough that an AUROC at epsilon 1 reads clear of chance, about 750 positives in
# all); --scale full spreads the real datasets' sizes instead.
SMALL = {"encounters": 4_000, "train_images": 2_000, "test_images": 500}
MEDIUM = SMALL | {"encounters": 12_000}
FULL = {"encounters": 101_766, "train_images": 89_996 + 10_004, "test_images": 7_180}


@dataclass(frozen=True)
class DataPlan:
    """How much data each hospital gets and how heterogeneous the federation is."""

    hospitals: int
    scale: str
    seed: int
    alpha: float
    population: str = "default"

    def totals(self) -> dict[str, int]:
        if self.scale == "full":
            return dict(FULL) | {"encounters": POPULATIONS[self.population].encounters}
        per_hospital = MEDIUM if self.scale == "medium" else SMALL
        return {k: v * self.hospitals for k, v in per_hospital.items()}

    def sizes(self, key: str) -> np.ndarray:
        return hospital_sizes(self.totals()[key], self.hospitals, self.seed)


def hospital_seed(seed: int, hospital: str) -> int:
    """The seed of one hospital set up on its own (`python -m datasites init`).

    A federation draws all its hospitals from one seed, each by its index; a hospital set
    up alone is always index 0 of a federation of one, so its seed also depends on its
    name: two hospitals initialised with the same --seed get different data, and the same
    name and seed always the same data. Kept below 10**6 so the generators' derived seeds
    stay within numpy's 32-bit legacy range.
    """
    digest = hashlib.sha256(f"{seed}/{hospital}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000


def single_hospital_plan(hospital: str, scale: str, seed: int, alpha: float) -> DataPlan:
    """The data plan of one hospital set up on its own: a federation of one."""
    return DataPlan(1, scale, hospital_seed(seed, hospital), alpha)


@dataclass(frozen=True)
class RealInputs:
    """Real files given on the command line, already validated."""

    ehr: pd.DataFrame | None = None
    pathmnist: Splits | None = None


def load_real_inputs(ehr_csv: Path | None, pathmnist_npz: Path | None) -> RealInputs:
    """Read and validate real files up front (DataFormatError names what is wrong)."""
    return RealInputs(
        ehr=load_ehr_csv(ehr_csv) if ehr_csv else None,
        pathmnist=load_pathmnist_npz(pathmnist_npz) if pathmnist_npz else None,
    )


def synthetic_ehr(plan: DataPlan, index: int) -> pd.DataFrame:
    rows = int(plan.sizes("encounters")[index])
    return POPULATIONS[plan.population].table(index, plan.seed, rows, identifiers=True)


def synthetic_pathmnist(plan: DataPlan, index: int) -> Splits:
    shares = class_proportions(
        plan.hospitals, len(CLASS_SHARES), plan.alpha, plan.seed, base=CLASS_SHARES
    )[index]
    stain = Stain.for_hospital(index, plan.seed)
    splits = {}
    for offset, (split, key) in enumerate((("train", "train_images"), ("test", "test_images"))):
        n = max(
            1,
            round(
                plan.sizes("train_images")[index]
                * plan.totals()[key]
                / plan.totals()["train_images"]
            ),
        )
        splits[split] = generate_pathmnist(
            n,
            seed=plan.seed * 1_000 + index * 2 + offset + 500_000,
            stain=stain,
            class_shares=shares,
        )
    return splits


def _pool(splits: Splits, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    present = [splits[n] for n in names if n in splits]
    return np.concatenate([p[0] for p in present]), np.concatenate([p[1] for p in present])


def real_pathmnist_parts(plan: DataPlan, splits: Splits) -> list[Splits]:
    """Train (+val) and test each split with the same per-hospital label skew and sizes."""
    train = _pool(splits, ("train", "val"))
    test = _pool(splits, ("test",))
    parts: list[Splits] = [{} for _ in range(plan.hospitals)]
    for name, (images, labels) in (("train", train), ("test", test)):
        for h, idx in enumerate(split_by_label(labels, plan.hospitals, plan.alpha, plan.seed)):
            parts[h][name] = (images[idx], labels[idx])
    return parts


def plan_sources(
    plan: DataPlan,
    configs: list[HospitalConfig],
    missing: list[HospitalConfig],
    real: RealInputs,
    log: Callable[[str], None],
) -> None:
    """Write source files for the hospitals in `missing` (others keep theirs)."""
    ehr_parts = (
        split_patients(real.ehr, plan.hospitals, plan.seed) if real.ehr is not None else None
    )
    image_parts = real_pathmnist_parts(plan, real.pathmnist) if real.pathmnist else None
    for config in missing:
        index = configs.index(config)
        ehr = ehr_parts[index] if ehr_parts else synthetic_ehr(plan, index)
        images = image_parts[index] if image_parts else synthetic_pathmnist(plan, index)
        write_sources(config, ehr, images)
        log(
            f"  {config.name}: {len(ehr):,} encounters, {len(images['train'][1]):,} train and "
            f"{len(images['test'][1]):,} test images "
            f"({'real' if real.ehr is not None else 'synthetic'} EHR, "
            f"{'real' if real.pathmnist else 'synthetic'} images)"
        )
