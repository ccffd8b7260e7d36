"""A study's projected compute: what the runtime will run, and what the site policy allows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from datasites.contract.encoding import N_FEATURES
from datasites.contract.plan import Plan, PlanError
from datasites.contract.zoo import _count, build_model, count_parameters
from datasites.privacy.budget import study_budget
from datasites.site.compute import Compute, steps_per_round
from datasites.site.policy import StudyPolicy
from scientist.config import DPConfig, StudyConfig

EMAIL = "scientist@research.org"
# The attack: private enough, and weeks of a hospital's server with 340 MB each way a call.
HUGE = dict(
    task="ehr",
    model="ehr_mlp",
    model_kwargs={"hidden": [4096] * 6},
    rounds=500,
    local_steps=100_000,
    eval_every=1,
)


def plan(**config: object) -> Plan:
    return Plan.from_dict(
        StudyConfig(**{"aggregation": "plain", **config}).plan("study-0001", EMAIL)
    )


@pytest.mark.parametrize(
    ("config", "n"),
    [
        (dict(task="ehr", rounds=3, batch_size=512), 14_000),
        (dict(task="ehr", rounds=2, local_epochs=3, batch_size=100), 1_001),
        (dict(task="ehr", rounds=2, batch_size=4_096), 1_500),  # the batch is capped at n
        (dict(task="pathmnist", rounds=4, local_steps=5, batch_size=256), 18_000),
        (dict(task="pathmnist", rounds=2, local_steps=25, batch_size=8_192), 300),
    ],
)
def test_steps_per_round_are_the_runtimes(config: dict, n: int) -> None:
    study = plan(**config)

    compute = Compute.of(study, n)

    assert compute.steps_per_round == study_budget(study, n).train.steps
    assert compute.total_steps == compute.steps_per_round * study.rounds
    assert compute.evaluations == len(study.eval_rounds())


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_steps_need_a_positive_row_count(n: object) -> None:
    with pytest.raises(ValueError, match="positive number of training rows"):
        steps_per_round(plan(task="ehr"), n)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        ("ehr_logistic", {}),
        ("ehr_mlp", {}),
        ("ehr_mlp", {"hidden": [8]}),
        ("ehr_mlp", {"hidden": (32, 16), "dropout": 0.1}),
        ("pathmnist_cnn", {}),
        ("pathmnist_cnn", {"width": 4}),
        ("pathmnist_cnn", {"width": 128}),
    ],
)
def test_parameters_are_those_of_the_built_model(model: str, kwargs: dict) -> None:
    built = build_model(model, **kwargs)

    assert count_parameters(model, kwargs) == sum(p.numel() for p in built.parameters())


def test_an_85_million_parameter_model_is_counted_without_allocating_it() -> None:
    _count.cache_clear()
    expected = (N_FEATURES + 1) * 4096 + 5 * (4096 + 1) * 4096 + 4096 + 1

    started = time.perf_counter()
    counted = count_parameters("ehr_mlp", {"hidden": [4096] * 6})
    elapsed = time.perf_counter() - started

    assert counted == expected > 85_000_000
    # Allocating and initialising 340 MB of weights takes most of a second on this machine.
    assert elapsed < 0.25, f"{elapsed:.3f} s: the model was built for real"


def test_the_attack_plan_is_refused_on_every_limit() -> None:
    compute = Compute.of(plan(**HUGE), 14_000)

    assert compute.bytes_per_call == compute.parameters * 4 > 340_000_000
    assert StudyPolicy().compute_violations(compute) == [
        "100,000 DP-SGD steps per round exceed study.max_local_steps 1,000",
        "50,000,000 DP-SGD steps in all exceed study.max_total_steps 20,000",
        "501 evaluations exceed study.max_evaluations 101",
        "85,073,921 model parameters exceed study.max_model_parameters 5,000,000",
    ]


def test_the_compute_line_states_steps_evaluations_and_size() -> None:
    study = plan(task="pathmnist", rounds=200, local_steps=5, eval_every=5)

    assert Compute.of(study, 18_000).line() == (
        "compute here: 1,000 DP-SGD steps (5 per round x 200 rounds, 41 evaluations), "
        "52,649 parameters, 0.2 MB of weights each way per call"
    )
    assert Compute.of(plan(**HUGE), 100).line().endswith("340 MB of weights each way per call")
    small = Compute.of(plan(task="ehr", model="ehr_logistic"), 100)
    assert small.line().endswith("284 parameters, 1.1 kB of weights each way per call")


# The measured recipes (benchmarks/README.md, benchmarks/*.py, scientist/demo.py, tests) with
# the training rows of the largest hospital they ran on.
RECIPES = {
    "pathmnist 200 x 5 steps": (
        dict(task="pathmnist", rounds=200, local_steps=5, lr=0.2, momentum=0.9, eval_every=200),
        18_000,
    ),
    "pathmnist 48 x 25 steps": (
        dict(task="pathmnist", rounds=48, local_steps=25, lr=0.2, momentum=0.9, eval_every=48),
        18_000,
    ),
    "pathmnist 20 epoch rounds": (dict(task="pathmnist", rounds=20, lr=2.0, eval_every=20), 25_000),
    "pathmnist demo 16 x 5": (
        dict(
            task="pathmnist",
            rounds=16,
            local_steps=5,
            batch_size=128,
            eval_every=16,
            dp=DPConfig(epsilon=3.0),
        ),
        2_000,
    ),
    "pathmnist width 32, 2 epochs": (
        dict(task="pathmnist", model_kwargs={"width": 32}, rounds=20, local_epochs=2),
        2_000,
    ),
    "pathmnist round overhead": (
        dict(task="pathmnist", rounds=4, local_epochs=3, eval_every=4),
        2_000,
    ),
    "ehr 10 epoch rounds": (
        dict(task="ehr", model="ehr_logistic", rounds=10, batch_size=512, eval_every=10),
        14_000,
    ),
    "ehr demo": (dict(task="ehr", model="ehr_logistic", rounds=6, eval_every=3), 2_000),
    "ehr mlp default": (
        dict(task="ehr", rounds=4, local_epochs=2, batch_size=128, eval_every=2),
        3_000,
    ),
    "ehr most rounds at the defaults": (dict(task="ehr", rounds=500), 3_000),
    "ehr recipe (scientist.recipes)": (dict(task="ehr"), 20_000),
    "pathmnist recipe (scientist.recipes)": (dict(task="pathmnist"), 25_000),
    "ehr replica 10 x 5 epochs": (dict(task="ehr", rounds=10, local_epochs=5), 20_000),
    "ehr replica 50 x 2 epochs": (dict(task="ehr", rounds=50, local_epochs=2), 20_000),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_measured_recipes_are_allowed_by_default(name: str) -> None:
    config, n = RECIPES[name]
    study = plan(**config)

    assert StudyPolicy().violations(study.to_dict()) == []
    assert StudyPolicy().compute_violations(Compute.of(study, n)) == []


def test_model_kwargs_are_checked_when_the_plan_is_read() -> None:
    raw = StudyConfig(aggregation="plain", task="ehr", model="ehr_mlp").plan("study-0001", EMAIL)

    with pytest.raises(PlanError, match="model_kwargs does not fit ehr_mlp: hidden must be"):
        Plan.from_dict({**raw, "model_kwargs": {"hidden": "64,32"}})
    with pytest.raises(PlanError, match="does not take the argument 'width'"):
        Plan.from_dict({**raw, "model_kwargs": {"width": 16}})


def test_the_projection_carries_the_compute(tmp_path: Path) -> None:
    from datasites.governance.projection import project
    from datasites.site.hospital import Hospital

    study = plan(task="pathmnist", rounds=20, local_steps=5, eval_every=10)
    projection = project(Hospital.open(tmp_path / "hospital-q"), study, 2_000)

    assert projection.compute == Compute.of(study, 2_000)
    assert projection.lines()[-1] == projection.compute.line()
    assert projection.to_dict()["compute"]["total_steps"] == 100
