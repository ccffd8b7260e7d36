"""A hospital's site policy: `<data-dir>/<hospital>/policy.toml`.

The hospital, not the scientist, decides how much privacy its data may lose in total and at
which delta it accounts. The file is plain TOML so an operator can read and edit it; unknown
keys are an error, because a misspelt limit silently ignored is a limit not enforced.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasites.contract.secure_sum import MAX_PARTY_ID, default_threshold
from datasites.contract.untrusted import int_fits, shown
from datasites.site.paths import POLICY_FILE

if TYPE_CHECKING:
    from datasites.site.compute import Compute

# The [study] limits on a study's compute (see `datasites.site.compute.Compute`).
COMPUTE_LIMITS = ("max_local_steps", "max_total_steps", "max_evaluations", "max_model_parameters")

DEFAULT_POLICY = """\
# Site policy of this hospital's datasite. Unknown keys are an error.

[budget]
# Total epsilon each dataset may lose, over all studies of all scientists (composed).
epsilon_cap = 10.0
# The delta at which this hospital accounts; studies must use the same delta.
delta = 1e-5

[study]
# What a study may ask for. `approve` refuses a plan outside these limits.
allowed_models = ["ehr_logistic", "ehr_mlp", "pathmnist_cnn"]
# Rounds cost this hospital compute, not privacy (the epsilon covers all of them).
max_rounds = 500
min_batch_size = 32
# Most a single study may spend here (its approved epsilon).
max_epsilon = 5.0
# Compute, which epsilon does not bound (a PathMNIST DP-SGD step takes about 1 s here).
# DP-SGD steps in one round (local_steps, or local_epochs x ceil(rows / batch size)): one
# epoch of 256,000 rows at batch 256; the benchmarks' whole-epoch rounds take about 80.
max_local_steps = 1000
# DP-SGD steps over all rounds, about 6 hours; the benchmarks' longest studies take ~1,200.
max_total_steps = 20000
# Noised evaluations of the global model: 500 rounds at the default eval_every 5 is 101.
max_evaluations = 101
# Parameters of the model: the largest zoo CNN (width 128) has 3.3 million. Every call moves
# 4 bytes per parameter each way, 20 MB at this limit.
max_model_parameters = 5000000
# Secure aggregation: the scientist sees only sums over at least `threshold` hospitals.
# Refuse every study that does not aggregate securely:
require_secure_aggregation = false
# The least threshold a secure study may name (0: more than two thirds of its partners, the
# bound that holds against a relay that lies; a number is a floor of its own).
min_secure_threshold = 0

[auto_approve]
# `python -m datasites watch` (and launch.py --auto-approve) approves a request only when
# all of these hold, and leaves every other request for a person.
enabled = false
# Scientists (emails) whose requests may be approved automatically; empty means nobody.
scientists = []
# Only the exact template the scientist library generates (never custom code).
vetted_only = true
# Most epsilon a study approved automatically may spend.
max_epsilon = 1.0

[quota]
# What one scientist account may take from this datasite, whatever it studies. The guard
# refuses a call past a limit before syft stores anything, and audits the refusal.
# `python -m datasites scientists quota EMAIL ...` raises (or lowers) them for one account.
# Bytes stored through action.set and blob storage, in all (syft keeps every object).
max_stored_mb = 1024
# One stored object or blob: the largest allowed model's weights are 20 MB a call.
max_object_mb = 64
# Requests waiting for this hospital's decision.
max_pending_requests = 20
# Code and request submissions in any hour.
max_submissions_per_hour = 60
"""

# Per-account quotas set by `scientists quota` (email -> {key: value}); policy.toml holds
# the defaults.
QUOTAS_FILE = "quotas.json"
MB = 1024 * 1024


class PolicyError(ValueError):
    """policy.toml is malformed; the message names the key and the file."""


@dataclass(frozen=True)
class BudgetPolicy:
    epsilon_cap: float = 10.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (0 < self.epsilon_cap < math.inf):
            raise PolicyError(f"budget.epsilon_cap must be positive, found {self.epsilon_cap}.")
        if not (0 < self.delta < 1):
            raise PolicyError(f"budget.delta must be in (0, 1), found {self.delta}.")


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{name} must be a list of strings, found {value!r}.")
    return tuple(value)


def _limit(name: str, value: Any, low: float, kind: type = float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise PolicyError(f"{name} must be a number >= {low}, found {value!r}.")
    if kind is int and not (isinstance(value, int) or value.is_integer()):
        raise PolicyError(f"{name} must be an integer, found {value!r}.")


@dataclass(frozen=True)
class StudyPolicy:
    """Limits on what any single study may ask for at this hospital: its privacy, and the
    compute it may take from the hospital's server (which the epsilon does not bound)."""

    allowed_models: tuple[str, ...] = ("ehr_logistic", "ehr_mlp", "pathmnist_cnn")
    max_rounds: int = 500
    min_batch_size: int = 32
    max_epsilon: float = 5.0
    max_local_steps: int = 1_000
    max_total_steps: int = 20_000
    max_evaluations: int = 101
    max_model_parameters: int = 5_000_000
    require_secure_aggregation: bool = False
    min_secure_threshold: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.require_secure_aggregation, bool):
            raise PolicyError("study.require_secure_aggregation must be true or false.")
        _limit("study.min_secure_threshold", self.min_secure_threshold, 0, int)
        object.__setattr__(
            self, "allowed_models", _strings("study.allowed_models", self.allowed_models)
        )
        _limit("study.max_rounds", self.max_rounds, 1, int)
        _limit("study.min_batch_size", self.min_batch_size, 1, int)
        _limit("study.max_epsilon", self.max_epsilon, 0.0)
        for name in COMPUTE_LIMITS:
            _limit(f"study.{name}", getattr(self, name), 1, int)

    def violations(self, plan: Mapping[str, Any]) -> list[str]:
        """What in `plan` this policy does not allow; one short sentence each.

        `plan` is the scientist's literal: every value is compared without `float()` and
        shown through `untrusted.shown`, so a hostile one cannot raise here.
        """
        out = []
        if _text(plan.get("model")) not in self.allowed_models:
            out.append(
                f"model {shown(plan.get('model'))} is not in study.allowed_models "
                f"{list(self.allowed_models)}"
            )
        if _num(plan, "rounds") > self.max_rounds:
            out.append(
                f"{shown(plan.get('rounds'))} rounds exceed study.max_rounds {self.max_rounds}"
            )
        if _num(plan, "batch_size", math.inf) < self.min_batch_size:
            out.append(
                f"batch size {shown(plan.get('batch_size'))} is below "
                f"study.min_batch_size {self.min_batch_size}"
            )
        if _num(plan, "epsilon") > self.max_epsilon:
            out.append(
                f"epsilon {shown(plan.get('epsilon'))} exceeds study.max_epsilon "
                f"{self.max_epsilon:g}"
            )
        secure = plan.get("aggregation") == "secure"
        if self.require_secure_aggregation and not secure:
            out.append("the study does not aggregate securely (study.require_secure_aggregation)")
        floor = self.threshold_floor(plan.get("partners"))
        if secure and _num(plan, "threshold", math.inf) < floor:
            why = (
                "study.min_secure_threshold"
                if self.min_secure_threshold
                else "more than two thirds of the partners (study.min_secure_threshold 0)"
            )
            out.append(f"threshold {shown(plan.get('threshold'))} is below {floor}, {why}")
        return out

    def threshold_floor(self, partners: Any) -> int:
        """The least secure threshold allowed: the policy's number, or (0) more than two
        thirds of the plan's partners, the bound against a relay that lies."""
        if self.min_secure_threshold:
            return self.min_secure_threshold
        if isinstance(partners, dict) and 0 < len(partners) <= MAX_PARTY_ID:
            return default_threshold(len(partners))
        return 0

    def compute_violations(self, compute: Compute) -> list[str]:
        """What in a study's projected compute (`Projection.compute`) this policy does not
        allow; one short sentence each, naming the policy key."""
        c = compute
        checks = (
            (c.steps_per_round, self.max_local_steps, "DP-SGD steps per round", "max_local_steps"),
            (c.total_steps, self.max_total_steps, "DP-SGD steps in all", "max_total_steps"),
            (c.evaluations, self.max_evaluations, "evaluations", "max_evaluations"),
            (c.parameters, self.max_model_parameters, "model parameters", "max_model_parameters"),
        )
        return [
            f"{value:,} {what} exceed study.{key} {limit:,}"
            for value, limit, what, key in checks
            if value > limit
        ]


@dataclass(frozen=True)
class AutoApprovePolicy:
    """Which requests `watch` may approve without a person."""

    enabled: bool = False
    scientists: tuple[str, ...] = ()
    vetted_only: bool = True
    max_epsilon: float = 1.0

    def __post_init__(self) -> None:
        for name in ("enabled", "vetted_only"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"auto_approve.{name} must be true or false.")
        object.__setattr__(self, "scientists", _strings("auto_approve.scientists", self.scientists))
        _limit("auto_approve.max_epsilon", self.max_epsilon, 0.0)

    def refusals(self, scientist: Any, vetted: bool, epsilon: Any) -> list[str]:
        """Why a request may not be approved automatically; [] when it may.

        `scientist` and `epsilon` come from the request: anything but a bounded number is
        refused, and neither is ever formatted unbounded.
        """
        out = []
        if not self.enabled:
            out.append("auto_approve.enabled is false")
        if _text(scientist) not in self.scientists:
            out.append(
                f"{shown(scientist) if scientist else 'the requester'} is not in "
                "auto_approve.scientists"
            )
        if self.vetted_only and vetted is not True:
            out.append("the code is custom and auto_approve.vetted_only is true")
        if not _bounded(epsilon):
            out.append(f"epsilon {shown(epsilon)} is not a finite number")
        elif not 0 < epsilon <= self.max_epsilon:
            out.append(
                f"epsilon {epsilon:g} is not within (0, auto_approve.max_epsilon "
                f"{self.max_epsilon:g}]"
                if epsilon <= 0
                else f"epsilon {epsilon:g} exceeds auto_approve.max_epsilon {self.max_epsilon:g}"
            )
        return out


def _bounded(value: Any) -> bool:
    """A real number that arithmetic and formatting can take: no bool, NaN, inf or huge int."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return int_fits(value) if isinstance(value, int) else math.isfinite(value)


def _text(value: Any) -> str | None:
    """`value` if it is a string, else None: only strings are looked up in the policy's
    lists (an unhashable or oddly comparing value is simply not listed)."""
    return value if isinstance(value, str) else None


def _num(plan: Mapping[str, Any], key: str, missing: float = -math.inf) -> float:
    """The plan's number as a float to compare with a limit: `missing` when absent, the
    signed infinity for an int too large, +inf for NaN and non-numbers (never within a
    limit). Never calls float() on an unbounded int."""
    value = plan.get(key)
    if value is None:
        return missing
    if isinstance(value, int) and not isinstance(value, bool) and not int_fits(value):
        return math.inf if value > 0 else -math.inf
    return float(value) if _bounded(value) else math.inf


@dataclass(frozen=True)
class QuotaPolicy:
    """What one account may take from the datasite: storage, pending requests, submissions."""

    max_stored_mb: float = 1024
    max_object_mb: float = 64
    max_pending_requests: int = 20
    max_submissions_per_hour: int = 60

    def __post_init__(self) -> None:
        _limit("quota.max_stored_mb", self.max_stored_mb, 0.0)
        _limit("quota.max_object_mb", self.max_object_mb, 0.0)
        _limit("quota.max_pending_requests", self.max_pending_requests, 0, int)
        _limit("quota.max_submissions_per_hour", self.max_submissions_per_hour, 0, int)
        for name in ("max_stored_mb", "max_object_mb"):
            if getattr(self, name) > 1e9:
                raise PolicyError(f"quota.{name} must be at most 1e9 MB.")

    @property
    def stored_bytes(self) -> int:
        return int(self.max_stored_mb * MB)

    @property
    def object_bytes(self) -> int:
        return int(self.max_object_mb * MB)


QUOTA_KEYS = tuple(f.name for f in fields(QuotaPolicy))


def read_quotas(root: Path) -> dict[str, dict[str, Any]]:
    """The per-account quotas `scientists quota` wrote: {email: {key: value}}."""
    path = root / QUOTAS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raise PolicyError(f"{path} is not valid JSON; fix it or delete it.") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PolicyError(f"{path} must map emails to quotas; fix it or delete it.")
    return raw


def write_quota(root: Path, email: str, **values: float) -> QuotaPolicy:
    """Set `email`'s own quotas (checked first); the others keep the policy's. Returns the
    account's quota as it now stands."""
    unknown = sorted(set(values) - set(QUOTA_KEYS))
    if unknown:
        raise PolicyError(f"unknown quota keys {unknown}; allowed: {list(QUOTA_KEYS)}.")
    quotas = read_quotas(root)
    own = {**quotas.get(email, {}), **values}
    effective = replace(Policy.load(root).quota, **own)  # raises on a bad value
    quotas[email] = own
    path = root / QUOTAS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(quotas, out, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return effective


@dataclass(frozen=True)
class Policy:
    budget: BudgetPolicy = BudgetPolicy()
    study: StudyPolicy = StudyPolicy()
    auto_approve: AutoApprovePolicy = AutoApprovePolicy()
    quota: QuotaPolicy = QuotaPolicy()

    @classmethod
    def load(cls, root: Path) -> Policy:
        """The hospital's policy, or the defaults when it has no policy.toml."""
        path = root / POLICY_FILE
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise PolicyError(f"{path} is not valid TOML ({error}); fix or delete it.") from None
        sections = {
            "budget": BudgetPolicy,
            "study": StudyPolicy,
            "auto_approve": AutoApprovePolicy,
            "quota": QuotaPolicy,
        }
        return cls(**_sections(raw, sections, path))

    def quota_for(self, root: Path, email: str) -> QuotaPolicy:
        """`email`'s quota: the policy's, with what `scientists quota` set for it."""
        own = read_quotas(root).get(email, {})
        try:
            return replace(self.quota, **own)
        except (TypeError, PolicyError) as error:
            raise PolicyError(f"{root / QUOTAS_FILE}: {email}: {error}") from None

    @staticmethod
    def write_default(root: Path) -> Path:
        """Create policy.toml with the defaults, unless the operator already has one."""
        path = root / POLICY_FILE
        if not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            path.write_text(DEFAULT_POLICY)
        return path


def _sections(raw: dict[str, Any], types: dict[str, type], path: Path) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise PolicyError(f"{path} has unknown sections: {', '.join(unknown)}.")
    out = {}
    for name, kind in types.items():
        section = raw.get(name, {})
        allowed = {f.name for f in fields(kind)}
        extra = sorted(set(section) - allowed)
        if extra:
            keys = ", ".join(f"{name}.{k}" for k in extra)
            raise PolicyError(f"{path} has unknown keys: {keys}; allowed: {sorted(allowed)}.")
        try:
            out[name] = kind(**section)
        except PolicyError as error:
            raise PolicyError(f"{path}: {error}") from None
    return out
