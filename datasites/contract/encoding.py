"""Fixed feature encodings of a hospital's EHR table and pathology tiles.

Why nothing here is learnt from data: a mean, a vocabulary or a quantile computed from a
hospital's rows would be a release about those rows that no DP mechanism accounts for, and
hospitals that computed their own would feed the federated model differently scaled inputs.
So every category list comes from the public schema of the UCI Diabetes 130-US table
(`synthetic.ehr_schema`, Strack et al., 2014) and every numeric transform uses constants.
Each row is encoded on its own: the same row gives the same vector in any hospital, in any
table, and encoding costs no privacy. Values outside the schema (a new payer code, a missing
race) land in the block's "other/missing" slot instead of failing.

`encode_features` gives the readable encoding: one-hot slots and numerics scaled to about
[0, 1]. `encode_ehr`, which every model trains and is evaluated on, then standardizes each
feature by the frozen centre and scale of a public reference population
(`datasites.contract.ehr_reference`). This is still a fixed transform of each row, and it makes the
few noisy steps of DP-SGD count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from datasites.contract import ehr_reference
from datasites.contract.tasks import EHR_LABELS
from synthetic.ehr_schema import (
    AGE_BANDS,
    EXPIRED_OR_HOSPICE,
    LABEL_COLUMN,
    MEDICATION_COLUMNS,
)

__all__ = [
    "FEATURE_NAMES",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "LABELS",
    "N_CLASSES",
    "N_FEATURES",
    "encode_ehr",
    "encode_features",
    "encode_images",
    "standardize",
    "usable_rows",
]

LABELS: tuple[str, ...] = EHR_LABELS
N_CLASSES = 9  # PathMNIST tissue classes
IMAGE_SIDE = 28

# Per-channel mean/std of the synthetic reference stain (x/255), rounded and frozen: any fixed
# constants near H&E colours centre the inputs; measuring them per hospital would leak.
IMAGE_MEAN: tuple[float, float, float] = (0.71, 0.57, 0.75)
IMAGE_STD: tuple[float, float, float] = (0.18, 0.22, 0.13)
# (value / 255 - mean) / std for every uint8 value, per channel, in float32 as computed
# element-wise: the lookup in encode_images gives exactly the arithmetic's result.
_IMAGE_TABLE: np.ndarray = (
    (np.arange(256, dtype=np.float32) / np.float32(255))[None, :]
    - np.asarray(IMAGE_MEAN, dtype=np.float32)[:, None]
) / np.asarray(IMAGE_STD, dtype=np.float32)[:, None]
_IMAGE_TABLE.setflags(write=False)
_CHANNEL = np.arange(3).reshape(1, 3, 1, 1)

OTHER = "other_or_missing"

# --- categorical blocks ---------------------------------------------------------------------

_RACES = ("Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other")
_GENDERS = ("Female", "Male")
_PAYERS = ("MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "OG", "PO", "DM")
_SPECIALTIES = (
    "InternalMedicine",
    "Emergency/Trauma",
    "Family/GeneralPractice",
    "Cardiology",
    "Surgery-General",
    "Nephrology",
    "Orthopedics",
    "Orthopedics-Reconstructive",
    "Radiologist",
    "Pulmonology",
    "Psychiatry",
    "Urology",
    "ObstetricsandGynecology",
    "Gastroenterology",
)
# Grouped id codes, from the IDs_mapping.csv shipped with the public dataset.
_ADMISSION_TYPES: dict[str, tuple[int, ...]] = {
    "emergency": (1,),
    "urgent": (2,),
    "elective": (3,),
    "newborn_or_trauma": (4, 7),
}  # 5, 6, 8: not available / NULL / not mapped -> other_or_missing
_ADMISSION_SOURCES: dict[str, tuple[int, ...]] = {
    "referral": (1, 2, 3),
    "emergency_room": (7,),
    "transfer_hospital": (4, 10, 22),
    "transfer_facility": (5, 6, 18, 19, 25, 26),
    "court_or_birth": (8, 11, 12, 13, 14, 23, 24),
}  # 9, 15, 17, 20, 21: not available / NULL / unknown
_DISCHARGES: dict[str, tuple[int, ...]] = {
    "home": (1,),
    "home_care": (6, 8),
    "short_term_hospital": (2,),
    "snf": (3,),
    "icf_or_long_term": (4, 23, 24),
    "other_inpatient_institution": (5, 15, 27, 29, 30),
    "rehab": (22,),
    "psychiatric": (28,),
    "left_ama": (7,),
    "outpatient_or_return": (9, 10, 12, 16, 17),
    "expired_or_hospice": tuple(sorted(EXPIRED_OR_HOSPICE)),
}  # 18, 25, 26: NULL / not mapped / unknown
# Real extracts write "None" for a test not taken; some re-releases write a blank instead, so
# a blank joins "None" rather than the other slot, and hospitals on either file agree.
_GLUCOSE = ("None", "Norm", ">200", ">300")
_A1C = ("None", "Norm", ">7", ">8")
_DOSES = ("No", "Steady", "Up", "Down")

# ICD-9 chapters (first, last code) as in the classification; 250.xx (diabetes), 428 (heart
# failure) and 996-999 (complications of care) get their own slots because readmission risk
# differs from the rest of their chapter.
_ICD9_CHAPTERS: tuple[tuple[str, float, float], ...] = (
    ("infectious", 1, 140),
    ("neoplasms", 140, 240),
    ("endocrine", 240, 280),
    ("blood", 280, 290),
    ("mental", 290, 320),
    ("nervous", 320, 390),
    ("circulatory", 390, 460),
    ("respiratory", 460, 520),
    ("digestive", 520, 580),
    ("genitourinary", 580, 630),
    ("pregnancy", 630, 680),
    ("skin", 680, 710),
    ("musculoskeletal", 710, 740),
    ("congenital", 740, 760),
    ("perinatal", 760, 780),
    ("symptoms", 780, 800),
    ("injury", 800, 996),
    ("complications", 996, 1000),
)
_DIAG_SLOTS = (
    *(name for name, _, _ in _ICD9_CHAPTERS),
    "diabetes_250",
    "heart_failure_428",
    "v_code",
    "e_code",
)

# --- numeric transforms: fixed scales so each feature is roughly in [0, 1] -------------------


@dataclass(frozen=True)
class _Numeric:
    column: str
    default: float  # the real file's median, used for a missing value
    scale: float
    log: bool = False

    def transform(self, values: np.ndarray) -> np.ndarray:
        filled = np.where(np.isfinite(values), np.clip(values, 0, None), self.default)
        return (np.log1p(filled) if self.log else filled) / self.scale


_NUMERICS: tuple[_Numeric, ...] = (
    _Numeric("time_in_hospital", 4, 14),
    _Numeric("num_lab_procedures", 44, 132),
    _Numeric("num_procedures", 1, 6),
    _Numeric("num_medications", 15, np.log1p(81), log=True),
    _Numeric("number_outpatient", 0, np.log1p(42), log=True),
    _Numeric("number_emergency", 0, np.log1p(76), log=True),
    _Numeric("number_inpatient", 0, np.log1p(21), log=True),
    _Numeric("number_diagnoses", 8, 16),
)
# Prior-year visit counts are zero-inflated: "any visit" carries signal the log scale blurs.
_VISIT_COLUMNS = ("number_outpatient", "number_emergency", "number_inpatient")


@dataclass(frozen=True)
class _Block:
    """One group of output columns: the names it adds and how to compute them."""

    names: tuple[str, ...]
    columns: tuple[str, ...]
    encode: Callable[[pd.DataFrame], np.ndarray]


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as stripped strings, NaN kept, whatever dtype pandas inferred for it."""
    values = frame[column].astype(object)
    return values.where(values.isna(), values.astype(str).str.strip())


def _integer_codes(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _one_hot(slots: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((slots.size, width), dtype=np.float32)
    out[np.arange(slots.size), slots] = 1.0
    return out


def _category_block(column: str, levels: Sequence[str], *, blank: str | None = None) -> _Block:
    """One-hot of `levels`, then an other/missing slot (or NaN counted as `blank`)."""
    lookup = {level: i for i, level in enumerate(levels)}

    def encode(frame: pd.DataFrame) -> np.ndarray:
        values = _text(frame, column)
        if blank is not None:
            values = values.fillna(blank)
        slots = values.map(lookup).fillna(len(levels)).to_numpy(dtype=np.int64)
        return _one_hot(slots, len(levels) + 1)

    names = tuple(f"{column}={level}" for level in (*levels, OTHER))
    return _Block(names, (column,), encode)


def _id_group_block(column: str, groups: Mapping[str, tuple[int, ...]]) -> _Block:
    """One-hot of grouped integer ids; ids outside every group go to other/missing."""
    table = np.full(64, len(groups), dtype=np.int64)
    for slot, ids in enumerate(groups.values()):
        table[list(ids)] = slot

    def encode(frame: pd.DataFrame) -> np.ndarray:
        codes = _integer_codes(frame, column)
        known = np.isfinite(codes) & (codes >= 0) & (codes < table.size) & (codes % 1 == 0)
        slots = np.full(codes.size, len(groups), dtype=np.int64)
        slots[known] = table[codes[known].astype(np.int64)]
        return _one_hot(slots, len(groups) + 1)

    names = tuple(f"{column}={group}" for group in (*groups, OTHER))
    return _Block(names, (column,), encode)


def _diagnosis_slots(codes: pd.Series) -> np.ndarray:
    """ICD-9 code strings ('428', '250.83', 'V57', 'E909', NaN) -> slot index in _DIAG_SLOTS."""
    text = codes.fillna("").str.upper()
    number = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    slots = np.full(text.size, len(_DIAG_SLOTS), dtype=np.int64)
    for slot, (_, first, stop) in enumerate(_ICD9_CHAPTERS):
        slots[(number >= first) & (number < stop)] = slot
    slots[np.floor(number) == 250] = _DIAG_SLOTS.index("diabetes_250")
    slots[np.floor(number) == 428] = _DIAG_SLOTS.index("heart_failure_428")
    slots[text.str.match(r"^V\d").to_numpy()] = _DIAG_SLOTS.index("v_code")
    slots[text.str.match(r"^E\d").to_numpy()] = _DIAG_SLOTS.index("e_code")
    return slots


def _diagnosis_block(column: str) -> _Block:
    def encode(frame: pd.DataFrame) -> np.ndarray:
        return _one_hot(_diagnosis_slots(_text(frame, column)), len(_DIAG_SLOTS) + 1)

    names = tuple(f"{column}={slot}" for slot in (*_DIAG_SLOTS, OTHER))
    return _Block(names, (column,), encode)


def _age_block() -> _Block:
    """Band one-hot (the risk is not monotone in age) plus the band as a 0..1 ordinal."""
    lookup = {band: i for i, band in enumerate(AGE_BANDS)}
    middle = (len(AGE_BANDS) - 1) / 2

    def encode(frame: pd.DataFrame) -> np.ndarray:
        band = _text(frame, "age").map(lookup).to_numpy(dtype=float)
        known = np.isfinite(band)
        slots = np.where(known, band, len(AGE_BANDS)).astype(np.int64)
        ordinal = np.where(known, band, middle) / (len(AGE_BANDS) - 1)
        return np.column_stack([ordinal, _one_hot(slots, len(AGE_BANDS) + 1)])

    names = ("age_ordinal", *(f"age={band}" for band in (*AGE_BANDS, OTHER)))
    return _Block(names, ("age",), encode)


def _numeric_block() -> _Block:
    def encode(frame: pd.DataFrame) -> np.ndarray:
        scaled = [n.transform(_integer_codes(frame, n.column)) for n in _NUMERICS]
        any_visit = [np.nan_to_num(_integer_codes(frame, c)) > 0 for c in _VISIT_COLUMNS]
        return np.column_stack([*scaled, *any_visit])

    names = (*(n.column for n in _NUMERICS), *(f"{c}>0" for c in _VISIT_COLUMNS))
    columns = tuple(n.column for n in _NUMERICS)
    return _Block(names, columns, encode)


def _weight_block() -> _Block:
    """Weight is 97% missing in the real file: only whether it was recorded is kept."""

    def encode(frame: pd.DataFrame) -> np.ndarray:
        return frame["weight"].notna().to_numpy(dtype=np.float32).reshape(-1, 1)

    return _Block(("weight_recorded",), ("weight",), encode)


_BLOCKS: tuple[_Block, ...] = (
    _numeric_block(),
    _age_block(),
    _category_block("race", _RACES),
    _category_block("gender", _GENDERS),
    _weight_block(),
    _id_group_block("admission_type_id", _ADMISSION_TYPES),
    _id_group_block("discharge_disposition_id", _DISCHARGES),
    _id_group_block("admission_source_id", _ADMISSION_SOURCES),
    _category_block("payer_code", _PAYERS),
    _category_block("medical_specialty", _SPECIALTIES),
    _diagnosis_block("diag_1"),
    _diagnosis_block("diag_2"),
    _diagnosis_block("diag_3"),
    _category_block("max_glu_serum", _GLUCOSE, blank="None"),
    _category_block("A1Cresult", _A1C, blank="None"),
    *(_category_block(drug, _DOSES) for drug in MEDICATION_COLUMNS),
    _category_block("change", ("No", "Ch")),
    _category_block("diabetesMed", ("No", "Yes")),
)

FEATURE_NAMES: tuple[str, ...] = tuple(name for block in _BLOCKS for name in block.names)
N_FEATURES: int = len(FEATURE_NAMES)
_FEATURE_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(column for block in _BLOCKS for column in block.columns)
)

# --- public functions -------------------------------------------------------------------------


def usable_rows(frame: pd.DataFrame) -> pd.Series:
    """Rows that can be followed by a readmission: death or hospice discharges cannot.

    The literature drops them before modelling (Strack et al., 2014); keeping them would teach
    the model that dying protects from readmission.
    """
    _require_columns(frame, ("discharge_disposition_id",))
    codes = pd.to_numeric(frame["discharge_disposition_id"], errors="coerce")
    return ~codes.isin(sorted(EXPIRED_OR_HOSPICE))


def encode_features(frame: pd.DataFrame) -> np.ndarray:
    """All rows of `frame` as float32 (n, N_FEATURES), row by row, without filtering."""
    _require_columns(frame, _FEATURE_COLUMNS)
    if len(frame) == 0:
        return np.zeros((0, N_FEATURES), dtype=np.float32)
    parts = [block.encode(frame) for block in _BLOCKS]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def standardize(features: np.ndarray) -> np.ndarray:
    """`encode_features` rows centred and scaled by the public reference population."""
    return _reference().standardize(features)


@lru_cache(maxsize=1)
def _reference() -> ehr_reference.Reference:
    # Loaded on first use, not at import, so that `derive_reference` can import this
    # module to regenerate a missing or outdated file.
    return ehr_reference.load(FEATURE_NAMES)


def encode_ehr(frame: pd.DataFrame, label: str = "readmitted_30") -> tuple[np.ndarray, np.ndarray]:
    """Usable rows as (float32 (n, N_FEATURES) standardized features, float32 (n,) labels
    in {0, 1}).

    `readmitted_30` is `<30` against the rest (the usual target); `readmitted_any` is `<30` or
    `>30` against `NO`. Rows discharged to death or hospice are dropped (see `usable_rows`).
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, found {label!r}.")
    _require_columns(frame, (*_FEATURE_COLUMNS, LABEL_COLUMN))
    kept = frame.loc[usable_rows(frame).to_numpy()]
    return standardize(encode_features(kept)), _labels(kept[LABEL_COLUMN], label)


def encode_images(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PathMNIST tiles as float32 (n, 3, 28, 28), scaled by fixed constants, and int64 labels.

    Takes uint8 (n, 28, 28, 3) images as stored in `pathmnist.npz` and labels of shape (n,)
    or (n, 1) in 0..8.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 3):
        raise ValueError(f"images must have shape (n, 28, 28, 3), found {images.shape}.")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 as in pathmnist.npz, found {images.dtype}.")
    flat = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if flat.ndim != 1 or flat.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape (n,) or (n, 1), found {labels.shape}.")
    if flat.size and (not np.issubdtype(flat.dtype, np.integer) or flat.min() < 0):
        raise ValueError(f"labels must be integer classes 0..{N_CLASSES - 1}.")
    if flat.size and flat.max() >= N_CLASSES:
        raise ValueError(f"labels must be integer classes 0..{N_CLASSES - 1}.")
    # A uint8 has 256 values: look each pixel up in a per-channel table of
    # (value / 255 - mean) / std instead of computing it. That is the same float32 result
    # bit for bit, and several times faster than arithmetic on the strided transpose; the
    # runtime encodes a hospital's 20,000 training tiles on every call.
    channels_first = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return _IMAGE_TABLE[_CHANNEL, channels_first], flat.astype(np.int64)


def _labels(values: pd.Series, label: str) -> np.ndarray:
    text = _text(values.to_frame(), values.name)
    if not text.isin(("NO", ">30", "<30")).all():
        raise ValueError(
            f"{LABEL_COLUMN} must be NO, >30 or <30 in every row; fix or drop the other rows."
        )
    positive = text.eq("<30") if label == "readmitted_30" else text.ne("NO")
    return positive.to_numpy(dtype=np.float32)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, found {type(frame).__name__}.")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"the EHR table lacks the columns {', '.join(missing)}; add them.")


def training_rows(task: str, label: str, asset: Any) -> int:
    """How many rows of `asset` a study of `task` trains on (the n its noise is calibrated
    for): the usable, labelled rows the encoder keeps."""
    if task == "ehr":
        return len(encode_ehr(asset, label)[1])
    return len(encode_images(asset["images"], asset["labels"])[1])
