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
HOSPITAL_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
"""A hospital's name: lowercase letters, digits and dashes, starting with a letter."""
_VERIFY_KEY = re.compile(r"^[0-9a-f]{64}$")
AGGREGATIONS = ("plain", "secure")
MAX_PARTNERS = 64
# Fixed-point settings of a secure study's ring (`datasites.contract.secure_sum.Quantizer`).
SECURE_SCALE_RANGE = (1.0, 2.0**40)
SECURE_CLIP_RANGE = (1.0, 2.0**40)
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
    aggregation: str = "plain"
    """"secure": every release leaves the hospital masked (Bonawitz et al. 2017), so the
    scientist reads only sums over at least `threshold` of the `partners`."""
    partners: dict[str, str] = field(default_factory=dict)
    """A secure study's hospitals: name -> the datasite's Ed25519 verify key (hex). Each
    operator approves exactly who the partners are; keys that do not verify are refused."""
    threshold: int = 0
    """A secure study's least number of hospitals any released sum covers: more than half the
    partners at least (`secure_sum.tolerated_colluders` says what a given value resists)."""
    secure_scale: float = 0.0
    """Fixed-point steps per unit of a masked entry (secure studies)."""
    secure_clip: float = 0.0
    """Largest |entry| a hospital masks, before scaling (secure studies)."""

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
        _check_aggregation(self)
        if _number(values, "local_steps", int, 0, MAX_LOCAL_STEPS) and self.local_epochs != 1:
            raise PlanError(
                "plan fields local_steps and local_epochs exclude each other; keep "
                "local_epochs at 1 when setting local_steps."
            )

    @property
    def dataset(self) -> str:
        return self.task

    @property
    def secure(self) -> bool:
        return self.aggregation == "secure"

    def party_ids(self) -> dict[str, int]:
        """A secure study's party id of each partner: 1.. in the order of their names."""
        return {name: index for index, name in enumerate(sorted(self.partners), start=1)}

    def eval_rounds(self) -> list[int]:
        """The global model is evaluated before training, every eval_every rounds, and last."""
        due = {0, self.rounds, *range(self.eval_every, self.rounds + 1, self.eval_every)}
        return sorted(due)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        # Plans from before these options existed keep their exact form (and digest).
        for optional in _OPTIONAL:
            if not out[optional]:
                del out[optional]
        if out["aggregation"] == "plain":
            del out["aggregation"]
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


def _check_aggregation(plan: Plan) -> None:
    """The secure-aggregation fields: all set with "secure", none with "plain"."""
    values = plan.__dict__
    if plan.aggregation not in AGGREGATIONS:
        raise PlanError(f"plan field aggregation must be one of {', '.join(AGGREGATIONS)}.")
    if not plan.secure:
        extra = [k for k in _SECURE_FIELDS if values[k]]
        if extra:
            raise PlanError(
                f"plan fields {', '.join(extra)} apply to secure aggregation only; omit them."
            )
        return
    _check_partners(plan.partners)
    count = len(plan.partners)
    _number(values, "threshold", int, count // 2 + 1, count)
    _number(values, "secure_scale", float, *SECURE_SCALE_RANGE)
    _number(values, "secure_clip", float, *SECURE_CLIP_RANGE)
    if plan.secure_scale * plan.secure_clip * count >= 2.0**62:
        raise PlanError(
            "plan fields secure_scale x secure_clip x partners must stay below 2^62 (the ring "
            "would overflow); lower secure_scale or secure_clip."
        )


def _check_partners(partners: Any) -> None:
    if not isinstance(partners, dict) or not 2 <= len(partners) <= MAX_PARTNERS:
        raise PlanError(
            f"plan field partners must map 2-{MAX_PARTNERS} hospital names to their datasite "
            "verify keys."
        )
    for name, key in partners.items():
        if not isinstance(name, str) or not HOSPITAL_NAME.match(name):
            raise PlanError(
                "plan field partners has a name that is not a hospital name (lowercase "
                "letters, digits and dashes)."
            )
        if not isinstance(key, str) or not _VERIFY_KEY.match(key):
            raise PlanError(
                f"plan field partners gives {name} a key that is not 64 hex digits (an Ed25519 "
                "verify key)."
            )
    if len(set(partners.values())) != len(partners):
        raise PlanError("plan field partners names the same verify key for two hospitals.")


_SECURE_FIELDS = ("partners", "threshold", "secure_scale", "secure_clip")
# Fields omitted from the canonical form when unset, so plans from before them keep their
# exact form (and digest).
_OPTIONAL = ("momentum", "local_steps", "clip_quantile", *_SECURE_FIELDS)

_DEFAULTS: dict[str, Any] = {
    "eval_every": 5,
    "label": "readmitted_30",
    "model_kwargs": {},
    "momentum": 0.0,
    "local_steps": 0,
    "clip_quantile": 0.0,
    "aggregation": "plain",
    "partners": {},
    "threshold": 0,
    "secure_scale": 0.0,
    "secure_clip": 0.0,
}


def plan_fields() -> tuple[str, ...]:
    """Every plan field, in the order `Plan` declares them: what `show` lists."""
    return tuple(f.name for f in fields(Plan))
