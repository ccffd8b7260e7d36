"""A hospital's identified source data, kept in its own folder and never given to syft.

A real hospital would point these at its EHR extract and its slide archive; in the local
federation they are written once by `launch.py` and read back on every start, so a
relaunch rebuilds the same assets without regenerating anything.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from datasites.site.paths import EHR_SOURCE_FILE as EHR_FILE
from datasites.site.paths import PATHMNIST_SOURCE_FILE as PATHMNIST_FILE
from datasites.site.paths import HospitalConfig
from synthetic.ehr import load_ehr_csv, write_ehr_csv
from synthetic.pathology import load_pathmnist_npz, save_pathmnist_npz


def _private_dir(config: HospitalConfig) -> None:
    config.source_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.source_dir, 0o700)


def has_sources(config: HospitalConfig) -> bool:
    return all((config.source_dir / f).exists() for f in (EHR_FILE, PATHMNIST_FILE))


def write_sources(
    config: HospitalConfig,
    ehr: pd.DataFrame,
    pathmnist: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """Write both source files (each atomically) into an owner-only folder."""
    _private_dir(config)
    write_ehr_csv(ehr, config.source_dir / EHR_FILE)
    save_pathmnist_npz(config.source_dir / PATHMNIST_FILE, pathmnist)
    for name in (EHR_FILE, PATHMNIST_FILE):
        os.chmod(config.source_dir / name, 0o600)


def read_ehr(config: HospitalConfig) -> pd.DataFrame:
    return load_ehr_csv(config.source_dir / EHR_FILE)


def read_pathmnist(config: HospitalConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return load_pathmnist_npz(config.source_dir / PATHMNIST_FILE)
