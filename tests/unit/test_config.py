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


# Three partners, as `submit` names them from the hospitals' metadata (the default is secure).
PARTNERS = {"hospital-a": "a" * 64, "hospital-b": "b" * 64, "hospital-c": "c" * 64}


def config_with(field: str, value: Any) -> dict[str, Any]:
    if field in DP_FIELDS:
        return {"dp": DPConfig(**{field: value})}
    return {field: value}


def runtime_refusal(field: str, value: Any) -> str:
    plan = StudyConfig(task="ehr").plan("plan-check", "scientist@example.org", PARTNERS)
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

    plan = Plan.from_dict(config.plan("plan-check", "scientist@example.org", PARTNERS))

    assert plan.rounds == config.rounds and plan.epsilon == config.dp.epsilon
    # Secure by default: more than two thirds (3 of 3, against a relay that lies), the fixed
    # point the operators approve.
    assert plan.secure and plan.threshold == 3 == len(PARTNERS) and plan.partners == PARTNERS
    assert plan.secure_scale == 2.0**20 and plan.secure_clip == 2.0**24
    with pytest.raises(ValueError, match="secure aggregation needs at least 2 hospitals"):
        config.plan("plan-check", "scientist@example.org", {"hospital-a": "a" * 64})
    plain = StudyConfig(task=task, aggregation="plain").plan("p-0001", "s@example.org")
    assert "aggregation" not in plain and "partners" not in plain


# --- the recipes are the defaults (issue 14) ---------------------------------------------------


@pytest.mark.parametrize("task", ["ehr", "pathmnist"])
def test_the_shortest_call_is_the_validated_recipe(task: str) -> None:
    from scientist.recipes import recipe

    config, expected = StudyConfig(task=task), recipe(task)
    for name, value in expected.items():
        if name == "epsilon":
            assert config.dp.epsilon == value
        elif name == "eval_every":
            assert config.eval_every == (value or config.rounds)
        else:
            assert getattr(config, name) == value, name
    # Evaluated twice: before training and at the end, each with the whole test budget.
    plan = Plan.from_dict(config.plan("abc", "s@example.org", PARTNERS))
    assert plan.eval_rounds() == [0, config.rounds]


def test_the_recipe_fills_only_what_the_scientist_left_out() -> None:
    config = StudyConfig(task="pathmnist", local_epochs=2, model="pathmnist_cnn", rounds=7)
    assert (config.local_epochs, config.local_steps, config.rounds) == (2, 0, 7)
    assert config.eval_every == 7 and config.dp.epsilon == 3.0
    steps = StudyConfig(task="ehr", local_steps=12)
    assert (steps.local_epochs, steps.local_steps) == (1, 12)
    mlp = StudyConfig(task="ehr", model="ehr_mlp")
    assert mlp.model_kwargs == {} and mlp.batch_size == 512
    # The weight average covers the same share of a shorter or longer study.
    # (EHR recipe: 0.8 over 20 rounds, about the last 4 rounds' worth.)
    assert StudyConfig(task="ehr", rounds=8).average_decay == 0.5
    assert StudyConfig(task="ehr", rounds=4).average_decay == 0.0
    assert StudyConfig(task="ehr", rounds=80).average_decay == 0.95
    assert StudyConfig(task="pathmnist", rounds=400).average_decay == 0.95
    assert StudyConfig(task="ehr", rounds=6, average_decay=0.7).average_decay == 0.7
    # Naming the recipe's own model keeps its arguments; another model starts from its own.
    assert StudyConfig(task="ehr", model="ehr_logistic").model_kwargs == {
        "intercept_scale": 1.2,
        "row_norm": 2.0,
    }
    with pytest.raises(ValueError, match="rounds"):
        StudyConfig(task="ehr", rounds=0)
    explicit = StudyConfig(task="ehr", dp=DPConfig(epsilon=0.25), eval_every=2)
    assert explicit.dp.epsilon == 0.25 and explicit.eval_every == 2
    assert StudyConfig.from_dict(StudyConfig(task="ehr").to_dict()) == StudyConfig(task="ehr")


def test_the_cli_without_training_flags_runs_the_recipe() -> None:
    from scientist.__main__ import _parser, config_from_args
    from scientist.recipes import recipe

    for task in ("ehr", "pathmnist"):
        args = _parser().parse_args(["run", "--federation", "x", "--task", task])
        assert config_from_args(args) == StudyConfig(task=task)
    args = _parser().parse_args(
        ["run", "--federation", "x", "--task", "ehr", "--rounds", "3", "--epsilon", "2"]
        + ["--clip-quantile", "0.9"]
    )
    config = config_from_args(args)
    assert config.plan("abc", "s@example.org", PARTNERS)["clip_quantile"] == 0.9
    assert (config.rounds, config.dp.epsilon) == (3, 2.0)
    assert config.local_epochs == recipe("ehr")["local_epochs"] and config.eval_every == 3


def test_the_utility_benchmark_reads_the_same_recipes() -> None:
    from scientist.recipes import recipe
    from tests.conftest import load_benchmark

    module = load_benchmark("utility")
    for task in ("ehr", "pathmnist"):
        settings = module.FEDERATED["full"][task]
        for name in ("rounds", "local_epochs", "local_steps", "batch_size", "lr", "model"):
            assert settings[name] == recipe(task)[name], (task, name)
    assert recipe("ehr")["epsilon"] == module.EHR_EPSILON
    assert recipe("pathmnist")["epsilon"] == module.PATH_EPSILON
