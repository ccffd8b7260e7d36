"""Total mechanisms: weights chosen to overflow for one patient cannot make a release fail
or differ in kind, and a release is charged before it is computed.

The attack (issue 12): finite float32 weights near 3.4e37 on one feature overflow to a
non-finite logit for exactly the patients whose feature is large. Before, evaluation then
raised (a free, noise-free yes/no about private rows) and training released NaN weights
if and only if the target was sampled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from datasites.contract.encoding import N_FEATURES
from datasites.contract.plan import Plan
from datasites.contract.release import default_edges
from datasites.contract.zoo import build_model
from datasites.privacy.accounting import DpEvent, epsilon
from datasites.privacy.dp import clipped_gradient_sum
from datasites.privacy.ledger import Ledger, StudyRecord
from datasites.runtime.execute import LOSS_BOUND, RequestError, _counts, _once, current_hospital
from datasites.site.paths import HOSPITAL_ROOT_ENV
from datasites.site.policy import Policy
from scientist.config import DPConfig, StudyConfig

FEATURE = 5  # the attacker's chosen condition: this feature is large
PLAN = Plan.from_dict(
    StudyConfig(
        aggregation="plain",
        task="ehr",
        model="ehr_logistic",
        rounds=2,
        local_epochs=1,
        batch_size=64,
        dp=DPConfig(epsilon=1.0),
    ).plan("ehr-total-0001", "scientist@research.org")
)


def poisoned_model() -> torch.nn.Module:
    """ehr_logistic whose logit overflows for a row with a large FEATURE, and only then."""
    model = build_model("ehr_logistic")
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, FEATURE] = 3.0e37
        model[0].bias.zero_()
    return model


def rows(n: int, target: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (n, N_FEATURES)).astype(np.float32)
    features[:, FEATURE] = 0.0
    labels = rng.integers(0, 2, n).astype(np.float32)
    if target:
        features[0, FEATURE] = 50.0  # logit 1.5e39: +inf in float32
    return features, labels


def test_a_non_finite_example_contributes_a_zero_gradient() -> None:
    model = poisoned_model()
    features, labels = rows(32, target=True)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)

    with_target, _ = clipped_gradient_sum(model, inputs, targets, task="ehr", max_grad_norm=1.0)
    without, _ = clipped_gradient_sum(model, inputs[1:], targets[1:], task="ehr", max_grad_norm=1.0)

    for name, value in with_target.items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, without[name])


def test_a_non_finite_score_is_a_fixed_prediction_with_the_loss_bound() -> None:
    model = poisoned_model()
    edges = default_edges("binary")
    features, labels = rows(200, target=True)

    counts, losses = _counts(PLAN, model, edges, features, labels)
    clean_counts, clean_losses = _counts(PLAN, model, edges, features[1:], labels[1:])

    assert np.isfinite(losses).all() and losses[0] == LOSS_BOUND
    np.testing.assert_array_equal(losses[1:], clean_losses)
    difference = counts - clean_counts
    half = np.searchsorted(edges, 0.5, side="right") - 1
    assert difference.sum() == 1 and difference[int(labels[0]), half] == 1


def test_a_multiclass_non_finite_row_is_scored_uniform() -> None:
    plan = Plan.from_dict(
        StudyConfig(
            aggregation="plain",
            task="pathmnist",
            model="pathmnist_cnn",
            rounds=1,
            batch_size=64,
            dp=DPConfig(epsilon=1.0),
        ).plan("img-total-0001", "scientist@research.org")
    )
    model = build_model("pathmnist_cnn")
    with torch.no_grad():
        model[-1].bias.fill_(float("inf"))  # every row overflows: the fixed prediction
    images = np.zeros((6, 3, 28, 28), np.float32)
    labels = np.arange(6, dtype=np.int64)

    counts, losses = _counts(plan, model, default_edges("multiclass"), images, labels)

    assert (losses == LOSS_BOUND).all()
    assert counts["confusion"][:, 0].sum() == 6  # uniform: argmax is class 0 for everyone


@pytest.fixture
def hospital(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "hospital-z"
    Policy.write_default(root)
    monkeypatch.setenv(HOSPITAL_ROOT_ENV, str(root))
    current_hospital.cache_clear()
    yield current_hospital()
    current_hospital.cache_clear()


STUDY = ("scientist@research.org", "ehr-total-0001")  # (owner, study id)


def register(ledger: Ledger) -> DpEvent:
    event = DpEvent(noise_multiplier=1.0, sample_rate=0.01, steps=10)
    ledger.register_study(
        StudyRecord(
            study_id="ehr-total-0001",
            scientist="scientist@research.org",
            dataset="ehr",
            rounds=2,
            local_epochs=1,
            batch_size=64,
            lr=0.1,
            epsilon=1.0,
            delta=1e-5,
            max_grad_norm=1.0,
            n=6400,
            sample_rate=0.01,
            noise_multiplier=1.0,
            eval_noise_multiplier=1.0,
            steps_per_round=10,
            evaluations=3,
        )
    )
    return event


def test_a_failing_release_is_charged_and_never_retried(hospital) -> None:
    event = register(hospital.ledger)

    def fails() -> dict:
        raise FloatingPointError("computed from private rows")

    with pytest.raises(FloatingPointError):
        _once(hospital, STUDY, "train", 1, event, fails)
    spent = hospital.ledger.study_spent("ehr-total-0001")
    with pytest.raises(RequestError, match="was charged by another call"):
        _once(hospital, STUDY, "train", 1, event, lambda: {"weights": {}})

    assert spent > 0
    assert hospital.ledger.study_spent("ehr-total-0001") == spent


def test_a_release_is_charged_once_and_repeats_return_it(hospital) -> None:
    event = register(hospital.ledger)
    release = {"weights": {"w": np.ones(2, np.float32)}, "n": 5, "steps": 1}

    first = _once(hospital, STUDY, "train", 1, event, lambda: release)
    spent = hospital.ledger.study_spent("ehr-total-0001")
    again = _once(hospital, STUDY, "train", 1, event, lambda: {"other": 1})

    assert first == release and again.keys() == release.keys()
    assert hospital.ledger.claim("ehr-total-0001", "train", 1, event) is False
    assert hospital.ledger.study_spent("ehr-total-0001") == spent > 0


def test_weights_beyond_the_bound_are_refused_without_echoing_them() -> None:
    from datasites.contract.zoo import MAX_ABS_WEIGHT, load_weights, model_weights

    model = build_model("ehr_logistic")
    weights = model_weights(model)
    weights["0.weight"][0, FEATURE] = 3.0e37

    with pytest.raises(ValueError, match="beyond") as refused:
        load_weights(model, weights)

    assert "3e+37" not in str(refused.value) and "30000000" not in str(refused.value)
    weights["0.weight"][0, FEATURE] = MAX_ABS_WEIGHT
    load_weights(model, weights)  # the bound itself is allowed


# -- the attack through the hospital's runtime: the same reply with or without the target ----

HIDDEN = [8] * 6
ATTACK = StudyConfig(
    aggregation="plain",
    task="ehr",
    local_epochs=1,
    average_decay=0.0,
    model="ehr_mlp",
    model_kwargs={"hidden": HIDDEN},
    rounds=1,
    eval_every=1,
    batch_size=64,
    lr=0.01,
    dp=DPConfig(epsilon=1.0),
)


def condition_weights(feature: int, threshold: float) -> dict[str, np.ndarray]:
    """ehr_mlp weights (within the bound) whose logit overflows to +inf exactly for the rows
    with feature > threshold: one unit opens on the condition, six layers amplify it."""
    from datasites.contract.zoo import MAX_ABS_WEIGHT, model_weights

    weights = {
        k: np.zeros_like(v) for k, v in model_weights(build_model("ehr_mlp", hidden=HIDDEN)).items()
    }
    linear = sorted({k.split(".")[0] for k in weights}, key=int)
    opening = MAX_ABS_WEIGHT / max(1.0, abs(threshold))  # keeps the bias within the bound
    weights[f"{linear[0]}.weight"][0, feature] = opening
    weights[f"{linear[0]}.bias"][0] = -opening * threshold
    for name in linear[1:]:
        weights[f"{name}.weight"][:, 0] = MAX_ABS_WEIGHT
    return weights


def test_poisoned_weights_get_the_same_reply_and_charge_with_or_without_the_target(
    hospital, tmp_path: Path
) -> None:
    from datasites.contract.encoding import encode_ehr
    from datasites.runtime import execute
    from datasites.server.assets import ehr_training_view
    from synthetic.ehr import generate_ehr

    table = ehr_training_view(generate_ehr(1_200, seed=5, identifiers=False))
    features, _ = encode_ehr(table)
    feature = int(np.argmax([np.sort(c)[-1] - np.sort(c)[-2] for c in features.T]))
    top, second = np.sort(features[:, feature])[-2:][::-1]
    conditions = {"target": (top + second) / 2, "nobody": top + 1.0}  # 1 patient, 0 patients
    replies: dict[str, list[dict]] = {"target": [], "nobody": []}

    for i in range(6):
        for case, threshold in conditions.items():
            plan = ATTACK.plan(f"ehr-poison-{case}-{i}", "scientist@research.org")
            request = {"round": 1, "weights": condition_weights(feature, threshold)}
            replies[case].append(execute(plan, train=table, test=table, request=request))

    for case, outs in replies.items():
        for out in outs:
            assert "error" not in out, (case, out)
            assert sorted(out) == sorted(replies["nobody"][0])
            assert all(np.isfinite(w).all() for w in out["train"]["weights"].values())
            assert np.isfinite(out["evaluation"]["loss_sum"])
    charges = {
        case: {round(o["epsilon_study"], 12) for o in outs} for case, outs in replies.items()
    }
    assert charges["target"] == charges["nobody"] and len(charges["nobody"]) == 1


# -- the dataset's size leaves only as its DP count -------------------------------------------


def test_every_figure_that_depends_on_n_uses_the_released_count(hospital) -> None:
    import sqlite3

    from datasites.contract.encoding import encode_ehr
    from datasites.runtime import execute
    from datasites.server.assets import ehr_training_view
    from scientist.study import initial_weights
    from synthetic.ehr import generate_ehr

    table = ehr_training_view(generate_ehr(1_000, seed=8, identifiers=False))
    exact = len(encode_ehr(table)[1])
    released = exact + 137  # as if the Gaussian count had drawn +137
    with sqlite3.connect(hospital.root / "ledger.sqlite") as conn:
        conn.execute("INSERT INTO sizes VALUES ('ehr', ?, 50.0, 'now')", (released,))
    config = StudyConfig(
        aggregation="plain",
        task="ehr",
        model="ehr_logistic",
        rounds=2,
        local_epochs=1,
        batch_size=64,
        dp=DPConfig(epsilon=1.0),
    )

    out = execute(
        config.plan("ehr-size-0001", "scientist@research.org"),
        train=table,
        test=table,
        request={"round": 1, "weights": initial_weights(config)},
    )

    record = hospital.ledger.study("ehr-size-0001")
    assert "error" not in out, out
    assert out["train"]["n"] == released and record.n == released
    assert record.sample_rate == pytest.approx(64 / released)
    assert record.steps_per_round == -(-released // 64)
    assert exact not in (out["train"]["n"], record.n)
    assert out["train"]["steps"] == -(-released // 64)
    # Nowhere else either: every number of the reply but the noised counts (a cell of ~n
    # patients may equal n by chance; they are DP themselves).
    counts = out["evaluation"].pop("counts")
    scalars = list(_scalars(out))
    assert len(scalars) > 250 and counts.sum() > 0  # the walk reached the weights too
    assert float(exact) not in scalars


def _scalars(reply: object) -> Iterator[float]:
    """Every number in a runtime reply, weights and counts included, element by element."""
    if isinstance(reply, dict):
        for value in reply.values():
            yield from _scalars(value)
    elif isinstance(reply, list | tuple):
        for value in reply:
            yield from _scalars(value)
    elif isinstance(reply, np.ndarray):
        yield from (float(x) for x in reply.ravel())
    elif isinstance(reply, int | float) and not isinstance(reply, bool):
        yield float(reply)


def test_the_size_is_released_and_charged_once_per_dataset(hospital) -> None:
    from datasites.privacy.ledger import size_event

    first = hospital.ledger.public_size("ehr", 5_000)
    again = hospital.ledger.public_size("ehr", 5_001)  # another count later: the same figure

    kinds = [kind for _, kind, _, _ in hospital.ledger.events(dataset="ehr")]
    assert first == again and kinds == ["size"]
    assert hospital.ledger.spent("ehr") == pytest.approx(
        epsilon([size_event()], hospital.ledger.delta)
    )
    assert hospital.ledger.spent("pathmnist") == 0.0
    size_cost = epsilon([size_event()], hospital.ledger.delta)
    assert hospital.ledger.part_spent("ehr") == {"train": size_cost, "test": 0.0}
