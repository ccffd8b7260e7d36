"""FedAvg is the exact sample-weighted mean; FedAvgM steps along its running momentum, and
the scientist-side settings stay on the scientist's side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasites.contract.plan import Plan, PlanError
from scientist.checkpoint import Checkpoint
from scientist.config import DPConfig, StudyConfig
from scientist.fedavg import fedavg, fedavgm, weight_average
from scientist.study import Study, initial_weights


def test_weighted_mean_is_exact() -> None:
    rng = np.random.default_rng(0)
    updates = [({"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}, n) for n in (10, 30, 60)]
    out = fedavg(updates)
    for key in ("w", "b"):
        expected = sum(w[key] * n for w, n in updates) / 100
        np.testing.assert_allclose(out[key], expected, rtol=1e-6)
        assert out[key].dtype == np.float32


def test_one_hospital_is_returned_unchanged_and_equal_weights_average() -> None:
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(fedavg([(w, 5)])["w"], w["w"])
    v = {"w": np.ones((2, 3), np.float32)}
    np.testing.assert_allclose(fedavg([(w, 7), (v, 7)])["w"], (w["w"] + 1) / 2)


def test_mismatched_updates_are_refused() -> None:
    with pytest.raises(ValueError, match="parameter names"):
        fedavg([({"a": np.zeros(1)}, 1), ({"b": np.zeros(1)}, 1)])
    with pytest.raises(ValueError, match="positive"):
        fedavg([({"a": np.zeros(1)}, 0)])
    with pytest.raises(ValueError, match="at least one"):
        fedavg([])


# --- FedAvgM ----------------------------------------------------------------------------------


def _updates(seed: int) -> list[tuple[dict[str, np.ndarray], int]]:
    rng = np.random.default_rng(seed)
    return [
        ({"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4)}, n)
        for n in (10, 30, 60)
    ]


def _previous(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }


def test_fedavgm_without_momentum_at_server_lr_one_is_plain_fedavg_exactly() -> None:
    # Prepare
    previous, updates = _previous(1), _updates(2)
    # Execute
    weights, buffer = fedavgm(previous, updates, None, server_lr=1.0, server_momentum=0.0)
    # Assert: bit for bit, and no buffer to carry
    plain = fedavg(updates)
    for key in plain:
        np.testing.assert_array_equal(weights[key], plain[key])
        assert weights[key].dtype == np.float32
    assert buffer == {}


def test_fedavgm_two_steps_match_a_hand_computation() -> None:
    # Prepare: m1 = d1, w1 = w0 - lr m1; m2 = beta m1 + d2, w2 = w1 - lr m2, d = w - avg
    beta, lr = 0.8, 1.5
    w0, first, second = _previous(3), _updates(4), _updates(5)
    expected_m, expected_w = {}, {}
    for key in w0:
        avg1 = sum(np.float64(n) * w[key] for w, n in first) / 100
        m1 = w0[key].astype(np.float64) - avg1
        w1 = w0[key] - lr * m1
        avg2 = sum(np.float64(n) * w[key] for w, n in second) / 100
        m2 = beta * m1 + (w1 - avg2)
        expected_m[key], expected_w[key] = m2, w1 - lr * m2
    # Execute
    w1, m1 = fedavgm(w0, first, None, server_lr=lr, server_momentum=beta)
    w2, m2 = fedavgm(w1, second, m1, server_lr=lr, server_momentum=beta)
    # Assert
    for key in w0:
        np.testing.assert_allclose(m2[key], expected_m[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w2[key], expected_w[key], rtol=1e-5, atol=1e-6)
        assert w2[key].dtype == np.float32 and m2[key].dtype == np.float32
    # with momentum the second step differs from FedAvg's: the test can tell them apart
    assert not np.allclose(w2["w"], fedavg(second)["w"], atol=1e-3)


def test_server_lr_scales_the_step_without_momentum() -> None:
    previous, updates = _previous(6), _updates(7)
    weights, buffer = fedavgm(previous, updates, None, server_lr=2.0)
    for key, mean in fedavg(updates).items():
        np.testing.assert_allclose(weights[key], 2 * mean - previous[key], rtol=1e-5, atol=1e-6)
    assert buffer == {}


def test_fedavgm_refuses_bad_settings_and_mismatched_buffers() -> None:
    previous, updates = _previous(8), _updates(9)
    with pytest.raises(ValueError, match="server_momentum must be in"):
        fedavgm(previous, updates, None, server_momentum=1.0)
    with pytest.raises(ValueError, match="server_lr must be positive"):
        fedavgm(previous, updates, None, server_lr=0.0)
    with pytest.raises(ValueError, match="momentum buffer"):
        fedavgm(previous, updates, {"w": previous["w"]}, server_momentum=0.5)
    with pytest.raises(ValueError, match="previous global weights"):
        fedavgm({"w": previous["w"]}, updates, None)


# --- the momentum buffer survives a checkpoint, so resuming is exact ----------------------------


def test_checkpoint_round_trips_the_momentum_buffer(tmp_path: Path) -> None:
    # Prepare
    weights, buffer = fedavgm(_previous(10), _updates(11), None, server_momentum=0.9)
    # Execute
    Checkpoint(3, weights, [{"round": 2}], momentum=buffer).save(tmp_path)
    loaded = Checkpoint.load(tmp_path)
    # Assert
    assert loaded is not None and loaded.next_round == 3
    assert set(loaded.momentum) == set(buffer) and set(loaded.weights) == set(weights)
    for key in buffer:
        np.testing.assert_array_equal(loaded.momentum[key], buffer[key])
        np.testing.assert_array_equal(loaded.weights[key], weights[key])


def test_checkpoint_without_momentum_loads_an_empty_buffer(tmp_path: Path) -> None:
    Checkpoint(1, _previous(12)).save(tmp_path)
    loaded = Checkpoint.load(tmp_path)
    assert loaded is not None and loaded.momentum == {} and set(loaded.weights) == {"w", "b"}


def _replies(weights: dict[str, np.ndarray], seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {
        h: {
            "train": {
                "weights": {
                    k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in weights.items()
                },
                "n": n,
            },
            "epsilon_study": 0.1,
            "epsilon_total": 0.1,
        }
        for h, n in (("hospital-a", 100), ("hospital-b", 300))
    }


def test_a_resumed_study_aggregates_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    # Prepare: the same replies absorbed straight through, and with a save/load in between
    config = StudyConfig(
        aggregation="plain",
        task="ehr",
        model="ehr_logistic",
        rounds=3,
        server_momentum=0.9,
        server_lr=1.2,
    )
    straight = Study(None, "fedavgm-0001", config, {}, tmp_path / "a")  # type: ignore[arg-type]
    resumed = Study(None, "fedavgm-0001", config, {}, tmp_path / "b")  # type: ignore[arg-type]
    start = initial_weights(config)
    state = Checkpoint(1, dict(start))
    other = Checkpoint(1, dict(start))
    # Execute
    for round_ in (1, 2, 3):
        replies = _replies(state.weights, seed=round_)
        straight._absorb(state, replies)
        state.next_round += 1
        resumed._absorb(other, replies)
        other.next_round += 1
        other.save(resumed.folder)
        other = Checkpoint.load(resumed.folder)
    # Assert
    assert set(state.momentum) == set(start)
    for key in start:
        np.testing.assert_array_equal(other.weights[key], state.weights[key])
        np.testing.assert_array_equal(other.momentum[key], state.momentum[key])
    plain = fedavg([(r["train"]["weights"], r["train"]["n"]) for r in replies.values()])
    assert not all(np.allclose(state.weights[k], plain[k], atol=1e-3) for k in plain)


# --- the scientist's settings and the hospitals' plan ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("server_lr", 0.0, "server_lr must be positive"),
        ("server_lr", float("inf"), "server_lr must be positive and finite"),
        ("server_lr", "1", "server_lr must be a number"),
        ("server_momentum", 1.0, r"server_momentum must be in \[0, 1\)"),
        ("server_momentum", -0.1, r"server_momentum must be in \[0, 1\)"),
        ("server_momentum", True, "server_momentum must be a number"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
        ("momentum", float("nan"), r"momentum must be in \[0, 1\)"),
    ],
)
def test_study_config_validates_the_momentum_settings(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StudyConfig(aggregation="plain", task="pathmnist", **{field: value})


def test_study_config_round_trips_the_new_fields() -> None:
    config = StudyConfig(
        aggregation="plain", task="ehr", momentum=0.5, server_lr=0.8, server_momentum=0.7
    )
    assert StudyConfig.from_dict(config.to_dict()) == config
    old = {
        k: v
        for k, v in config.to_dict().items()
        if k not in ("momentum", "server_lr", "server_momentum")
    }
    assert StudyConfig.from_dict(old) == StudyConfig(aggregation="plain", task="ehr")


def test_plan_without_momentum_is_unchanged_and_carries_no_server_settings() -> None:
    # Prepare
    config = StudyConfig(
        aggregation="plain",
        task="pathmnist",
        model_kwargs={},
        rounds=3,
        local_epochs=1,
        batch_size=128,
        lr=1.0,
        momentum=0.0,
        eval_every=5,
        server_lr=1.5,
        server_momentum=0.9,
        dp=DPConfig(epsilon=3.0),
    )
    # Execute
    plan = config.plan("path-0001", "ana@research.org")
    # Assert: exactly the plan from before momentum existed
    assert plan == {
        "study_id": "path-0001",
        "scientist": "ana@research.org",
        "task": "pathmnist",
        "model": "pathmnist_cnn",
        "model_kwargs": {},
        "label": "readmitted_30",
        "rounds": 3,
        "local_epochs": 1,
        "batch_size": 128,
        "lr": 1.0,
        "epsilon": 3.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "eval_every": 5,
    }
    assert Plan.from_dict(plan).to_dict() == {**plan}


def test_plan_with_momentum_carries_it_and_the_hospital_validates_it() -> None:
    config = StudyConfig(aggregation="plain", task="ehr", momentum=0.9, server_momentum=0.5)
    plan = config.plan("ehr-0001", "ana@research.org")
    assert plan["momentum"] == 0.9
    assert "server_momentum" not in plan and "server_lr" not in plan
    assert Plan.from_dict(plan).momentum == 0.9
    assert Plan.from_dict(plan).to_dict() == plan
    with pytest.raises(PlanError, match="momentum must be below 1"):
        Plan.from_dict({**plan, "momentum": 1.0})
    with pytest.raises(PlanError, match="momentum must be within"):
        Plan.from_dict({**plan, "momentum": -0.5})
    with pytest.raises(PlanError, match="unknown plan fields: server_momentum"):
        Plan.from_dict({**plan, "server_momentum": 0.5})


def test_plan_with_local_steps_carries_them_and_the_hospital_validates_them() -> None:
    config = StudyConfig(aggregation="plain", task="pathmnist", local_steps=20)
    plan = config.plan("path-0002", "ana@research.org")
    assert plan["local_steps"] == 20 and plan["local_epochs"] == 1
    assert Plan.from_dict(plan).to_dict() == plan
    without = StudyConfig(aggregation="plain", task="pathmnist").plan(
        "path-0002", "ana@research.org"
    )
    assert Plan.from_dict(without).digest() != Plan.from_dict(plan).digest()
    with pytest.raises(PlanError, match="local_steps and local_epochs exclude each other"):
        Plan.from_dict({**plan, "local_epochs": 2})
    with pytest.raises(PlanError, match="local_steps must be within"):
        Plan.from_dict({**plan, "local_steps": -1})
    with pytest.raises(ValueError, match="set local_steps or local_epochs, not both"):
        StudyConfig(aggregation="plain", task="pathmnist", local_steps=20, local_epochs=2)
    with pytest.raises(ValueError, match="local_steps must be an integer"):
        StudyConfig(aggregation="plain", task="pathmnist", local_steps=2.5)


def test_the_weight_average_is_the_exponential_moving_average() -> None:
    first, second = _previous(1), _previous(2)
    start = weight_average(None, first, 0.8)
    after = weight_average(start, second, 0.8)
    for key in first:
        np.testing.assert_array_equal(start[key], first[key])
        np.testing.assert_allclose(after[key], 0.8 * first[key] + 0.2 * second[key], rtol=1e-6)
    assert start["w"] is not first["w"]
    with pytest.raises(ValueError, match=r"averaging decay must be in \[0, 1\)"):
        weight_average(start, second, 1.0)
    with pytest.raises(ValueError, match="disagree on names"):
        weight_average({"w": first["w"]}, second, 0.5)


def test_checkpoint_round_trips_the_weight_average(tmp_path: Path) -> None:
    average = weight_average(None, _previous(5), 0.5)
    Checkpoint(2, _previous(6), [{"round": 1}], average=average).save(tmp_path)
    loaded = Checkpoint.load(tmp_path)
    assert loaded is not None and set(loaded.average) == set(average)
    for key in average:
        np.testing.assert_array_equal(loaded.average[key], average[key])
    Checkpoint(2, _previous(6)).save(tmp_path)
    assert Checkpoint.load(tmp_path).average == {}
