"""A hospital's site policy: `<data-dir>/<hospital>/policy.toml`.

The hospital, not the scientist, decides how much privacy its data may lose in total and at
which delta it accounts. The file is plain TOML so an operator can read and edit it; unknown
keys are an error, because a misspelt limit silently ignored is a limit not enforced.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

POLICY_FILE = "policy.toml"

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
"""


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
    if kind is int and not float(value).is_integer():
        raise PolicyError(f"{name} must be an integer, found {value!r}.")


@dataclass(frozen=True)
class StudyPolicy:
    """Limits on what any single study may ask for at this hospital."""

    allowed_models: tuple[str, ...] = ("ehr_logistic", "ehr_mlp", "pathmnist_cnn")
    max_rounds: int = 500
    min_batch_size: int = 32
    max_epsilon: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_models",
                           _strings("study.allowed_models", self.allowed_models))  # fmt: skip
        _limit("study.max_rounds", self.max_rounds, 1, int)
        _limit("study.min_batch_size", self.min_batch_size, 1, int)
        _limit("study.max_epsilon", self.max_epsilon, 0.0)

    def violations(self, plan: Mapping[str, Any]) -> list[str]:
        """What in `plan` this policy does not allow; one short sentence each."""
        out = []
        if plan.get("model") not in self.allowed_models:
            out.append(f"model {plan.get('model')} is not in study.allowed_models "
                       f"{list(self.allowed_models)}")  # fmt: skip
        if _num(plan, "rounds") > self.max_rounds:
            out.append(f"{plan.get('rounds')} rounds exceed study.max_rounds {self.max_rounds}")
        if _num(plan, "batch_size", math.inf) < self.min_batch_size:
            out.append(f"batch size {plan.get('batch_size')} is below study.min_batch_size "
                       f"{self.min_batch_size}")  # fmt: skip
        if _num(plan, "epsilon") > self.max_epsilon:
            out.append(f"epsilon {plan.get('epsilon')} exceeds study.max_epsilon "
                       f"{self.max_epsilon:g}")  # fmt: skip
        return out


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
        object.__setattr__(self, "scientists",
                           _strings("auto_approve.scientists", self.scientists))  # fmt: skip
        _limit("auto_approve.max_epsilon", self.max_epsilon, 0.0)

    def refusals(self, scientist: str, vetted: bool, epsilon: float) -> list[str]:
        """Why a request may not be approved automatically; [] when it may."""
        out = []
        if not self.enabled:
            out.append("auto_approve.enabled is false")
        if scientist not in self.scientists:
            out.append(f"{scientist or 'the requester'} is not in auto_approve.scientists")
        if self.vetted_only and not vetted:
            out.append("the code is custom and auto_approve.vetted_only is true")
        if not epsilon <= self.max_epsilon:
            out.append(f"epsilon {epsilon:g} exceeds auto_approve.max_epsilon "
                       f"{self.max_epsilon:g}")  # fmt: skip
        return out


def _num(plan: Mapping[str, Any], key: str, missing: float = -math.inf) -> float:
    value = plan.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return missing if value is None else math.inf
    return float(value)


@dataclass(frozen=True)
class Policy:
    budget: BudgetPolicy = BudgetPolicy()
    study: StudyPolicy = StudyPolicy()
    auto_approve: AutoApprovePolicy = AutoApprovePolicy()

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
        sections = {"budget": BudgetPolicy, "study": StudyPolicy,
                    "auto_approve": AutoApprovePolicy}  # fmt: skip
        return cls(**_sections(raw, sections, path))

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
