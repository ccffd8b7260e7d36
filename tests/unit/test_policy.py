"""The site policy file: defaults, strict parsing, and what it allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasites.site.compute import Compute
from datasites.site.policy import (
    DEFAULT_POLICY,
    AutoApprovePolicy,
    BudgetPolicy,
    Policy,
    PolicyError,
    StudyPolicy,
)

PLAN = {"model": "ehr_mlp", "rounds": 10, "batch_size": 256, "epsilon": 1.0}


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policy.toml").write_text(text)
    return tmp_path


def test_the_default_file_states_the_defaults(tmp_path: Path) -> None:
    Policy.write_default(tmp_path)

    assert (tmp_path / "policy.toml").read_text() == DEFAULT_POLICY
    assert Policy.load(tmp_path) == Policy() == Policy.load(tmp_path / "missing")
    assert Policy().budget == BudgetPolicy(epsilon_cap=10.0, delta=1e-5)
    assert Policy().auto_approve.enabled is False and Policy().auto_approve.scientists == ()


def test_write_default_keeps_an_operators_file(tmp_path: Path) -> None:
    write(tmp_path, "[budget]\nepsilon_cap = 3.0\n")
    Policy.write_default(tmp_path)
    assert Policy.load(tmp_path).budget.epsilon_cap == 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[budgett]\nepsilon_cap = 3\n", "unknown sections: budgett"),
        ("[study]\nmax_round = 3\n", "unknown keys: study.max_round"),
        ("[auto_approve]\nscientist = ['a@b']\n", "unknown keys: auto_approve.scientist"),
        ("[study]\nmax_rounds = 'ten'\n", "study.max_rounds must be a number >= 1"),
        ("[study]\nmax_rounds = 2.5\n", "study.max_rounds must be an integer"),
        ("[study]\nallowed_models = 'ehr_mlp'\n", "study.allowed_models must be a list of strings"),
        ("[auto_approve]\nenabled = 'yes'\n", "auto_approve.enabled must be true or false"),
        ("[auto_approve]\nmax_epsilon = -1\n", "auto_approve.max_epsilon must be a number >= 0"),
        ("[budget]\nepsilon_cap = 0\n", "budget.epsilon_cap must be positive"),
        ("[budget\n", "is not valid TOML"),
    ],
)
def test_mistakes_are_errors_that_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError) as error:
        Policy.load(write(tmp_path, text))

    assert message in str(error.value) and "policy.toml" in str(error.value)


def test_study_limits_name_every_violation() -> None:
    study = StudyPolicy(
        allowed_models=("ehr_logistic",), max_rounds=5, min_batch_size=64, max_epsilon=0.5
    )

    assert StudyPolicy().violations(PLAN) == []
    assert study.violations(PLAN) == [
        "model ehr_mlp is not in study.allowed_models ['ehr_logistic']",
        "10 rounds exceed study.max_rounds 5",
        "epsilon 1.0 exceeds study.max_epsilon 0.5",
    ]
    assert study.violations(
        {**PLAN, "batch_size": 32, "model": "ehr_logistic", "rounds": 5, "epsilon": 0.5}
    ) == ["batch size 32 is below study.min_batch_size 64"]
    assert len(study.violations({"model": "ehr_logistic", "rounds": "many"})) == 1


def test_auto_approval_needs_every_rule() -> None:
    rules = AutoApprovePolicy(enabled=True, scientists=("a@x.org",), max_epsilon=1.0)

    assert rules.refusals("a@x.org", vetted=True, epsilon=1.0) == []
    assert rules.refusals("b@x.org", vetted=True, epsilon=1.0) == [
        "b@x.org is not in auto_approve.scientists"
    ]
    assert rules.refusals("a@x.org", vetted=False, epsilon=2.0) == [
        "the code is custom and auto_approve.vetted_only is true",
        "epsilon 2 exceeds auto_approve.max_epsilon 1",
    ]
    assert "auto_approve.enabled is false" in AutoApprovePolicy().refusals("a@x.org", True, 0.1)


# --- compute limits ----------------------------------------------------------------------


def test_compute_limits_have_defaults_that_the_default_file_states(tmp_path: Path) -> None:
    Policy.write_default(tmp_path)
    study = Policy.load(tmp_path).study

    assert (
        study.max_local_steps,
        study.max_total_steps,
        study.max_evaluations,
        study.max_model_parameters,
    ) == (1_000, 20_000, 101, 5_000_000)
    assert study == StudyPolicy()


def test_compute_limits_are_read_from_the_file(tmp_path: Path) -> None:
    text = (
        "[study]\nmax_local_steps = 10\nmax_total_steps = 100\nmax_evaluations = 3\n"
        "max_model_parameters = 1_000\n"
    )
    study = Policy.load(write(tmp_path, text)).study

    assert (
        study.max_local_steps,
        study.max_total_steps,
        study.max_evaluations,
        study.max_model_parameters,
    ) == (10, 100, 3, 1_000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_local_steps = 0", "study.max_local_steps must be a number >= 1"),
        ("max_total_steps = 'many'", "study.max_total_steps must be a number >= 1"),
        ("max_evaluations = 2.5", "study.max_evaluations must be an integer"),
        ("max_model_parameters = -1", "study.max_model_parameters must be a number >= 1"),
        ("max_model_parameters = inf", "study.max_model_parameters must be an integer"),
        ("max_local_step = 5", "unknown keys: study.max_local_step"),
    ],
)
def test_compute_limit_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.load(write(tmp_path, f"[study]\n{text}\n"))


COMPUTE = Compute(
    steps_per_round=50, total_steps=500, evaluations=3, parameters=10_000, bytes_per_call=40_000
)


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        ("max_local_steps", 49, "50 DP-SGD steps per round exceed study.max_local_steps 49"),
        ("max_total_steps", 499, "500 DP-SGD steps in all exceed study.max_total_steps 499"),
        ("max_evaluations", 2, "3 evaluations exceed study.max_evaluations 2"),
        (
            "max_model_parameters",
            9_999,
            "10,000 model parameters exceed study.max_model_parameters 9,999",
        ),
    ],
)
def test_each_compute_limit_names_its_key(limit: str, value: int, message: str) -> None:
    at_limit = StudyPolicy(**{limit: value + 1})

    assert StudyPolicy().compute_violations(COMPUTE) == []
    assert at_limit.compute_violations(COMPUTE) == []
    assert StudyPolicy(**{limit: value}).compute_violations(COMPUTE) == [message]


def test_hostile_plan_values_are_violations_not_crashes() -> None:
    study = StudyPolicy()
    huge = {**PLAN, "rounds": 10**5000, "epsilon": 10**400, "batch_size": -(10**400)}

    assert study.violations(huge) == [
        "an integer too large to show rounds exceed study.max_rounds 500",
        "batch size an integer too large to show is below study.min_batch_size 32",
        "epsilon an integer too large to show exceeds study.max_epsilon 5",
    ]
    assert study.violations({**PLAN, "epsilon": float("nan")}) == [
        "epsilon nan exceeds study.max_epsilon 5"
    ]
    rules = AutoApprovePolicy(enabled=True, scientists=("a@x.org",), max_epsilon=1.0)
    assert rules.refusals("a@x.org", True, 10**400) == [
        "epsilon an integer too large to show is not a finite number"
    ]
    assert rules.refusals("a@x.org", True, -1) == [
        "epsilon -1 is not within (0, auto_approve.max_epsilon 1]"
    ]
