"""Private EHR tables in the UCI Diabetes 130-US hospitals schema, and the loader for real ones.

A hospital in the federation hosts an extract with the 50 columns of `diabetic_data.csv`
(Strack et al., 2014) plus the identifiers a real extract carries (name, SSN, dates...). This
module makes such extracts synthetically, so the platform can be built and demonstrated without
real patients, and reads the real file unchanged, so a hospital can swap in its own data.

Why the synthetic table must be realistic rather than random: privacy review, mocks and the
differentially private training are judged on it. Marginals follow the public value counts
(`synthetic.ehr_schema`); the readmission label comes from a fixed latent risk model of the
clinical columns (`Signal`), and a federation's hospitals drift from the public reference
together (`CaseMix.drift`). Both are calibrated so that the federation is as hard to learn as
the real extract: a centralised logistic regression reaches AUROC ~0.65 for `<30`, and clipped
SGD needs about ten epochs to approach it (benchmarks/ehr_difficulty.py).
Why it is private: every value is drawn from seeded generators; identifiers come from Faker and
from number ranges that are never issued to real people (see `_identifiers`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from faker import Faker
from scipy.special import gammainc, ndtr

from datasites.contract.files import atomic_write
from synthetic import ehr_schema as schema
from synthetic.ehr_schema import (
    EHR_COLUMNS,
    EXPIRED_OR_HOSPICE,
    IDENTIFIER_COLUMNS,
    INTEGER_COLUMNS,
    LABEL_COLUMN,
    MEDICATION_COLUMNS,
)
from synthetic.errors import DataFormatError

__all__ = [
    "EHR_COLUMNS",
    "EXPIRED_OR_HOSPICE",
    "IDENTIFIER_COLUMNS",
    "LABEL_COLUMN",
    "MEDICATION_COLUMNS",
    "CaseMix",
    "Signal",
    "generate_ehr",
    "load_ehr_csv",
    "write_ehr_csv",
]

FloatArray = np.ndarray
IntArray = np.ndarray

# Encounters fall between these dates, as in the real collection (1999-2008).
_FIRST_DAY = np.datetime64("1999-01-01")
_LAST_DAY = np.datetime64("2008-12-31")
# A patient's encounters span less than one age band, so the age column never changes band
# within a patient and the date of birth stays consistent with every encounter.
_MAX_SPAN_DAYS = 3400

# Random streams: each part of the table has its own, so switching identifiers off (or a
# future change to one part) leaves the clinical columns of the same seed unchanged.
_PATIENTS, _CLINICAL, _LABELS, _TIMELINE, _IDENTITY, _DRIFT = range(6)


@dataclass(frozen=True)
class CaseMix:
    """A hospital's patient population; the defaults reproduce the real marginals.

    Hospitals in a federation differ (a retirement-area hospital is older, a trauma centre
    sicker, a clerk records race less often), and federated learning must cope with that
    non-IID mix. CaseMix changes who the patients are, never the readmission model, so a
    pooled analysis stays meaningful.
    """

    age_shift: float = 0.0
    """Years added to every patient's age before banding (positive = older population)."""
    acuity: float = 1.0
    """Multiplies prior-year inpatient and emergency visit rates and the odds of an emergency
    admission, and makes stays a little longer: above 1 describes a sicker population."""
    length_of_stay: float = 1.0
    """Multiplies typical stays (teaching hospitals keep patients longer)."""
    missingness: float = 1.0
    """Multiplies the odds that race, weight, payer and specialty are left unrecorded."""
    african_american_share: float = 0.196
    """Share of AfricanAmerican patients among those whose race is recorded."""
    female_share: float = 0.538
    """Share of female patients."""
    drift: float = 0.0
    """How far this hospital's coding and referral habits sit from the public population: the
    sd of a log-odds change to the share of every level of the drifting columns (specialty,
    payer, admission source and type, labs, diagnosis codes). Real extracts sit away from the
    public reference in many features at once (each standardized mean within about +-0.2),
    and that offset is much of what makes them slow to learn under clipping."""
    drift_seed: int = 0
    """Which levels drift up and which down."""

    def __post_init__(self) -> None:
        bounds = {
            "drift": (0.0, 2.0),
            "drift_seed": (0, 2**31 - 1),
            "age_shift": (-20.0, 20.0),
            "acuity": (0.25, 4.0),
            "length_of_stay": (0.5, 2.0),
            "missingness": (0.1, 10.0),
            "african_american_share": (0.0, 0.95),
            "female_share": (0.3, 0.7),
        }
        _check_fields(self, bounds, integers=("drift_seed",))

    @classmethod
    def for_hospital(
        cls, index: int, seed: int, *, drift: float = 0.55, drift_seed: int = 3
    ) -> CaseMix:
        """A plausible, visibly different population for hospital `index` of a federation.

        Deterministic in (index, seed), so every participant of a demo derives the same mix.
        The hospitals of one federation share one `drift` away from the public reference (one
        region's habits); the defaults are the calibrated ones (`Signal`).
        """
        _check_seed(index, "index")
        _check_seed(seed, "seed")
        rng = np.random.default_rng([seed, index, 0xCA5E])
        return cls(
            age_shift=round(float(rng.uniform(-5.0, 5.0)), 1),
            acuity=round(math.exp(rng.uniform(-0.35, 0.45)), 2),
            length_of_stay=round(float(rng.uniform(0.8, 1.25)), 2),
            missingness=round(math.exp(rng.uniform(-0.7, 0.7)), 2),
            african_american_share=round(float(rng.uniform(0.05, 0.45)), 3),
            female_share=round(float(rng.uniform(0.5, 0.57)), 3),
            drift=drift,
            drift_seed=drift_seed,
        )


@dataclass(frozen=True)
class Signal:
    """How 30-day readmission depends on the chart: how strong, how spread, how common.

    The label's log-odds are `intercept + strength * clinical + diffuse * scatter`:
    `clinical` is the published risk model (prior inpatient and emergency visits, discharge,
    age..., plus unobserved frailty), a few strong effects; `scatter` is many small fixed
    effects spread over every other column's levels (specialty, payer, diagnosis groups, each
    drug's state, labs, numeric counts), scaled to sd 1, for populations whose signal is
    spread thin. `intercept` is solved so that first encounters of the reference population
    readmit at `prevalence`; a sicker CaseMix still readmits more.

    The default strength is calibrated together with `CaseMix.for_hospital`'s drift: on the
    federation `launch.py` builds, a centralized logistic model reaches AUROC ~0.65 and the
    hospitals' clipped SGD ~0.60 after 5 epochs and ~0.64 after 10, as on the real extract
    (benchmarks/ehr_difficulty.py, tests/unit/test_ehr_difficulty.py).
    """

    strength: float = 0.82
    diffuse: float = 0.0
    prevalence: float = 0.09
    layout: int = 0
    """Seed of the scattered effects: which levels raise risk and which lower it."""

    def __post_init__(self) -> None:
        bounds = {
            "strength": (0.0, 3.0),
            "diffuse": (0.0, 3.0),
            "prevalence": (0.02, 0.4),
            "layout": (0, 2**31 - 1),
        }
        _check_fields(self, bounds, integers=("layout",))


def _check_fields(
    instance: object, bounds: dict[str, tuple[float, float]], integers: tuple[str, ...] = ()
) -> None:
    """Every field of a settings dataclass a finite number within its bounds (ints where
    named), or one sentence naming the field."""
    kind = type(instance).__name__
    for field in fields(instance):  # type: ignore[arg-type]
        value = getattr(instance, field.name)
        low, high = bounds[field.name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{kind}.{field.name} must be a number, found {type(value)}.")
        if field.name in integers and not isinstance(value, int):
            raise TypeError(f"{kind}.{field.name} must be an int, found {type(value)}.")
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(
                f"{kind}.{field.name} must be between {low} and {high}, found {value}."
            )


def generate_ehr(
    rows: int,
    seed: int,
    *,
    case_mix: CaseMix | None = None,
    id_start: int = 1,
    identifiers: bool = True,
    signal: Signal | None = None,
) -> pd.DataFrame:
    """A synthetic private EHR extract: `rows` encounters in the UCI Diabetes 130-US schema.

    Columns are EHR_COLUMNS, then IDENTIFIER_COLUMNS if `identifiers`. Missing values are NaN
    (the real file's '?'), dtypes are those `load_ehr_csv` gives, rows are ordered by
    encounter_id. Encounter and patient ids are consecutive from `id_start`, so hospitals
    given disjoint ranges (id_start = 1 + index * 10_000_000) never share an id. `signal`
    is how the label depends on the chart (the default is calibrated to the real extract's
    learning difficulty). The same arguments always give the same table.
    """
    _check_seed(seed, "seed")
    _check_seed(id_start, "id_start")
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
        raise ValueError(f"rows must be a positive int, found {rows!r}.")
    rows, id_start = int(rows), int(id_start)
    mix = case_mix if case_mix is not None else CaseMix()
    signal = signal if signal is not None else Signal()
    patients, table = _chart(rows, seed, mix)
    score = _readmission_score(table, patients, signal)
    intercept = _intercept(signal)
    table[LABEL_COLUMN] = _readmission_labels(score, intercept, table, _stream(seed, _LABELS))
    timeline = _timeline(patients, table, _stream(seed, _TIMELINE), id_start)
    table["encounter_id"] = timeline.encounter_id
    table["patient_nbr"] = timeline.patient_nbr[patients.owner]
    frame = pd.DataFrame({column: table[column] for column in EHR_COLUMNS})
    if identifiers:
        extra = _identifiers(patients, timeline, _stream(seed, _IDENTITY))
        frame = pd.concat([frame, pd.DataFrame(extra)], axis=1)
    order = np.argsort(timeline.encounter_id, kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def _chart(rows: int, seed: int, mix: CaseMix) -> tuple[_Patients, dict[str, np.ndarray]]:
    """Everything but the label: the patients and their clinical columns."""
    patients = _sample_patients(rows, _stream(seed, _PATIENTS), mix)
    table = _clinical_columns(patients, _stream(seed, _CLINICAL), mix)
    if mix.drift:
        _drift(table, mix, _stream(seed, _DRIFT))
    return patients, table


# Columns whose level shares drift with CaseMix.drift: the ones a hospital's coding, referral
# and lab habits set, and that no other column is derived from.
_CODING = (
    "admission_type_id",
    "admission_source_id",
    "payer_code",
    "medical_specialty",
    "max_glu_serum",
    "A1Cresult",
)
_DRIFTING = (*_CODING, "diag_1", "diag_2", "diag_3")


def _drift(table: dict[str, np.ndarray], mix: CaseMix, rng: np.random.Generator) -> None:
    """Move each drifting column's level shares s to s * exp(drift * z) (renormalised), z a
    standard normal per level fixed by `mix.drift_seed`: rows are kept with probability
    r / max(r) and the others redrawn in proportion to s * r, which gives exactly the
    drifted shares while keeping most rows' values (and their ties to other columns)."""
    for index, column in enumerate(_DRIFTING):
        values = table[column]
        text = pd.Series(values, dtype=object).astype(str).to_numpy()
        levels, first, codes, counts = np.unique(
            text, return_index=True, return_inverse=True, return_counts=True
        )
        z = np.array([_level_effect(mix.drift_seed, 0xD81F + index, level) for level in levels])
        ratio = np.exp(mix.drift * z)
        keep = rng.random(codes.size) < (ratio / ratio.max())[codes]
        redrawn = _pick(rng, counts * ratio, int((~keep).sum()))
        values[~keep] = values[first[redrawn]]


def write_ehr_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write an extract as the real file is written: '?' for missing, no index column.

    The write is atomic (temporary file in the same folder, then rename), so a datasite never
    serves a half-written extract if the process dies mid-way. The frame is written as given,
    whatever its columns: the schema is enforced where it matters, in `load_ehr_csv`. The file
    is created readable by its owner only, as an identified patient extract should be.
    """
    text = df.to_csv(index=False, na_rep="?", lineterminator="\n")
    atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")), mode=0o600)


def load_ehr_csv(path: str | Path) -> pd.DataFrame:
    """Read an EHR extract, the real `diabetic_data.csv` unchanged or one `write_ehr_csv` made.

    '?' becomes NaN while the literal "None" of max_glu_serum/A1Cresult stays a string; ICD-9
    codes stay strings ("V57", "250.83"); the 13 integer columns become int64. The 50 schema
    columns come first, extra columns (identifiers) follow. Errors name columns and line
    numbers, never a cell value, because the cell may be a patient's data.
    """
    source = Path(path)
    frame = _read_text_table(source)
    missing = [column for column in EHR_COLUMNS if column not in frame.columns]
    if missing:
        raise DataFormatError(
            f"{source.name} is missing columns: {', '.join(missing)}; an EHR extract must have "
            "all 50 columns of the UCI Diabetes 130-US schema."
        )
    for column in INTEGER_COLUMNS:
        frame[column] = _integer_column(frame[column], column, source.name)
    extras = [column for column in frame.columns if column not in EHR_COLUMNS]
    return frame[[*EHR_COLUMNS, *extras]]


# --- loading ------------------------------------------------------------------------------


def _read_text_table(source: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(source, dtype=str, na_values=["?"], keep_default_na=False)
    except FileNotFoundError:
        raise DataFormatError(
            f"{source} does not exist; pass the path of an EHR extract CSV."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(
            f"{source.name} is empty; an EHR extract needs a header row and encounter rows."
        ) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        # The parser's message can quote a cell, so only the kind of failure is reported.
        raise DataFormatError(
            f"{source.name} could not be read as a CSV file ({type(error).__name__}); "
            "export the extract as comma-separated UTF-8 text with a header row."
        ) from None
    if frame.empty:
        raise DataFormatError(
            f"{source.name} has a header but no encounter rows; export the extract again."
        )
    return frame


def _integer_column(values: pd.Series, column: str, file_name: str) -> pd.Series:
    values = values.str.strip()
    valid = values.str.fullmatch(r"[+-]?\d{1,18}", na=False).to_numpy()
    if not valid.all():
        bad = np.flatnonzero(~valid)
        raise DataFormatError(
            f"{file_name} column {column} must hold whole numbers, but {bad.size} row(s) do "
            f"not (first at line {int(bad[0]) + 2}); fix or drop those rows and load again."
        )
    return values.astype("int64")


# --- shared sampling helpers --------------------------------------------------------------


def _check_seed(value: int, name: str) -> None:
    """Seeds, indices and id starts: non-negative ints (numpy ints welcome)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, found {value!r}.")


def _stream(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), part])


def _pick(rng: np.random.Generator, weights: FloatArray, size: int) -> IntArray:
    """Indices drawn with the given (unnormalised) weights."""
    cdf = np.cumsum(weights, dtype=float)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), cdf.size - 1)


def _pick_rows(rng: np.random.Generator, weights: FloatArray) -> IntArray:
    """One index per row of a (rows, categories) weight matrix."""
    cdf = np.cumsum(weights, axis=1)
    draw = rng.random(weights.shape[0])[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= draw).sum(axis=1), weights.shape[1] - 1)


def _from_latent(latent: FloatArray, values: IntArray, weights: FloatArray) -> IntArray:
    """Gaussian copula: a standard-normal latent mapped through the real marginal's quantiles.

    With an unshifted latent the column has exactly the real marginal; shared terms in the
    latents of two columns give them the real-world correlation (long stays, more drugs).
    """
    cdf = np.cumsum(weights, dtype=float) / np.sum(weights)
    index = np.searchsorted(cdf, ndtr(latent), side="right")
    return values[np.minimum(index, values.size - 1)]


def _shift_odds(probability: float | FloatArray, factor: float) -> FloatArray:
    probability = np.asarray(probability, dtype=float)
    return probability * factor / (1.0 - probability + probability * factor)


def _table(counts: dict) -> tuple[np.ndarray, FloatArray]:
    keys = list(counts)
    values = np.array(keys, dtype=np.int64 if isinstance(keys[0], int) else object)
    return values, np.array([counts[key] for key in keys], dtype=float)


def _correlated(
    rng: np.random.Generator, size: int, *loadings: tuple[float, FloatArray]
) -> FloatArray:
    """A standard-normal latent: sum of weight * (standard-normal driver), plus fresh noise.

    Drivers are treated as independent when sizing the noise, so the variance is ~1.
    """
    total = np.zeros(size)
    spent = 0.0
    for weight, driver in loadings:
        total += weight * driver
        spent += weight**2
    return total + math.sqrt(max(1.0 - spent, 0.05)) * rng.standard_normal(size)


# --- patients -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patients:
    """Per-patient draws, and for each encounter its owner and rank within the patient."""

    encounters: IntArray
    frailty: FloatArray
    band: IntArray
    gender: np.ndarray
    race: np.ndarray
    owner: IntArray
    rank: IntArray

    @property
    def frailty_per_encounter(self) -> FloatArray:
        return self.frailty[self.owner]

    @property
    def is_last(self) -> np.ndarray:
        return self.rank == self.encounters[self.owner] - 1


@lru_cache(maxsize=1)
def _encounter_count_table() -> tuple[IntArray, FloatArray]:
    values, weights = _table(schema.ENCOUNTERS_PER_PATIENT)
    tail = np.arange(values[-1] + 1, schema.MAX_ENCOUNTERS_PER_PATIENT + 1)
    tail_weights = weights[-1] * 0.55 ** (tail - values[-1])
    return np.concatenate([values, tail]), np.concatenate([weights, tail_weights])


@lru_cache(maxsize=1)
def _count_spread() -> tuple[float, float]:
    """Mean and sd of log(encounters per patient) over encounters (not patients).

    Frailty is centred per encounter so that, in the shared latents, an average encounter has
    the real marginals even though frequent flyers contribute many encounters each.
    """
    values, weights = _encounter_count_table()
    per_encounter = weights * values / np.sum(weights * values)
    mean = float(np.sum(per_encounter * np.log(values)))
    return mean, math.sqrt(float(np.sum(per_encounter * (np.log(values) - mean) ** 2)))


_FRAILTY_FROM_COUNT = 0.4
_FRAILTY_NOISE = math.sqrt(1.0 - _FRAILTY_FROM_COUNT**2)


def _frailty(counts: IntArray, noise: FloatArray) -> FloatArray:
    """Standard-normal per encounter; patients with many encounters are frailer."""
    mean, sd = _count_spread()
    return _FRAILTY_FROM_COUNT * (np.log(counts) - mean) / sd + _FRAILTY_NOISE * noise


def _history(rank: IntArray) -> FloatArray:
    """Prior-year visits grow with rank: later encounters count the earlier admissions."""
    return 1.0 + 0.3 * np.minimum(rank, 3)


@lru_cache(maxsize=8)
def _visit_normaliser(loading: float) -> float:
    """E[exp(loading * frailty) * history] over encounters, so visit means stay real."""
    values, weights = _encounter_count_table()
    mean, sd = _count_spread()
    total = 0.0
    for count, weight in zip(values, weights, strict=True):
        shift = loading * _FRAILTY_FROM_COUNT * (math.log(count) - mean) / sd
        total += weight * math.exp(shift) * float(np.sum(_history(np.arange(count))))
    spread = math.exp((loading * _FRAILTY_NOISE) ** 2 / 2)
    return total * spread / float(np.sum(weights * values))


def _sample_patients(rows: int, rng: np.random.Generator, mix: CaseMix) -> _Patients:
    values, weights = _encounter_count_table()
    counts = values[_pick(rng, weights, rows)]
    covering = int(np.searchsorted(np.cumsum(counts), rows)) + 1
    counts = counts[:covering].copy()
    counts[-1] -= int(counts.sum()) - rows
    n = counts.size
    # Frequent flyers are sicker: frailty is correlated with the number of encounters.
    frailty = _frailty(counts, rng.standard_normal(n))
    age = 10.0 * _pick(rng, np.array(schema.AGE_COUNTS, dtype=float), n) + 10.0 * rng.random(n)
    band = np.clip((age + mix.age_shift) // 10, 0, 9).astype(np.int64)
    owner = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    return _Patients(
        encounters=counts,
        frailty=frailty,
        band=band,
        gender=_genders(rng, n, mix),
        race=_races(rng, n, mix),
        owner=owner,
        rank=np.arange(rows) - starts[owner],
    )


def _genders(rng: np.random.Generator, n: int, mix: CaseMix) -> np.ndarray:
    gender = np.where(rng.random(n) < mix.female_share, "Female", "Male").astype(object)
    gender[rng.random(n) < schema.GENDER_UNKNOWN_SHARE] = "Unknown/Invalid"
    return gender


def _races(rng: np.random.Generator, n: int, mix: CaseMix) -> np.ndarray:
    values, weights = _table(schema.RACE_RECORDED)
    others = values != "AfricanAmerican"
    weights[others] *= (1.0 - mix.african_american_share) / weights[others].sum()
    weights[~others] = mix.african_american_share
    race = values[_pick(rng, weights, n)]
    race[rng.random(n) < _shift_odds(schema.RACE_MISSING_SHARE, mix.missingness)] = np.nan
    return race


# --- clinical columns ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Drivers:
    """Standard-normal latents shared between columns of one encounter."""

    frailty: FloatArray
    severity: FloatArray
    stay: FloatArray
    procedures: FloatArray
    band: IntArray


def _clinical_columns(
    patients: _Patients, rng: np.random.Generator, mix: CaseMix
) -> dict[str, np.ndarray]:
    n = patients.owner.size
    band = patients.band[patients.owner]
    frailty = patients.frailty_per_encounter
    severity = _correlated(rng, n, (0.55, frailty)) + 0.4 * math.log(mix.acuity)
    stay = _correlated(rng, n, (0.35, severity)) + math.log(mix.length_of_stay) / 0.7
    table: dict[str, np.ndarray] = {
        "race": patients.race[patients.owner],
        "gender": patients.gender[patients.owner],
        "age": np.array(schema.AGE_BANDS, dtype=object)[band],
        "weight": _body_weights(rng, n, mix),
    }
    table["admission_type_id"] = _admission_types(rng, severity, mix)
    table["admission_source_id"] = _admission_sources(rng, table["admission_type_id"])
    elective = (table["admission_type_id"] == schema.ELECTIVE_ADMISSION).astype(float)
    procedures = _correlated(rng, n, (0.25, stay)) + 0.8 * (elective - 0.185)
    drivers = _Drivers(frailty, severity, stay, procedures, band)
    table["discharge_disposition_id"] = _discharges(rng, drivers, patients.is_last)
    table["time_in_hospital"] = _from_latent(stay, *_table(schema.TIME_IN_HOSPITAL))
    table["payer_code"] = _payers(rng, band, mix)
    table["medical_specialty"] = _specialties(rng, band, mix)
    table.update(_counts(rng, drivers, patients.rank, mix))
    table.update(_diagnoses(rng, table["number_diagnoses"]))
    table.update(_lab_results(rng, n))
    table.update(_medications(rng, band))
    return table


def _body_weights(rng: np.random.Generator, n: int, mix: CaseMix) -> np.ndarray:
    values, weights = _table(schema.WEIGHT_RECORDED)
    weight = values[_pick(rng, weights, n)]
    weight[rng.random(n) < _shift_odds(schema.WEIGHT_MISSING_SHARE, mix.missingness)] = np.nan
    return weight


def _admission_types(rng: np.random.Generator, severity: FloatArray, mix: CaseMix) -> IntArray:
    values, weights = _table(schema.ADMISSION_TYPE)
    is_emergency = values == schema.EMERGENCY_ADMISSION
    share = weights[is_emergency].sum() / weights.sum()
    emergency = rng.random(severity.size) < _shift_odds(share, mix.acuity * np.exp(0.3 * severity))
    other = values[~is_emergency][_pick(rng, weights[~is_emergency], severity.size)]
    return np.where(emergency, schema.EMERGENCY_ADMISSION, other)


def _admission_sources(rng: np.random.Generator, types: IntArray) -> IntArray:
    sources = np.empty(types.size, dtype=np.int64)
    for admission_type, conditional in schema.ADMISSION_SOURCE_BY_TYPE.items():
        rows = np.flatnonzero(types == admission_type)
        values, weights = _table(conditional)
        sources[rows] = values[_pick(rng, weights, rows.size)]
    return sources


def _discharges(rng: np.random.Generator, drivers: _Drivers, is_last: np.ndarray) -> IntArray:
    """Disposition depends on age and stay; death and hospice end a patient's history.

    Expired/hospice dispositions only occur on a patient's last encounter (nobody is
    admitted after dying); their weight there is raised so the overall share stays real.
    """
    values, weights = _table(schema.DISCHARGE)
    age_slope = np.array([schema.DISCHARGE_AGE_SLOPE.get(v, 0.0) for v in values])
    stay_slope = np.array([schema.DISCHARGE_STAY_SLOPE.get(v, 0.0) for v in values])
    logits = (
        (np.log(weights) - _discharge_centring(values, age_slope, stay_slope))[None, :]
        + np.clip(drivers.band - 6, -3, 3)[:, None] * age_slope[None, :]
        + drivers.stay[:, None] * stay_slope[None, :]
    )
    final = np.isin(values, list(EXPIRED_OR_HOSPICE))
    last_share = max(is_last.mean(), 1e-9)
    logits[:, final] += np.where(is_last, -math.log(last_share), -np.inf)[:, None]
    return values[_pick_rows(rng, np.exp(logits - logits.max(axis=1, keepdims=True)))]


def _discharge_centring(
    values: IntArray, age_slope: FloatArray, stay_slope: FloatArray
) -> FloatArray:
    """log E[exp(effects)] per disposition at the default mix, so the real shares survive."""
    ages = np.array(schema.AGE_COUNTS, dtype=float)
    band = np.clip(np.arange(ages.size) - 6, -3, 3)
    age_term = np.log(np.exp(np.outer(age_slope, band)) @ (ages / ages.sum()))
    return age_term + stay_slope**2 / 2


def _payers(rng: np.random.Generator, band: IntArray, mix: CaseMix) -> np.ndarray:
    values, weights = _table(schema.PAYER_RECORDED)
    non_medicare = values != schema.MEDICARE
    payer = values[non_medicare][_pick(rng, weights[non_medicare], band.size)]
    medicare_share = np.array(schema.MEDICARE_SHARE_BY_BAND)[band]
    payer[rng.random(band.size) < medicare_share] = schema.MEDICARE
    payer[rng.random(band.size) < _shift_odds(schema.PAYER_MISSING_SHARE, mix.missingness)] = np.nan
    return payer


def _specialties(rng: np.random.Generator, band: IntArray, mix: CaseMix) -> np.ndarray:
    """Pediatric specialties only for patients under 20, who see them far more often."""
    values, weights = _table(schema.SPECIALTY_RECORDED)
    pediatric = np.array([any(m in str(v) for m in schema.PEDIATRIC_MARKERS) for v in values])
    adult = values[~pediatric][_pick(rng, weights[~pediatric], band.size)]
    child_weights = np.where(pediatric, weights * 40.0, weights)
    child = values[_pick(rng, child_weights, band.size)]
    specialty = np.where(band < 2, child, adult)
    missing = rng.random(band.size) < _shift_odds(schema.SPECIALTY_MISSING_SHARE, mix.missingness)
    specialty[missing] = np.nan
    return specialty


@lru_cache(maxsize=1)
def _lab_table() -> tuple[IntArray, FloatArray]:
    """num_lab_procedures: a spike at 1 (no panel ordered) and a bell around 45 (median 44)."""
    low, high = schema.LAB_RANGE
    values = np.arange(low, high + 1)
    weights = ndtr((values + 0.5 - 45.0) / 17.5) - ndtr((values - 0.5 - 45.0) / 17.5)
    weights = 0.968 * weights / weights.sum()
    weights[0] += 0.032
    return values, weights


@lru_cache(maxsize=1)
def _medication_count_table() -> tuple[IntArray, FloatArray]:
    """num_medications: gamma-shaped, mean 16, median 15, long right tail to 81."""
    low, high = schema.MEDICATIONS_RANGE
    values = np.arange(low, high + 1)
    shape, scale = 3.9, 4.1
    weights = gammainc(shape, (values + 0.5) / scale) - gammainc(shape, (values - 0.5) / scale)
    return values, weights


def _counts(
    rng: np.random.Generator, drivers: _Drivers, rank: IntArray, mix: CaseMix
) -> dict[str, IntArray]:
    n = rank.size
    lab = _correlated(rng, n, (0.3, drivers.stay))
    drugs = _correlated(rng, n, (0.5, drivers.stay), (0.3, drivers.procedures))
    diagnoses = _correlated(rng, n, (0.25, drivers.stay), (0.3, drivers.frailty))
    diagnoses += 0.12 * (drivers.band - 6)
    return {
        "num_lab_procedures": _from_latent(lab, *_lab_table()),
        "num_procedures": _from_latent(drivers.procedures, *_table(schema.NUM_PROCEDURES)),
        "num_medications": _from_latent(drugs, *_medication_count_table()),
        "number_outpatient": _visits(rng, _OUTPATIENT, drivers, rank, 1.0),
        "number_emergency": _visits(rng, _EMERGENCY, drivers, rank, mix.acuity),
        "number_inpatient": _visits(rng, _INPATIENT, drivers, rank, mix.acuity),
        "number_diagnoses": _from_latent(diagnoses, *_table(schema.NUMBER_DIAGNOSES)),
    }


@dataclass(frozen=True)
class _VisitModel:
    """Prior-year visits of one kind: a gamma-Poisson count around a frailty-driven rate."""

    mean: float
    cap: int
    loading: float  # how strongly frailty raises the rate
    shape: float  # gamma shape: small values give the real excess of zeros


_OUTPATIENT = _VisitModel(*schema.OUTPATIENT, loading=0.4, shape=0.17)
_EMERGENCY = _VisitModel(*schema.EMERGENCY, loading=0.7, shape=0.18)
_INPATIENT = _VisitModel(*schema.INPATIENT, loading=0.8, shape=1.3)


def _visits(
    rng: np.random.Generator, model: _VisitModel, drivers: _Drivers, rank: IntArray, acuity: float
) -> IntArray:
    """Prior-year visits, zero-inflated like the real columns.

    The rate grows with the patient's frailty and with the encounter's rank (a patient's later
    encounters have their earlier admissions in the preceding year).
    """
    scale = model.mean * acuity / _visit_normaliser(model.loading)
    rate = scale * np.exp(model.loading * drivers.frailty) * _history(rank)
    counts = rng.poisson(rate * rng.gamma(model.shape, 1.0 / model.shape, rank.size))
    return np.minimum(counts, model.cap).astype(np.int64)


_DIAG_TAIL_DECAY = 125.0


@lru_cache(maxsize=3)
def _diagnosis_table(position: int) -> tuple[np.ndarray, FloatArray]:
    """ICD-9 codes for diag_1/2/3: the real head of common codes plus a long tail of rare ones.

    The tail spreads the remaining third of encounters over plausible codes of every chapter (V
    and E codes mostly in secondary positions) with weights decaying exponentially in a rank
    fixed by a constant seed: which rare codes are common is a property of the population, not
    of a hospital. No tail code outranks the head, and a full-size table holds the real
    ~700-790 distinct codes per position.
    """
    head = schema.DIAG_HEAD[position]
    pool: list[str] = []
    chapter_weight: list[float] = []
    for first, last, weight in schema.ICD9_CHAPTERS:
        pool += [str(code) for code in range(first, last + 1)]
        chapter_weight += [weight] * (last - first + 1)
    secondary = 1.0 if position else 0.1
    pool += [f"V{code:02d}" for code in schema.V_CODES]
    chapter_weight += [secondary] * len(schema.V_CODES)
    low, high = schema.E_CODE_RANGE
    pool += [f"E{code}" for code in range(low, high + 1)]
    chapter_weight += [0.3 * secondary * secondary] * (high - low + 1)
    keep = np.array([code not in head for code in pool])
    codes = np.array(pool, dtype=object)[keep]
    rank = np.random.default_rng(schema.DIAG_TAIL_SEED + position).permutation(codes.size)
    tail = np.array(chapter_weight)[keep] * np.exp(-rank / _DIAG_TAIL_DECAY)
    tail *= (schema.ENCOUNTERS_TOTAL - sum(head.values())) / tail.sum()
    head_codes, head_weights = _table(head)
    return np.concatenate([head_codes, codes]), np.concatenate([head_weights, tail])


def _diagnoses(rng: np.random.Generator, number_diagnoses: IntArray) -> dict[str, np.ndarray]:
    n = number_diagnoses.size
    columns: dict[str, np.ndarray] = {}
    for position in range(3):
        codes, weights = _diagnosis_table(position)
        drawn = codes[_pick(rng, weights, n)]
        # One redraw makes a code repeated across positions as rare as in the real file.
        for earlier in columns.values():
            repeat = np.flatnonzero(drawn == earlier)
            drawn[repeat] = codes[_pick(rng, weights, repeat.size)]
        missing = (number_diagnoses <= position) | (
            rng.random(n) < schema.DIAG_EXTRA_MISSING[position]
        )
        drawn[missing] = np.nan
        columns[f"diag_{position + 1}"] = drawn
    return columns


def _lab_results(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    glucose = _table(schema.MAX_GLU_SERUM)
    a1c = _table(schema.A1C_RESULT)
    return {
        "max_glu_serum": glucose[0][_pick(rng, glucose[1], n)],
        "A1Cresult": a1c[0][_pick(rng, a1c[1], n)],
    }


def _medications(rng: np.random.Generator, band: IntArray) -> dict[str, np.ndarray]:
    """The 23 drug columns, plus `change` and `diabetesMed` derived from them as in the source.

    Younger patients (type 1 diabetes) are more often on insulin. diabetesMed is "Yes" exactly
    when some drug is prescribed; `change` is "Ch" when a dose went up or down, or (for a share
    of treated patients) when the drug itself was switched.
    """
    n = band.size
    states = np.array(["No", "Steady", "Up", "Down"], dtype=object)
    columns: dict[str, np.ndarray] = {}
    treated = np.zeros(n, dtype=bool)
    moved = np.zeros(n, dtype=bool)
    for drug in MEDICATION_COLUMNS:
        steady, up, down = schema.MEDICATION_COUNTS[drug]
        on = (steady + up + down) / schema.ENCOUNTERS_TOTAL
        share_on = np.full(n, on)
        if drug == "insulin":
            share_on = _shift_odds(on, np.exp(-0.12 * (band - 6)))
        u = rng.random(n)
        within = u / np.maximum(share_on, 1e-12)
        total = max(steady + up + down, 1)
        state = 1 + (within >= steady / total) + (within >= (steady + up) / total)
        index = np.where(u < share_on, state, 0)
        treated |= index > 0
        moved |= index >= 2
        columns[drug] = states[index]
    switched = treated & ~moved & (rng.random(n) < schema.SWITCH_SHARE)
    columns["change"] = np.where(moved | switched, "Ch", "No").astype(object)
    columns["diabetesMed"] = np.where(treated, "Yes", "No").astype(object)
    return columns


# --- readmission label --------------------------------------------------------------------

# The latent risk model of `<30` readmission, in log-odds. Effects start from the published
# rates of the real file (data-formats.md) as log-odds against the reference level, shrunk for
# the confounding the generator builds in (frail patients have more visits, longer stays,
# worse dispositions). Signal.strength then scales them jointly (see Signal).
_INPATIENT_EFFECT = np.array([0.0, 0.45, 0.8, 1.0, 1.1, 1.45])  # 0, 1, 2, 3, 4, 5+ visits
_EMERGENCY_EFFECT = np.array([0.0, 0.25, 0.6])  # 0, 1, 2+ visits
_AGE_EFFECT = np.array([-1.95, -0.9, 0.45, 0.13, 0.03, -0.1, 0.06, 0.1, 0.12, -0.08])
_DISCHARGE_EFFECT: dict[int, float] = {
    2: 0.65,
    3: 0.5,
    4: 0.15,
    5: 0.95,
    6: 0.35,
    7: 0.5,
    8: 0.45,
    10: 0.65,
    12: 1.55,
    15: 1.8,
    16: 0.8,
    17: 0.5,
    18: 0.05,
    22: 1.35,
    23: -0.2,
    24: -0.5,
    25: -0.4,
    28: 1.8,
}
_A1C_EFFECT: dict[str, float] = {"Norm": -0.13, ">7": -0.07, ">8": -0.1}
# Unobserved severity: what the chart does not show keeps the task realistically hard.
_FRAILTY_EFFECT = 0.4
# `>30` among those not readmitted within 30 days shares the same drivers, more weakly.
_INTERCEPT_LATER = -0.72
_LATER_SHARE = 0.5


def _readmission_score(
    table: dict[str, np.ndarray], patients: _Patients, signal: Signal
) -> FloatArray:
    """Log-odds of `<30` readmission minus the intercept."""
    band, frailty = patients.band[patients.owner], patients.frailty_per_encounter
    score = signal.strength * _clinical_score(table, band, frailty)
    if signal.diffuse:
        mean, sd = _scatter_moments(signal.layout)
        score = score + signal.diffuse * (_scatter(table, signal.layout) - mean) / sd
    return score


def _clinical_score(
    table: dict[str, np.ndarray], band: IntArray, frailty: FloatArray
) -> FloatArray:
    """The published risk model: a few strong effects, and what the chart does not show."""
    discharge_effect = np.array([_DISCHARGE_EFFECT.get(d, 0.0) for d in range(31)])
    return (
        _INPATIENT_EFFECT[np.minimum(table["number_inpatient"], 5)]
        + _EMERGENCY_EFFECT[np.minimum(table["number_emergency"], 2)]
        + 0.05 * np.minimum(table["number_outpatient"], 5)
        + 0.015 * (table["time_in_hospital"] - 4)
        + discharge_effect[table["discharge_disposition_id"]]
        + _AGE_EFFECT[band]
        + 0.13 * (table["diabetesMed"] == "Yes")
        + 0.15 * np.isin(table["insulin"], ["Up", "Down"])
        + 0.07 * np.clip(table["number_diagnoses"] - 7, -3, 3)
        + 0.01 * (table["num_medications"] - 15)
        + pd.Series(table["A1Cresult"]).map(_A1C_EFFECT).fillna(0.0).to_numpy()
        + _principal_diagnosis_effect(table["diag_1"])
        + _FRAILTY_EFFECT * frailty
    )


# Columns whose levels each get a small fixed effect in the scattered part of the signal.
_SCATTER_LEVELS = ("race", "gender", *_CODING, "change", *MEDICATION_COLUMNS)
_SCATTER_DIAGNOSES = ("diag_1", "diag_2", "diag_3")
_SCATTER_NUMBERS = (
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_diagnoses",
)


def _scatter(table: dict[str, np.ndarray], layout: int) -> FloatArray:
    """Many small fixed effects, one per level of every column in `_SCATTER_LEVELS`, per
    diagnosis group (the hundreds of the ICD-9 code, V and E codes) and a slope per count.

    An effect is a function of the layout seed, the column and the level's text alone, so
    every hospital of a federation shares the same risk model.
    """
    n = len(table["race"])
    total = np.zeros(n)
    for index, column in enumerate((*_SCATTER_LEVELS, *_SCATTER_DIAGNOSES)):
        text = pd.Series(table[column], dtype=object).astype(str)
        if column in _SCATTER_DIAGNOSES:
            text = text.map(_diagnosis_group)
        levels, codes = np.unique(text.to_numpy(), return_inverse=True)
        effects = np.array([_level_effect(layout, index, level) for level in levels])
        total += effects[codes]
    rng = np.random.default_rng([layout, 0x5CA7])
    slopes = rng.standard_normal(len(_SCATTER_NUMBERS))
    for slope, column in zip(slopes, _SCATTER_NUMBERS, strict=True):
        values = np.log1p(table[column].astype(float))
        total += slope * (values - values.mean()) / max(float(values.std()), 1e-9)
    return total


def _diagnosis_group(code: str) -> str:
    head = code[:1]
    if head in ("V", "E") or code == "nan":
        return head
    return str(int(float(code)) // 100)


def _level_effect(layout: int, column: int, level: str) -> float:
    digest = hashlib.sha256(level.encode()).digest()
    seed = [layout, 0x5CA7, column, int.from_bytes(digest[:8], "big")]
    return float(np.random.default_rng(seed).standard_normal())


@lru_cache(maxsize=1)
def _reference_chart() -> tuple[_Patients, dict[str, np.ndarray]]:
    """A fixed default population: what the scatter is scaled on and the intercept solved on."""
    return _chart(_REFERENCE_ROWS, _REFERENCE_SEED, CaseMix())


@lru_cache(maxsize=32)
def _scatter_moments(layout: int) -> tuple[float, float]:
    values = _scatter(_reference_chart()[1], layout)
    return float(values.mean()), max(float(values.std()), 1e-9)


@lru_cache(maxsize=32)
def _intercept(signal: Signal) -> float:
    """The intercept at which first encounters of the reference population readmit within
    30 days at `signal.prevalence` (in expectation), found by bisection."""
    patients, table = _reference_chart()
    usable = ~np.isin(table["discharge_disposition_id"], list(EXPIRED_OR_HOSPICE))
    score = _readmission_score(table, patients, signal)[(patients.rank == 0) & usable]
    low, high = -15.0, 5.0
    for _ in range(60):
        middle = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(middle + score)))) > signal.prevalence:
            high = middle
        else:
            low = middle
    return (low + high) / 2


_REFERENCE_ROWS = 40_000
_REFERENCE_SEED = 0x0EF


def _principal_diagnosis_effect(codes: np.ndarray) -> FloatArray:
    """Weak effect of the principal diagnosis chapter (cancer and complications readmit more)."""
    text = pd.Series(codes, dtype=object)
    number = pd.to_numeric(text, errors="coerce").to_numpy()
    effect = np.zeros(number.size)
    effect[(number >= 140) & (number < 240)] = 0.2
    effect[(number >= 710) & (number < 740)] = -0.3
    effect[(number >= 800) & (number < 1000)] = -0.07
    effect[np.floor(number) == 996] = 0.25
    effect[np.floor(number) == 428] = 0.15
    effect[(text == "V57").to_numpy()] = 0.13
    return effect


def _readmission_labels(
    score: FloatArray, intercept: float, table: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Draw NO / >30 / <30 from the risk score; death or hospice is never followed by one."""
    within_30 = 1.0 / (1.0 + np.exp(-(intercept + score)))
    later = 1.0 / (1.0 + np.exp(-(_INTERCEPT_LATER + _LATER_SHARE * score)))
    first, second = rng.random(score.size), rng.random(score.size)
    label = np.where(first < within_30, "<30", np.where(second < later, ">30", "NO"))
    label[np.isin(table["discharge_disposition_id"], list(EXPIRED_OR_HOSPICE))] = "NO"
    return label.astype(object)


# --- timeline and ids ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Timeline:
    admission: np.ndarray  # datetime64[D] per encounter
    discharge: np.ndarray
    first_admission: np.ndarray  # datetime64[D] per patient
    span_days: IntArray  # per patient, first admission to last discharge
    encounter_id: IntArray
    patient_nbr: IntArray  # per patient


def _timeline(
    patients: _Patients, table: dict[str, np.ndarray], rng: np.random.Generator, id_start: int
) -> _Timeline:
    """Admission dates consistent with the labels, and ids that increase with time.

    After a `<30` label the patient's next admission (if any) follows within 29 days of
    discharge, after `>30` or NO later; ids are assigned in admission order, as a hospital's
    system would, so a patient's first encounter has the smallest encounter_id.
    """
    stay = table["time_in_hospital"].astype(np.int64)
    label = table[LABEL_COLUMN]
    soon = label == "<30"
    base = np.where(soon, rng.integers(1, 30, stay.size), 31)
    extra = np.where(soon, 0.0, rng.exponential(np.where(label == ">30", 150.0, 400.0)))
    last = patients.is_last
    base, extra = np.where(last, 0, base), np.where(last, 0.0, extra)
    owner, n = patients.owner, patients.encounters.size
    fixed = np.bincount(owner, weights=stay + base, minlength=n)
    flexible = np.bincount(owner, weights=extra, minlength=n)
    scale = np.clip((_MAX_SPAN_DAYS - fixed) / np.maximum(flexible, 1e-9), 0.0, 1.0)
    step = stay + base + np.floor(extra * scale[owner]).astype(np.int64)
    passed = np.cumsum(step) - step
    offset = passed - passed[np.cumsum(patients.encounters) - patients.encounters][owner]
    span = np.zeros(n, dtype=np.int64)
    span[owner[last]] = offset[last] + stay[last]
    window = int((_LAST_DAY - _FIRST_DAY).astype(int))
    first = _FIRST_DAY + np.floor(rng.random(n) * (window - span + 1)).astype("timedelta64[D]")
    admission = first[owner] + offset.astype("timedelta64[D]")
    encounter_order = np.lexsort((patients.rank, owner, admission))
    encounter_id = np.empty(stay.size, dtype=np.int64)
    encounter_id[encounter_order] = id_start + np.arange(stay.size)
    patient_nbr = np.empty(n, dtype=np.int64)
    patient_nbr[np.lexsort((np.arange(n), first))] = id_start + np.arange(n)
    return _Timeline(
        admission=admission,
        discharge=admission + stay.astype("timedelta64[D]"),
        first_admission=first,
        span_days=span,
        encounter_id=encounter_id,
        patient_nbr=patient_nbr,
    )


# --- identifiers --------------------------------------------------------------------------


def _identifiers(
    patients: _Patients, timeline: _Timeline, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Identifier columns a real extract carries; none can belong to a real person.

    Names and street names come from a seeded Faker (per patient: the only slow part); house
    numbers, towns of the hospital's catchment area and the numbers below are drawn in bulk.
    SSNs use area numbers 900-999, which the SSA never issues, with group numbers 01-49,
    outside every ITIN range; phone numbers use 555-0100..0199, reserved for fiction. Dates of
    birth keep the patient in the same age band at every encounter.
    """
    fake = Faker("en_US")
    fake.seed_instance(int(rng.integers(2**63)))
    n, owner = patients.encounters.size, patients.owner
    state = str(rng.choice(sorted(schema.AREA_CODES)))
    towns = [(fake.city(), fake.zipcode_in_state(state)) for _ in range(25)]
    town = _pick(rng, 1.0 / np.arange(1, len(towns) + 1), n)
    house = rng.integers(1, 10_000, n)
    unit = np.where(rng.random(n) < 0.3, rng.integers(1, 1000, n), 0)
    names, addresses = [], []
    for gender, home, number, apartment in zip(patients.gender, town, house, unit, strict=True):
        first = fake.first_name_female() if gender == "Female" else fake.first_name_male()
        names.append(f"{first} {fake.last_name()}")
        city, zipcode = towns[home]
        street = f"{number} {fake.street_name()}" + (f" Apt. {apartment}" if apartment else "")
        addresses.append(f"{street}, {city}, {state} {zipcode}")
    physicians = [f"Dr. {fake.first_name()} {fake.last_name()}" for _ in range(_pool_size(n))]
    doctor = _pick(rng, 1.0 / np.arange(1, len(physicians) + 1) ** 0.7, owner.size)
    per_patient = {
        "patient_name": np.array(names, dtype=object),
        "date_of_birth": _dates(_births(patients, timeline, rng)),
        "address": np.array(addresses, dtype=object),
        "phone": _phones(rng, schema.AREA_CODES[state], n),
        "ssn": _ssns(rng, n),
        "mrn": _formatted(rng.choice(90_000_000, n, replace=False) + 10_000_000, "{:08d}"),
    }
    columns = {name: values[owner] for name, values in per_patient.items()}
    columns["admission_date"] = _dates(timeline.admission)
    columns["discharge_date"] = _dates(timeline.discharge)
    columns["attending_physician"] = np.array(physicians, dtype=object)[doctor]
    return {name: columns[name] for name in IDENTIFIER_COLUMNS}


def _pool_size(patients: int) -> int:
    return int(np.clip(patients // 300, 8, 200))


def _births(patients: _Patients, timeline: _Timeline, rng: np.random.Generator) -> np.ndarray:
    band_start = 10.0 * patients.band * 365.25 + 2.0
    room = np.maximum(10.0 * 365.25 - timeline.span_days - 4.0, 0.0)
    age_days = np.floor(band_start + rng.random(band_start.size) * room).astype(np.int64)
    return timeline.first_admission - age_days.astype("timedelta64[D]")


def _dates(days: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(days.astype("datetime64[D]"), unit="D").astype(object)


def _formatted(numbers: IntArray, pattern: str) -> np.ndarray:
    return np.array([pattern.format(int(x)) for x in numbers], dtype=object)


def _phones(rng: np.random.Generator, area_codes: tuple[int, ...], n: int) -> np.ndarray:
    area = np.array(area_codes)[rng.integers(0, len(area_codes), n)]
    codes = area * 100 + rng.integers(0, 100, n)
    return np.array([f"({c // 100}) 555-01{c % 100:02d}" for c in codes], dtype=object)


def _ssns(rng: np.random.Generator, n: int) -> np.ndarray:
    # Unique per patient: 100 areas x 49 groups x 9,999 serials.
    slot = rng.choice(100 * 49 * 9999, n, replace=False)
    area, rest = 900 + slot // (49 * 9999), slot % (49 * 9999)
    group, serial = 1 + rest // 9999, 1 + rest % 9999
    return np.array(
        [f"{a}-{g:02d}-{s:04d}" for a, g, s in zip(area, group, serial, strict=True)],
        dtype=object,
    )
