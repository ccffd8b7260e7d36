"""The site policy file: defaults, strict parsing, and what it allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasites.policy import (
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
    study = StudyPolicy(allowed_models=("ehr_logistic",), max_rounds=5, min_batch_size=64,
                        max_epsilon=0.5)  # fmt: skip

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
