"""Split a dataset across hospitals the way real federations are split: unevenly.

Real hospitals differ in size, in case mix (an old rural population, a trauma centre) and,
for pathology, in which tissue classes they see. Federated learning that only works on IID
splits is not worth shipping, so every split here is deliberately heterogeneous, always
disjoint by patient (the unit of privacy), and deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

PATIENT_COLUMN = "patient_nbr"


def _check_counts(hospitals: int, total: int) -> None:
    if hospitals < 1:
        raise ValueError(f"hospitals must be at least 1, found {hospitals}.")
    if total < hospitals:
        raise ValueError(f"cannot split {total} records over {hospitals} hospitals.")


def size_weights(hospitals: int, seed: int, *, spread: float = 0.35) -> np.ndarray:
    """Relative hospital sizes, summing to 1, each within about (1 +- spread) of the mean.

    Drawn from a log-normal so no hospital is empty and the largest is a few times the
    smallest, as between a district hospital and a university hospital.
    """
    rng = np.random.default_rng([seed, 101])
    raw = np.exp(rng.normal(0.0, spread, size=hospitals))
    return raw / raw.sum()


def hospital_sizes(total: int, hospitals: int, seed: int, *, spread: float = 0.35) -> np.ndarray:
    """Integer sizes summing exactly to `total`, proportional to `size_weights`."""
    _check_counts(hospitals, total)
    weights = size_weights(hospitals, seed, spread=spread)
    sizes = np.maximum(1, np.floor(weights * total).astype(int))
    order = np.argsort(-weights)
    i = 0
    while sizes.sum() != total:
        step = 1 if sizes.sum() < total else -1
        h = order[i % hospitals]
        if sizes[h] + step >= 1:
            sizes[h] += step
        i += 1
    return sizes


def class_proportions(
    hospitals: int, classes: int, alpha: float, seed: int, *, base: np.ndarray | None = None
) -> np.ndarray:
    """Per-hospital class shares drawn from Dirichlet(alpha * base * classes).

    Small alpha (0.1-0.5) gives strong label skew, large alpha (100) nearly IID; `base` is
    the population's class shares, so skew is around the real class frequencies.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, found {alpha}.")
    base = np.full(classes, 1.0 / classes) if base is None else np.asarray(base, float)
    base = base / base.sum()
    rng = np.random.default_rng([seed, 202])
    props = rng.dirichlet(alpha * base * classes, size=hospitals)
    # A hospital with no examples of a class at all cannot evaluate it; keep a floor.
    props = np.maximum(props, 1e-3)
    return props / props.sum(axis=1, keepdims=True)


def split_by_label(
    labels: np.ndarray, hospitals: int, alpha: float, seed: int, *, spread: float = 0.35
) -> list[np.ndarray]:
    """Disjoint index sets, one per hospital, with Dirichlet label skew and uneven sizes.

    Each class's examples are divided among hospitals in proportion to hospital size times
    the hospital's share of that class (Hsu et al., 2019), so every example is used once.
    """
    labels = np.asarray(labels).reshape(-1)
    _check_counts(hospitals, labels.size)
    classes = int(labels.max()) + 1
    base = np.bincount(labels, minlength=classes) / labels.size
    props = class_proportions(hospitals, classes, alpha, seed, base=base)
    weights = size_weights(hospitals, seed, spread=spread)[:, None] * props
    rng = np.random.default_rng([seed, 303])
    parts: list[list[np.ndarray]] = [[] for _ in range(hospitals)]
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        share = weights[:, c] / weights[:, c].sum()
        cuts = np.round(np.cumsum(share)[:-1] * idx.size).astype(int)
        for h, chunk in enumerate(np.split(idx, cuts)):
            parts[h].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _patient_features(df: pd.DataFrame) -> pd.DataFrame:
    """Per-patient case-mix features from the patient's first encounter."""
    first = df.sort_values("encounter_id").drop_duplicates(PATIENT_COLUMN)
    age = first["age"].astype(str).str.extract(r"\[(\d+)-")[0].astype(float).fillna(50.0)
    emergency = (first["admission_type_id"] == 1).astype(float)
    return pd.DataFrame(
        {"age": (age.to_numpy() - 60.0) / 20.0, "emergency": emergency.to_numpy() - 0.5},
        index=first[PATIENT_COLUMN].to_numpy(),
    )


def split_patients(
    df: pd.DataFrame, hospitals: int, seed: int, *, case_mix: float = 0.8
) -> list[pd.DataFrame]:
    """Assign whole patients to hospitals, with different sizes and case mixes.

    Each hospital has an affinity for older or younger and for emergency or elective
    patients; a patient goes to hospital h with probability proportional to its size
    weight times exp(case_mix * affinity . features). All of a patient's encounters go to
    the same hospital, so hospitals are patient-disjoint.
    """
    features = _patient_features(df)
    _check_counts(hospitals, len(features))
    rng = np.random.default_rng([seed, 404])
    affinity = rng.normal(0.0, 1.0, size=(hospitals, features.shape[1]))
    logits = case_mix * features.to_numpy() @ affinity.T
    logits += np.log(size_weights(hospitals, seed))[None, :]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    draws = (probs.cumsum(axis=1) > rng.random((len(features), 1))).argmax(axis=1)
    assignment = pd.Series(draws, index=features.index)
    owner = df[PATIENT_COLUMN].map(assignment)
    return [df[owner == h].reset_index(drop=True) for h in range(hospitals)]


def split_train_test_patients(
    df: pd.DataFrame, test_fraction: float, key: bytes
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A patient-disjoint train/test split that no other patient can move.

    Each patient's side is decided by a keyed hash (HMAC-SHA256 under the hospital's secret
    `key`) of that patient's own id alone, so adding or removing one patient moves nobody
    else, and without the key nobody can tell which side a patient is on. A split drawn
    from the patient list instead (as before) moved hundreds of patients when one joined,
    so a guarantee stated per patient of the hospital's table held only per uploaded asset.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), found {test_fraction}.")
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("key must be at least 16 secret bytes; use the hospital's split key.")
    is_test = df[PATIENT_COLUMN].map(lambda patient: in_test(patient, key, test_fraction))
    is_test = is_test.astype(bool)
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def in_test(patient: object, key: bytes, test_fraction: float) -> bool:
    """Whether `patient` belongs to the test split: a function of its id and the key only."""
    digest = hmac.new(key, str(patient).encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") < test_fraction * 2**64
