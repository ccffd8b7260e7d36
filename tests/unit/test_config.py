"""The scientist's StudyConfig and the hospitals' Plan are one schema: a config refused by
every hospital's runtime is refused in the notebook first, in the same sentence."""

from __future__ import annotations

from typing import Any

import pytest

from datasites.contract.plan import MAX_LOCAL_STEPS, MAX_ROUNDS, Plan, PlanError
from scientist import DPConfig, StudyConfig

# Each plan field the runtime bounds, with values just outside its limits (and a type).
BEYOND = [
    ("rounds", MAX_ROUNDS + 1),
    ("rounds", 2000),
    ("local_epochs", 101),
    ("batch_size", 100_001),
    ("eval_every", MAX_ROUNDS + 1),
    ("lr", 1000.0),
    ("lr", 1e-7),
    ("epsilon", 500.0),
    ("epsilon", 1e-4),
    ("delta", 0.5),
    ("max_grad_norm", 1e5),
    ("max_grad_norm", 1e-5),
    ("local_steps", MAX_LOCAL_STEPS + 1),
]
DP_FIELDS = {"epsilon", "delta", "max_grad_norm"}


def config_with(field: str, value: Any) -> dict[str, Any]:
    if field in DP_FIELDS:
        return {"dp": DPConfig(**{field: value})}
    return {field: value}


def runtime_refusal(field: str, value: Any) -> str:
    plan = StudyConfig(task="ehr").plan("plan-check", "scientist@example.org")
    plan[field] = value
    with pytest.raises(PlanError) as refused:
        Plan.from_dict(plan)
    return str(refused.value)


@pytest.mark.parametrize(("field", "value"), BEYOND)
def test_study_config_refuses_what_the_runtime_refuses_in_the_same_sentence(
    field: str, value: Any
) -> None:
    expected = runtime_refusal(field, value)

    with pytest.raises(ValueError) as refused:
        StudyConfig(task="ehr", **config_with(field, value))

    assert str(refused.value) == expected
    assert field in expected


@pytest.mark.parametrize("task", ["ehr", "pathmnist"])
def test_the_defaults_are_plans_the_runtime_accepts(task: str) -> None:
    config = StudyConfig(task=task)

    plan = Plan.from_dict(config.plan("plan-check", "scientist@example.org"))

    assert plan.rounds == config.rounds and plan.epsilon == config.dp.epsilon
