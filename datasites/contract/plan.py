"""The study plan: the declarative, literal part of an approved request.

An approved study's code is nothing but this plan and a call into the hospital's runtime.
The runtime re-validates the plan on every call (unknown keys are an error, not ignored),
so what the operator read at review time is exactly what runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

from datasites.contract.tasks import EHR_LABELS, MODEL_NAMES, TASKS, model_task
from datasites.contract.untrusted import problem, shown

_STUDY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{2,63}$")
MAX_ROUNDS = 1_000
MAX_LOCAL_STEPS = 100_000


class PlanError(ValueError):
    """The plan is malformed; the message names the field and what is allowed."""


def _number(plan: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    """The field's value, checked to be a `kind` within [low, high].

    The range test compares the value as it is: Python compares any int with a float
    exactly, so a hostile 10**400 is simply out of range instead of overflowing `float()`,
    and the message shows it only through `untrusted.shown`, which never prints a huge int.
    """
    value = plan.get(key)
    accepted = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise PlanError(f"plan field {key} must be {kind.__name__}, found {type(value).__name__}.")
    if not low <= value <= high:  # False for NaN too
        raise PlanError(f"plan field {key} must be within [{low}, {high}], found {shown(value)}.")
    return kind(value)


@dataclass(frozen=True)
class Plan:
    """One study: which model, how it trains, and the privacy it may cost at this hospital."""

    study_id: str
    scientist: str
    task: str
    model: str
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    epsilon: float
    delta: float
    max_grad_norm: float
    eval_every: int = 5
    label: str = "readmitted_30"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    momentum: float = 0.0
    """Heavy-ball momentum of the local SGD on the privatized gradient: post-processing."""
    local_steps: int = 0
    """If set, each round takes exactly this many DP-SGD steps instead of `local_epochs`
    passes: shorter rounds let non-IID hospitals drift less from each other."""
    clip_quantile: float = 0.0
    """If set, adaptive clipping (Andrew et al. 2021): the clipping bound starts at
    max_grad_norm and follows this quantile of the per-example gradient norms, steered by a
    noised count released inside the same accounted Gaussian mechanism."""

    @classmethod
    def from_dict(cls, plan: Any) -> Plan:
        """The plan in `plan`, or PlanError saying what is wrong: the only exception, for
        any input (a request's plan is the scientist's literal, hostile or not)."""
        if not isinstance(plan, dict):
            raise PlanError("the plan must be a dict literal.")
        unsafe = problem(plan, "plan")
        if unsafe:
            raise PlanError(unsafe)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(plan) - known)
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise PlanError(f"unknown plan fields: {', '.join(unknown[:5])}{more}.")
        missing = sorted(k for k in known - set(plan) if k not in _DEFAULTS)
        if missing:
            raise PlanError(f"plan is missing fields: {', '.join(missing)}.")
        return cls(**{**_DEFAULTS, **plan})

    def __post_init__(self) -> None:
        values = self.__dict__
        unsafe = problem(values, "plan")
        if unsafe:
            raise PlanError(unsafe)
        if not isinstance(self.study_id, str) or not _STUDY_ID.match(self.study_id):
            raise PlanError("plan field study_id must be 3-64 of a-z, 0-9, '-', '_'.")
        if not isinstance(self.scientist, str) or len(self.scientist) > 254:
            raise PlanError("plan field scientist must be an email string.")
        if self.task not in TASKS:
            raise PlanError(f"plan field task must be one of {', '.join(TASKS)}.")
        if self.model not in MODEL_NAMES or model_task(self.model) != self.task:
            names = [m for m in MODEL_NAMES if model_task(m) == self.task]
            raise PlanError(f"plan field model must be one of {', '.join(names)} for {self.task}.")
        if self.label not in EHR_LABELS:
            raise PlanError(f"plan field label must be one of {', '.join(EHR_LABELS)}.")
        if not isinstance(self.model_kwargs, dict):
            raise PlanError("plan field model_kwargs must be a dict.")
        _check_model_kwargs(self.model, self.model_kwargs)
        _number(values, "rounds", int, 1, MAX_ROUNDS)
        _number(values, "local_epochs", int, 1, 100)
        _number(values, "batch_size", int, 1, 100_000)
        _number(values, "eval_every", int, 1, MAX_ROUNDS)
        _number(values, "lr", float, 1e-6, 100.0)
        _number(values, "epsilon", float, 1e-3, 100.0)
        _number(values, "delta", float, 1e-12, 0.1)
        _number(values, "max_grad_norm", float, 1e-4, 1e4)
        if _number(values, "momentum", float, 0.0, 1.0) == 1.0:
            raise PlanError("plan field momentum must be below 1, found 1.0.")
        _number(values, "clip_quantile", float, 0.0, 0.99)
        if _number(values, "local_steps", int, 0, MAX_LOCAL_STEPS) and self.local_epochs != 1:
            raise PlanError(
                "plan fields local_steps and local_epochs exclude each other; keep "
                "local_epochs at 1 when setting local_steps."
            )

    @property
    def dataset(self) -> str:
        return self.task

    def eval_rounds(self) -> list[int]:
        """The global model is evaluated before training, every eval_every rounds, and last."""
        due = {0, self.rounds, *range(self.eval_every, self.rounds + 1, self.eval_every)}
        return sorted(due)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        # Plans from before these options existed keep their exact form (and digest).
        for optional in ("momentum", "local_steps", "clip_quantile"):
            if not out[optional]:
                del out[optional]
        return out

    def digest(self) -> str:
        """SHA-256 of the plan's canonical JSON: equal exactly when every field is equal."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _check_model_kwargs(model: str, kwargs: dict[str, Any]) -> None:
    """The zoo's own validation, at plan time: an operator reads a bad argument as a plan
    error in `show` instead of a refusal on the first call. The zoo imports torch, so it is
    loaded here, when a plan names model arguments, not when the schema is imported."""
    from datasites.contract.zoo import count_parameters

    try:
        count_parameters(model, kwargs)
    except (TypeError, ValueError) as error:
        raise PlanError(f"plan field model_kwargs does not fit {model}: {error}") from None


_DEFAULTS: dict[str, Any] = {
    "eval_every": 5,
    "label": "readmitted_30",
    "model_kwargs": {},
    "momentum": 0.0,
    "local_steps": 0,
    "clip_quantile": 0.0,
}


def plan_fields() -> tuple[str, ...]:
    """Every plan field, in the order `Plan` declares them: what `show` lists."""
    return tuple(f.name for f in fields(Plan))
