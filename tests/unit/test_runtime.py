"""The hospital runtime in-process: real ledger file, real DP training, no syft."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasites.contract.encoding import encode_ehr
from datasites.contract.plan import Plan
from datasites.privacy.accounting import epsilon
from datasites.privacy.ledger import size_event
from datasites.runtime.execute import current_hospital, execute
from datasites.server.assets import ehr_training_view
from datasites.site.hospital import Hospital
from datasites.site.paths import HOSPITAL_ROOT_ENV
from datasites.site.policy import Policy
from scientist.config import DPConfig, StudyConfig
from scientist.study import initial_weights
from synthetic.ehr import generate_ehr

MARKER = "PATIENT-SECRET-4242"
CONFIG = StudyConfig(
    task="ehr",
    aggregation="plain",
    model="ehr_logistic",
    rounds=2,
    local_epochs=1,
    batch_size=64,
    lr=0.5,
    dp=DPConfig(epsilon=2.0),
)


@pytest.fixture
def hospital(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "hospital-z"
    Policy.write_default(root)
    monkeypatch.setenv(HOSPITAL_ROOT_ENV, str(root))
    current_hospital.cache_clear()
    yield root
    current_hospital.cache_clear()


@pytest.fixture(scope="module")
def table():
    return ehr_training_view(generate_ehr(1_500, seed=11, identifiers=False))


@pytest.fixture(scope="module")
def provisioned_template(table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hospital-z as provisioning leaves it: its table's size released through its own
    ledger. Tests that start from a copy share that one noised size, so a plan's noise is
    calibrated once for the module and not for each fresh folder (most of a call's time)."""
    root = tmp_path_factory.mktemp("provisioned") / "hospital-z"
    Policy.write_default(root)
    _, labels = encode_ehr(table, Plan.from_dict(plan()).label)
    Hospital.open(root).ledger.public_size(Plan.from_dict(plan()).dataset, len(labels))
    return root


@pytest.fixture
def provisioned(provisioned_template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh copy of the provisioned hospital-z (for tests that do not look at the size
    release itself; `hospital` is a folder that has released nothing)."""
    root = tmp_path / "hospital-z"
    shutil.copytree(provisioned_template, root)
    monkeypatch.setenv(HOSPITAL_ROOT_ENV, str(root))
    current_hospital.cache_clear()
    yield root
    current_hospital.cache_clear()


def plan(study_id: str = "ehr-test-0001", **changes: object) -> dict:
    return {**CONFIG.plan(study_id, "scientist@research.org"), **changes}


def test_a_round_trains_and_is_charged(hospital: Path, table) -> None:
    weights = initial_weights(CONFIG)
    out = execute(plan(), train=table, test=table, request={"round": 1, "weights": weights})
    assert "error" not in out, out
    assert out["train"]["n"] > 0 and set(out["train"]["weights"]) == set(weights)
    assert "loss" not in out["train"]  # computed from private rows without noise
    assert np.isfinite(out["evaluation"]["loss_sum"]) and out["evaluation"]["noise_std"] > 0
    assert out["evaluation"]["after_round"] == 0
    assert 0 < out["epsilon_study"] < 2.0 and out["epsilon_total"] > out["epsilon_study"]


def test_private_value_in_an_error_does_not_reach_the_scientist(
    hospital: Path, table, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned = table.copy()
    poisoned.loc[poisoned.index[7], "readmitted"] = MARKER
    with caplog.at_level(logging.ERROR, logger="datasites.runtime.execute"):
        out = execute(
            plan(),
            train=poisoned,
            test=poisoned,
            request={"round": 1, "weights": initial_weights(CONFIG)},
        )
    assert MARKER not in repr(out)
    assert "incident" in out["error"] and out["refused"] == "InternalError"
    incident = out["error"].split("incident ")[1][:8]
    assert any(incident in r.getMessage() for r in caplog.records)
    assert current_hospital().ledger.spent("ehr") == 0.0


def test_bad_weights_are_refused_by_name_and_shape(provisioned: Path, table) -> None:
    weights = initial_weights(CONFIG)
    name = next(iter(weights))
    wrong = {**weights, name: np.full((3, 3), 1234.5, np.float32)}
    out = execute(plan(), train=table, test=table, request={"round": 1, "weights": wrong})
    assert out["refused"] == "RequestError" and name in out["error"]
    assert "1234" not in out["error"]


def test_plan_with_unknown_fields_is_refused(hospital: Path, table) -> None:
    out = execute(
        plan(noise_multiplier=0.0),
        train=table,
        test=table,
        request={"round": 1, "weights": initial_weights(CONFIG)},
    )
    assert out["refused"] == "PlanError" and "noise_multiplier" in out["error"]


def test_reused_study_id_with_other_parameters_is_refused(provisioned: Path, table) -> None:
    weights = initial_weights(CONFIG)
    assert "error" not in execute(
        plan(), train=table, test=table, request={"round": 1, "weights": weights}
    )
    out = execute(
        plan(epsilon=3.0), train=table, test=table, request={"round": 2, "weights": weights}
    )
    assert out["refused"] == "StudyConflict" and "epsilon" in out["error"]


@pytest.mark.parametrize(
    "change", [{"eval_every": 1}, {"model": "ehr_mlp", "model_kwargs": {}}, {"momentum": 0.5}]
)
def test_reused_study_id_with_another_plan_is_refused(provisioned: Path, table, change) -> None:
    """Fields the study record does not store (model, evaluation schedule) are covered by the
    plan's digest: a second request under the same id cannot change them."""
    weights = initial_weights(CONFIG)
    assert "error" not in execute(
        plan(), train=table, test=table, request={"round": 1, "weights": weights}
    )
    out = execute(plan(**change), train=table, test=table, request={"round": 2, "weights": weights})
    assert out["refused"] == "StudyConflict" and "plan; submit the change" in out["error"]


def test_delta_must_match_the_hospital(hospital: Path, table) -> None:
    out = execute(
        plan(delta=1e-3),
        train=table,
        test=table,
        request={"round": 1, "weights": initial_weights(CONFIG)},
    )
    assert out["refused"] == "RequestError" and "delta 1e-05" in out["error"]


def test_evaluation_release_noise_matches_the_joint_gaussian_formula(table) -> None:
    from datasites.contract.encoding import encode_ehr
    from datasites.contract.release import default_edges, sensitivity
    from datasites.contract.zoo import build_model
    from datasites.privacy.noise import DISCRETE_NOISE_FACTOR
    from datasites.runtime.execute import LOSS_BOUND, _counts, _release

    parsed = Plan.from_dict(plan())
    model = build_model("ehr_logistic")
    features, labels = encode_ehr(table)
    edges = default_edges("binary")
    exact_counts, losses = _counts(parsed, model, edges, features, labels)
    exact_loss = float(np.clip(losses, 0, LOSS_BOUND).sum())
    sigma, draws = 2.0, 400
    # The discrete noise is drawn DISCRETE_NOISE_FACTOR wider than the event charged for it.
    joint = np.sqrt(sensitivity(exact_counts) ** 2 + 1) * DISCRETE_NOISE_FACTOR
    releases = [_release(exact_counts, losses, sigma) for _ in range(draws)]
    count_noise = np.stack([r["counts"] - exact_counts for r in releases])
    loss_noise = np.array([r["loss_sum"] - exact_loss for r in releases])
    # Std of a normal sample estimate: relative error ~ 1 / sqrt(2 * samples).
    assert count_noise.std() == pytest.approx(sigma * joint, rel=4 / np.sqrt(2 * count_noise.size))
    assert loss_noise.std() == pytest.approx(sigma * joint * LOSS_BOUND, rel=4 / np.sqrt(2 * draws))
    assert abs(count_noise.mean()) < 4 * sigma * joint / np.sqrt(count_noise.size)


def test_evaluation_uses_the_requested_edges_and_returns_them(provisioned: Path, table) -> None:
    weights = initial_weights(CONFIG)
    edges = [0.0, 0.1, 0.3, 0.5, 1.0]
    out = execute(
        plan(), train=table, test=table, request={"round": 1, "weights": weights, "edges": edges}
    )
    again = execute(plan(), train=table, test=table, request={"round": 1, "weights": weights})
    assert np.shape(out["evaluation"]["counts"]) == (2, 4)
    assert out["evaluation"]["edges"] == edges
    # The repeat returns the recorded release, edges included, and spends nothing.
    assert again["evaluation"]["edges"] == edges
    assert again["epsilon_study"] == out["epsilon_study"]


@pytest.mark.parametrize(
    ("edges", "message"),
    [([0.0, 0.6, 0.4, 1.0], "strictly increase"), ([0.0, 1.0], "2 to 32 bins")],
)
def test_bad_edges_are_refused_before_anything_is_spent(
    hospital: Path, table, edges: list, message: str
) -> None:
    out = execute(
        plan(),
        train=table,
        test=table,
        request={"round": 1, "weights": initial_weights(CONFIG), "edges": edges},
    )
    assert out["refused"] == "RequestError" and message in out["error"]
    assert current_hospital().ledger.spent("ehr") == 0.0


def test_unknown_request_keys_are_refused(hospital: Path, table) -> None:
    request = {"round": 1, "weights": initial_weights(CONFIG), "noise_multiplier": 0.0}
    out = execute(plan(), train=table, test=table, request=request)
    assert out["refused"] == "RequestError" and "DP parameters" in out["error"]


def test_syft_mock_run_spends_nothing(hospital: Path, table) -> None:
    """syft runs approved code again on the mocks; the runtime must neither train nor
    charge that run (the mock EHR rows carry ids in the mock range)."""
    from datasites.contract.mocks import MOCK_ID_START, is_mock

    mock = table.assign(encounter_id=table["encounter_id"] + MOCK_ID_START)
    out = execute(
        plan(), train=mock, test=mock, request={"round": 1, "weights": initial_weights(CONFIG)}
    )
    assert out == {"hospital": "hospital-z", "mock": True}
    assert current_hospital().ledger.spent("ehr") == 0.0
    assert current_hospital().ledger.study(plan()["study_id"]) is None
    assert not is_mock(table) and is_mock({"images": [], "labels": [], "mock": True})
    assert not is_mock({"images": [], "labels": []})


def test_the_site_policy_is_enforced_at_every_call(hospital: Path, table) -> None:
    """An approval outside the policy (or a policy tightened since) still runs nothing;
    edits to policy.toml apply from the next call."""
    weights = initial_weights(CONFIG)
    (hospital / "policy.toml").write_text("[study]\nmax_rounds = 1\n")
    out = execute(plan(), train=table, test=table, request={"round": 1, "weights": weights})
    assert out["refused"] == "PolicyRefusal"
    assert "2 rounds exceed study.max_rounds 1" in out["error"]
    assert current_hospital().ledger.spent("ehr") == 0.0

    (hospital / "policy.toml").write_text("[study]\nmax_rounds = 2\n")
    out = execute(plan(), train=table, test=table, request={"round": 1, "weights": weights})
    assert "error" not in out and out["train"]["n"] > 0


def test_a_plan_with_local_momentum_trains_and_momentum_one_is_refused(
    provisioned: Path, table
) -> None:
    weights = initial_weights(CONFIG)
    out = execute(
        plan(momentum=1.0), train=table, test=table, request={"round": 1, "weights": weights}
    )
    assert out["refused"] == "PlanError" and "momentum must be below 1" in out["error"]
    out = execute(
        plan(momentum=0.9), train=table, test=table, request={"round": 1, "weights": weights}
    )
    assert "error" not in out and out["train"]["n"] > 0


def test_a_plan_with_adaptive_clipping_trains_and_a_bad_quantile_is_refused(
    provisioned: Path, table
) -> None:
    weights = initial_weights(CONFIG)
    for bad in (0.995, -0.5, "0.5"):
        out = execute(
            plan(clip_quantile=bad),
            train=table,
            test=table,
            request={"round": 1, "weights": weights},
        )
        assert out["refused"] == "PlanError" and "clip_quantile" in out["error"]
    out = execute(
        plan(clip_quantile=0.5), train=table, test=table, request={"round": 1, "weights": weights}
    )
    assert "error" not in out and out["train"]["n"] > 0
    # The quantile is part of what was approved: the ledger's digest covers it.
    assert Plan.from_dict(plan(clip_quantile=0.5)).digest() != Plan.from_dict(plan()).digest()
    assert "clip_quantile" not in Plan.from_dict(plan()).to_dict()


def test_local_steps_take_exactly_the_steps_the_ledger_charges(provisioned: Path, table) -> None:
    weights = initial_weights(CONFIG)
    out = execute(
        plan(local_steps=3), train=table, test=table, request={"round": 1, "weights": weights}
    )
    record = current_hospital().ledger.study("ehr-test-0001")
    assert "error" not in out, out
    assert out["train"]["steps"] == 3 == record.steps_per_round
    assert record.budget().train.steps == 3


def test_local_steps_and_local_epochs_exclude_each_other(hospital: Path, table) -> None:
    out = execute(
        plan(local_steps=3, local_epochs=2),
        train=table,
        test=table,
        request={"round": 1, "weights": initial_weights(CONFIG)},
    )
    assert out["refused"] == "PlanError" and "exclude each other" in out["error"]
    assert current_hospital().ledger.spent("ehr") == 0.0


def test_compute_beyond_the_site_policy_is_refused_before_training(hospital: Path, table) -> None:
    """A study the scientist library built, within every privacy limit, that takes more
    DP-SGD steps per round than this hospital's tightened policy allows: refused and
    audited on the call, with nothing registered, trained or spent."""
    weights = initial_weights(CONFIG)
    (hospital / "policy.toml").write_text("[study]\nmax_local_steps = 5\n")

    out = execute(plan(), train=table, test=table, request={"round": 1, "weights": weights})

    assert out["refused"] == "PolicyRefusal"
    assert "per round exceed study.max_local_steps 5" in out["error"]
    assert current_hospital().ledger.study("ehr-test-0001") is None
    # Only the dataset's one release of its size (a DP count, made once whatever comes).
    ledger = current_hospital().ledger
    assert ledger.spent("ehr") == pytest.approx(epsilon([size_event()], ledger.delta))
    refused = current_hospital().audit.entries()[-1]
    assert refused["event"] == "refused" and refused["refusal"] == "PolicyRefusal"

    out = execute(
        plan(local_steps=5), train=table, test=table, request={"round": 1, "weights": weights}
    )
    assert "error" not in out and out["train"]["steps"] == 5
