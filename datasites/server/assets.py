"""Build the assets a hospital hosts: the private training views and their mocks.

Privacy argument, in the order the code applies it:
- The identified source table (names, SSNs, dates...) stays in the hospital's `source/`
  folder and never enters syft; assets carry the clinical columns only.
- The privacy unit is the patient, so the EHR training view keeps one encounter per patient
  (the first, as the readmission literature does); DP-SGD's per-example guarantee then is a
  per-patient guarantee.
- Mocks come from the synthetic generator with their own seed and an id range no hospital
  uses. They are never derived from private rows, so showing them to a scientist reveals
  nothing about any patient.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from datasites.contract.mocks import MOCK_ID_START, MOCK_MARK
from synthetic.ehr import EHR_COLUMNS, generate_ehr
from synthetic.partition import split_train_test_patients
from synthetic.pathology import Stain, generate_pathmnist

EHR_TEST_FRACTION = 0.2
MOCK_EHR_ENCOUNTERS = {"train": 700, "test": 250}
MOCK_IMAGES = {"train": 300, "test": 120}
ASSETS = ("train", "test")


@dataclass(frozen=True)
class AssetPair:
    """One asset: the private value and its mock, plus what the hospital says about it."""

    name: str
    private: Any
    mock: Any
    description: str

    @property
    def rows(self) -> int:
        return _rows(self.private)

    @property
    def mock_rows(self) -> int:
        return _rows(self.mock)

    @property
    def usable_rows(self) -> int:
        """Rows a study trains or evaluates on (EHR drops death and hospice discharges):
        the n each study's noise is calibrated for, recorded so `show` need not fetch it."""
        if isinstance(self.private, dict):
            return _rows(self.private)
        from datasites.contract.encoding import usable_rows

        return int(usable_rows(self.private).sum())


def _rows(value: Any) -> int:
    return len(value["labels"]) if isinstance(value, dict) else len(value)


def mock_seed(hospital: str, dataset: str) -> int:
    """A seed for a mock that depends only on public names, never on private data."""
    digest = hashlib.sha256(f"mock:{hospital}:{dataset}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def ehr_training_view(table: pd.DataFrame) -> pd.DataFrame:
    """Identifiers removed and one encounter per patient: the first one."""
    clinical = table.loc[:, list(EHR_COLUMNS)]
    first = clinical.sort_values("encounter_id", kind="stable").drop_duplicates("patient_nbr")
    return first.reset_index(drop=True)


def ehr_assets(identified: pd.DataFrame, hospital: str, split_key: bytes) -> list[AssetPair]:
    """The `ehr` dataset's train and test assets, patient-disjoint, with their mocks; each
    patient's side follows from its id and the hospital's secret `split_key` alone."""
    train, test = split_train_test_patients(identified, EHR_TEST_FRACTION, split_key)
    base = mock_seed(hospital, "ehr")
    pairs = []
    for i, (name, part) in enumerate((("train", train), ("test", test))):
        mock = generate_ehr(
            MOCK_EHR_ENCOUNTERS[name],
            seed=base + i,
            id_start=MOCK_ID_START + i * 10_000_000,
            identifiers=False,
        )
        pairs.append(
            AssetPair(
                name=name,
                private=ehr_training_view(part),
                mock=ehr_training_view(mock),
                description=(
                    f"{name} split: one encounter per patient, the 50 columns of the UCI "
                    "Diabetes 130-US schema, identifiers removed; label `readmitted`."
                ),
            )
        )
    return pairs


def pathmnist_assets(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], hospital: str
) -> list[AssetPair]:
    """The `pathmnist` dataset's train and test assets (dicts of images and labels)."""
    base = mock_seed(hospital, "pathmnist")
    pairs = []
    for i, name in enumerate(ASSETS):
        images, labels = splits[name]
        mock_images, mock_labels = generate_pathmnist(
            MOCK_IMAGES[name], seed=base + i, stain=Stain.reference()
        )
        pairs.append(
            AssetPair(
                name=name,
                private={"images": images, "labels": labels},
                mock={"images": mock_images, "labels": mock_labels, MOCK_MARK: True},
                description=(
                    f"{name} split: 28x28 RGB H&E patches, uint8 (N, 28, 28, 3), labels "
                    "uint8 (N, 1) in 0-8 (PathMNIST classes)."
                ),
            )
        )
    return pairs


DATASET_DESCRIPTIONS = {
    "ehr": (
        "Diabetes inpatient encounters in the UCI Diabetes 130-US schema. Privacy unit: one "
        "patient (one encounter per patient). Task: 30-day readmission (`readmitted`)."
    ),
    "pathmnist": (
        "Colorectal H&E tissue patches in the PathMNIST format, 9 tissue classes. Privacy "
        "unit: one image patch."
    ),
}
