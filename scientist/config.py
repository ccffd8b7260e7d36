"""What a data scientist asks for: a study's model, training schedule and privacy target.

Validated here, early, with one-sentence errors, so a mistake is caught in the notebook
rather than as a refusal from every hospital. The hospitals validate the resulting plan
again: nothing here is trusted by them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from datasites.contract.secure_sum import default_threshold
from datasites.contract.tasks import EHR_LABELS, MODEL_NAMES, TASKS, model_task
from datasites.contract.zoo import build_model
from scientist.recipes import recipe

LABELS = EHR_LABELS
AGGREGATIONS = ("secure", "plain")
# Fixed point of a secure study's masked entries (each hospital's size-weighted update):
# steps of 2^-20 (about 1e-6, divided by the federation's size in the average), entries up
# to 2^24 in magnitude (a hospital of 100,000 patients moving a weight by 160).
SECURE_SCALE = 2.0**20
SECURE_CLIP = 2.0**24
# Settings taken from the recipe as they are (the model, the round's length, eval_every and
# the epsilon have rules of their own in `_fill_from_recipe`).
_FROM_RECIPE = (
    "rounds",
    "batch_size",
    "lr",
    "momentum",
    "server_lr",
    "server_momentum",
    "clip_quantile",
)


def _scaled_decay(decay: float, recipe_rounds: int, rounds: Any) -> float:
    """The recipe's weight average over another number of rounds: the average keeps covering
    the same share of the study (about (1 - decay) * recipe_rounds rounds' worth of the last
    ones), so a short study does not end on an average of its first, untrained rounds.
    A rounds value that is not a positive int keeps the recipe's (validation refuses it)."""
    if not decay or isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        return decay
    return round(max(0.0, 1.0 - (1.0 - decay) * recipe_rounds / rounds), 3)


def _positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, found {type(value).__name__}.")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, found {value}.")


def _fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, found {type(value).__name__}.")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), found {value}.")


def _count(name: str, value: int, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, found {value!r}.")


@dataclass(frozen=True)
class DPConfig:
    """The privacy target: the whole study may cost at most (epsilon, delta) per hospital.

    Each hospital calibrates its own noise from its own dataset size so that training (on
    its training part) and evaluation (on its disjoint test part, in parallel) each spend
    exactly this budget there; max_grad_norm is the per-example
    clipping bound (an example is one patient for EHR, one image patch for PathMNIST).
    """

    epsilon: float = 1.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)
        _positive("max_grad_norm", self.max_grad_norm)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), found {self.delta}.")


@dataclass(frozen=True)
class StudyConfig:
    """A federated study: R rounds of local DP-SGD at every approving hospital, then FedAvg.

    `momentum` is the hospitals' local heavy-ball momentum on the privatized gradient (it
    goes into the plan). `server_lr` and `server_momentum` are the scientist's own FedAvgM
    step (`scientist.fedavg.fedavgm`): post-processing of DP weights, never sent to the
    hospitals.
    Every setting left unset comes from the task's validated recipe (`scientist.recipes`):
    `StudyConfig(task="ehr")` is the recipe the benchmarks measured, at its epsilon.
    `local_steps`, if set (with `local_epochs` 1), makes every round exactly that many
    local DP-SGD steps instead of whole epochs: hospitals with different label mixes and
    stains drift apart within a long round, and shorter rounds average them more often.
    `average_decay`, if set, makes the final model an exponential moving average of the
    global weights over rounds (the scientist's post-processing, not in the plan); the
    final evaluation and `result.model` use that average.
    """

    task: str
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    rounds: int | None = None
    local_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    dp: DPConfig | None = None
    label: str = "readmitted_30"
    eval_every: int | None = None
    min_hospitals: int = 1
    seed: int = 0
    momentum: float | None = None
    server_lr: float | None = None
    server_momentum: float | None = None
    local_steps: int | None = None
    average_decay: float | None = None
    clip_quantile: float | None = None
    aggregation: str = "secure"
    threshold: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, found {self.task!r}.")
        if isinstance(self.dp, dict):
            object.__setattr__(self, "dp", DPConfig(**self.dp))
        self._fill_from_recipe()
        if self.model not in MODEL_NAMES or model_task(self.model) != self.task:
            names = [m for m in MODEL_NAMES if model_task(m) == self.task]
            raise ValueError(f"model for {self.task} must be one of {names}, found {self.model!r}.")
        build_model(self.model, **self.model_kwargs)  # the zoo validates the kwargs
        for name in ("rounds", "local_epochs", "batch_size", "eval_every", "min_hospitals"):
            _count(name, getattr(self, name))
        _positive("lr", self.lr)
        _positive("server_lr", self.server_lr)
        _fraction("momentum", self.momentum)
        _fraction("server_momentum", self.server_momentum)
        _fraction("average_decay", self.average_decay)
        _fraction("clip_quantile", self.clip_quantile)
        if self.local_steps:
            _count("local_steps", self.local_steps)
            if self.local_epochs != 1:
                raise ValueError("set local_steps or local_epochs, not both (keep local_epochs 1).")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {', '.join(AGGREGATIONS)}, found {self.aggregation!r}."
            )
        if self.threshold is not None:
            _count("threshold", self.threshold, 2)
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, found {self.label!r}.")
        self._check_plan()

    def _fill_from_recipe(self) -> None:
        """Every setting left at None takes the task's validated recipe (scientist.recipes).

        A round's length is one choice: naming either `local_epochs` or `local_steps` sets
        the other to its neutral value (1 epoch, no step count) rather than the recipe's.
        A model other than the recipe's starts from its own default kwargs. The weight
        average is rescaled to the study's rounds (`_scaled_decay`).
        """
        base = recipe(self.task)

        def fill(name: str, value: Any) -> None:
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

        own_model = self.model is not None and self.model != base["model"]
        fill("model", base["model"])
        fill("model_kwargs", {} if own_model else base["model_kwargs"])
        if self.local_epochs is None and self.local_steps is None:
            fill("local_epochs", base["local_epochs"])
            fill("local_steps", base["local_steps"])
        fill("local_epochs", 1)
        fill("local_steps", 0)
        for name in _FROM_RECIPE:
            fill(name, base[name])
        fill("average_decay", _scaled_decay(base["average_decay"], base["rounds"], self.rounds))
        fill("eval_every", base["eval_every"] or self.rounds)
        fill("dp", DPConfig(epsilon=base["epsilon"]))

    def _check_plan(self) -> None:
        """Refuse here, in the same sentence, every plan the hospitals' runtime would refuse:
        the runtime's `Plan` is the one schema, so a notebook cannot pass what every
        hospital then rejects (rounds=2000, say)."""
        from datasites.contract.plan import Plan, PlanError

        try:
            partners = _check_partners(max(3, self.threshold or 0))
            Plan.from_dict(self.plan("plan-check", "scientist@example.org", partners))
        except PlanError as error:
            raise ValueError(str(error)) from None

    def plan(
        self, study_id: str, scientist: str, partners: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The literal plan the hospitals' runtime executes (and their operators read).

        A secure study names its `partners` (hospital -> datasite verify key, from their
        metadata) and its threshold (more than two thirds of them unless set: the bound against
        a relay that lies, `datasites.contract.secure_sum.default_threshold`).

        `momentum` and `local_steps` appear only when set, so plans without them stay as they
        were; the
        server-side FedAvgM settings never appear: they are not the hospitals' business.
        """
        plan = {
            "study_id": study_id,
            "scientist": scientist,
            "task": self.task,
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "label": self.label,
            "rounds": self.rounds,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "lr": float(self.lr),
            "epsilon": float(self.dp.epsilon),
            "delta": float(self.dp.delta),
            "max_grad_norm": float(self.dp.max_grad_norm),
            "eval_every": self.eval_every,
        }
        if self.momentum:
            plan["momentum"] = float(self.momentum)
        if self.local_steps:
            plan["local_steps"] = int(self.local_steps)
        if self.clip_quantile:
            plan["clip_quantile"] = float(self.clip_quantile)
        if self.aggregation == "secure":
            if partners is None or len(partners) < 2:
                raise ValueError(
                    "secure aggregation needs at least 2 hospitals; submit to more, or set "
                    "aggregation='plain' for a one-hospital study."
                )
            plan["aggregation"] = "secure"
            plan["partners"] = dict(sorted(partners.items()))
            plan["threshold"] = self.threshold or default_threshold(len(partners))
            plan["secure_scale"] = SECURE_SCALE
            plan["secure_clip"] = SECURE_CLIP
        return plan

    @property
    def secure(self) -> bool:
        return self.aggregation == "secure"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """A saved config; one saved before secure aggregation existed was a plain study."""
        return cls(**{"aggregation": "plain", **data, "dp": DPConfig(**data["dp"])})


def _check_partners(count: int) -> dict[str, str]:
    """Stand-in partners for validating a secure config's plan before it names hospitals."""
    return {f"check-{i}": f"{i:064x}" for i in range(1, count + 1)}
