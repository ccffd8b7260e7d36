"""Splits across hospitals: uneven, skewed, and always disjoint by patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthetic.ehr import generate_ehr
from synthetic.partition import (
    class_proportions,
    hospital_sizes,
    split_by_label,
    split_patients,
    split_train_test_patients,
)


def test_hospital_sizes_are_uneven_and_exact() -> None:
    sizes = hospital_sizes(20_000, 5, seed=1)
    assert sizes.sum() == 20_000 and (sizes > 0).all()
    assert len(set(sizes.tolist())) == 5
    assert sizes.max() / sizes.min() > 1.2
    assert (hospital_sizes(20_000, 5, seed=1) == sizes).all()


def test_tiny_totals_still_give_every_hospital_data() -> None:
    assert hospital_sizes(5, 5, seed=0).tolist() == [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="cannot split"):
        hospital_sizes(3, 5, seed=0)


def test_label_split_is_a_partition_with_skew() -> None:
    labels = np.random.default_rng(0).integers(0, 9, size=9_000)
    parts = split_by_label(labels, 4, alpha=0.3, seed=2)
    joined = np.concatenate(parts)
    assert joined.size == labels.size and np.unique(joined).size == labels.size
    shares = np.array([np.bincount(labels[p], minlength=9) / p.size for p in parts])
    assert np.abs(shares - shares.mean(axis=0)).max() > 0.1


def test_large_alpha_is_nearly_iid() -> None:
    props = class_proportions(4, 9, alpha=1e4, seed=0)
    assert np.abs(props - 1 / 9).max() < 0.02
    with pytest.raises(ValueError, match="alpha"):
        class_proportions(4, 9, alpha=0, seed=0)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return generate_ehr(6_000, seed=4, identifiers=False)


def test_patients_are_disjoint_across_hospitals(table: pd.DataFrame) -> None:
    parts = split_patients(table, 3, seed=1)
    assert sum(len(p) for p in parts) == len(table)
    owners = [set(p["patient_nbr"]) for p in parts]
    assert all(owners) and sum(len(o) for o in owners) == table["patient_nbr"].nunique()


def test_case_mix_differs_across_hospitals(table: pd.DataFrame) -> None:
    parts = split_patients(table, 3, seed=1, case_mix=1.5)
    emergency = [float((p["admission_type_id"] == 1).mean()) for p in parts]
    old = [float(p["age"].isin(["[70-80)", "[80-90)", "[90-100)"]).mean()) for p in parts]
    assert max(emergency) - min(emergency) > 0.05 or max(old) - min(old) > 0.05


KEY = bytes(range(32))


def test_train_test_split_is_patient_disjoint_and_fixed(table: pd.DataFrame) -> None:
    train, test = split_train_test_patients(table, 0.2, KEY)
    assert len(train) + len(test) == len(table)
    assert not set(train["patient_nbr"]) & set(test["patient_nbr"])
    share = test["patient_nbr"].nunique() / table["patient_nbr"].nunique()
    assert share == pytest.approx(0.2, abs=0.02)
    again, _ = split_train_test_patients(table, 0.2, KEY)
    pd.testing.assert_frame_equal(train, again)


def sides(df: pd.DataFrame, key: bytes) -> dict[int, str]:
    train, test = split_train_test_patients(df, 0.2, key)
    return {
        **dict.fromkeys(train["patient_nbr"], "train"),
        **dict.fromkeys(test["patient_nbr"], "test"),
    }


def test_adding_or_removing_a_patient_moves_nobody_else(table: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    patients = table["patient_nbr"].unique()
    before = sides(table, KEY)
    for _ in range(40):
        gone = rng.choice(patients)
        after = sides(table[table["patient_nbr"] != gone], KEY)
        added = pd.concat(
            [
                table,
                table[table["patient_nbr"] == gone].assign(
                    patient_nbr=int(patients.max()) + int(rng.integers(1, 10**6))
                ),
            ]
        )
        grown = sides(added, KEY)
        assert {p: s for p, s in before.items() if p != gone} == after
        assert all(grown[p] == s for p, s in before.items())


def test_the_split_depends_on_the_secret_key(table: pd.DataFrame) -> None:
    other = sides(table, bytes(32))
    mine = sides(table, KEY)
    assert sum(mine[p] != other[p] for p in mine) > 0.2 * len(mine)
    with pytest.raises(ValueError, match="16 secret bytes"):
        split_train_test_patients(table, 0.2, b"short")
