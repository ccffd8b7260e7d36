"""Secure aggregation on the session's real datasites: the scientist relays and sums masked
vectors over syft, and reads nothing of one hospital (issue 15)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

import scientist.secure_round as secure_round
import scientist.submit as submit
from datasites.contract.plan import Plan
from datasites.contract.secure_sum import Quantizer
from datasites.contract.stored import loads as stored_loads
from datasites.governance.operator import Operator, OperatorError
from datasites.privacy.ledger import Ledger
from scientist.checkpoint import Checkpoint
from scientist.config import DPConfig, StudyConfig
from scientist.federation import Federation
from scientist.study import Study, initial_weights
from tests.conftest import Launch

SECURE_EHR = dict(
    task="ehr",
    model="ehr_logistic",
    local_epochs=1,
    average_decay=0.0,
    rounds=2,
    eval_every=2,
    batch_size=128,
    lr=0.5,
    dp=DPConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0),
)


def approve_all(study: Study, operators: dict[str, Operator]) -> None:
    for hospital, request_id in study.requests.items():
        operators[hospital].approve(request_id)


def recorded(federation: Launch, hospital: str, study: str, round_: int) -> dict[str, Any]:
    """The hospital's own record of its training release (never sent in the clear)."""
    ledger = Ledger(federation.data_dir / hospital / "ledger.sqlite")
    return stored_loads(ledger.result(study, "train", round_))


def capture_masked(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every masked vector exactly as the scientist's relay receives it."""
    seen: list[np.ndarray] = []
    original = secure_round.masked_from_wire

    def recording(value: Any, length: int) -> np.ndarray:
        array = original(value, length)
        seen.append(array.copy())
        return array

    monkeypatch.setattr(secure_round, "masked_from_wire", recording)
    return seen


def test_a_secure_study_sums_to_the_plain_weighted_average(
    fed: Federation,
    operators: dict[str, Operator],
    federation: Launch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    config = StudyConfig(**SECURE_EHR)
    study = fed.submit(config)
    assert sorted(study.partners) == sorted(fed.hospitals)
    approve_all(study, operators)
    masked = capture_masked(monkeypatch)
    after: dict[int, dict[str, np.ndarray]] = {}

    def snapshot(entry: dict[str, Any]) -> None:
        state = Checkpoint.load(study.folder)
        after[state.next_round - 1] = dict(state.weights)

    # Execute
    result = study.run(progress=False, on_round=snapshot)
    # Assert: round 1's global model is the hospitals' weighted average, to the quantization
    start = initial_weights(config)
    releases = [recorded(federation, h, study.id, 1) for h in sorted(fed.hospitals)]
    total = sum(r["n"] for r in releases)
    for key, value in start.items():
        plain = sum(r["n"] * (r["weights"][key] - value.astype(np.float64)) for r in releases)
        expected = value + plain / total
        bound = len(releases) * 0.5 / 2.0**20 / total + 1e-6  # fixed point, then float32
        np.testing.assert_allclose(after[1][key], expected, atol=bound)
    rounds = {e["round"]: e for e in result.rounds}
    assert rounds[1]["contributors"] == sorted(fed.hospitals) and rounds[1]["n"] == total
    assert rounds[2]["metrics"]["auroc"] is not None and "intervals" in rounds[2]["metrics"]
    assert len(masked) == 3 * 3  # three calls (two rounds and the final evaluation)


def test_a_masked_update_says_nothing_of_the_true_one(
    fed: Federation,
    operators: dict[str, Operator],
    federation: Launch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: one PathMNIST round (53,000 parameters a hospital). Pooled over the three
    # hospitals, a correlation of 0.01 is four standard errors (1 / sqrt(158,000)) from zero:
    # one hospital alone (2.3 standard errors) failed by chance once in CI.
    config = StudyConfig(
        task="pathmnist",
        rounds=1,
        local_steps=2,
        batch_size=64,
        lr=0.1,
        momentum=0.0,
        average_decay=0.0,
        eval_every=1,
        dp=DPConfig(epsilon=3.0),
    )
    study = fed.submit(config)
    approve_all(study, operators)
    masked = capture_masked(monkeypatch)
    # Execute
    study.run(progress=False)
    # Assert: each hospital's masked vector of round 1 against its true vector in the ring.
    # The mask phase of call 1 comes first, one vector per hospital in the order of their
    # party ids; a vector starts with the size-weighted update.
    plan = Plan.from_dict(config.plan(study.id, "-", study.partners))
    start = initial_weights(config)
    truths, seens = [], []
    for hospital, party in plan.party_ids().items():
        release = recorded(federation, hospital, study.id, 1)
        update = [
            release["n"] * (release["weights"][k] - start[k].astype(np.float64)) for k in start
        ]
        truth = Quantizer(2.0**20, 2.0**24).encode(np.concatenate([u.ravel() for u in update]))
        truths.append(truth.view(np.int64).astype(float))
        seens.append(masked[party - 1][: truth.size])
    seen = np.concatenate(seens)
    correlation = np.corrcoef(np.concatenate(truths), seen.astype(float))[0, 1]
    assert seen.size > 150_000 and abs(correlation) < 0.01
    top = (seen >> np.uint64(60)).astype(int)  # 16 bins of the ring, uniform if masked
    assert stats.chisquare(np.bincount(top, minlength=16)).pvalue > 1e-4


def test_a_plan_naming_an_invented_partner_key_is_refused(
    fed: Federation,
    operators: dict[str, Operator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a scientist who names a "hospital-c" whose key it made up
    real = submit.partner_keys(fed.pool, fed.hospitals)
    forged = {**real, "hospital-c": "ab" * 32}
    monkeypatch.setattr(submit, "partner_keys", lambda pool, hospitals: forged)
    study = fed.submit(StudyConfig(**SECURE_EHR))
    # Execute / Assert: the operator's approve refuses it, naming the key
    with pytest.raises(OperatorError, match="not its registered key"):
        operators["hospital-a"].approve(study.requests["hospital-a"])
    # Force-approved through syft, the runtime refuses every call all the same.
    operators["hospital-a"].request(study.requests["hospital-a"]).approve()
    client = fed.client("hospital-a")
    assets = client.datasets["ehr"].assets
    reply = getattr(client.code, study.function)(
        train=assets["train"],
        test=assets["test"],
        weights={"round": 1, "phase": "advertise"},
        blocking=True,
    ).get()
    assert reply["refused"] == "PolicyRefusal" and "not its registered key" in reply["error"]


def test_a_secure_study_learns_exactly_as_its_plain_sum_would(
    fed: Federation,
    operators: dict[str, Operator],
    federation: Launch,
    admin_clients: dict[str, Any],
) -> None:
    """A secure study learns, and every round's global model is the plain weighted average
    of the updates the hospitals recorded (within the quantization bound), so its accuracy
    is that of a plain study with the same DP noise draws.

    Comparing with a second, plain study measures DP noise instead: at epsilon 4 on these
    small hospitals one CI run gave exact AUROCs of 0.602 (plain) and 0.551 (secure) for the
    same config, and the local run before it 0.03 apart the other way. Holding the noise
    fixed (the same recorded updates, summed in the clear) leaves only the aggregation."""
    from datasites.contract.zoo import build_model, load_weights
    from tests.integration.test_study import exact_auroc

    config = StudyConfig(**dict(SECURE_EHR, rounds=4, local_epochs=3, eval_every=4))
    study = fed.submit(config)
    approve_all(study, operators)
    after: dict[int, dict[str, np.ndarray]] = {0: initial_weights(config)}

    def snapshot(entry: dict) -> None:
        state = Checkpoint.load(study.folder)
        after[state.next_round - 1] = dict(state.weights)

    result = study.run(progress=False, on_round=snapshot)
    for round_ in range(1, 5):
        releases = [recorded(federation, h, study.id, round_) for h in sorted(study.requests)]
        total = sum(r["n"] for r in releases)
        for key, start in after[round_ - 1].items():
            plain = start + sum(r["n"] * (r["weights"][key] - start) for r in releases) / total
            np.testing.assert_allclose(after[round_][key], plain, atol=1e-5)
    tests = [c.datasets["ehr"].assets["test"].data for c in admin_clients.values()]

    def auroc(weights: dict[str, np.ndarray]) -> float:
        model = build_model(config.model, **config.model_kwargs)
        load_weights(model, weights)
        return exact_auroc(model.eval(), tests)

    reached, untrained = exact_auroc(result.model, tests), auroc(after[0])
    assert abs(reached - auroc(after[4])) < 1e-6
    assert reached > untrained + 0.02, (untrained, reached)
