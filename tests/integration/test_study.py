"""Federated DP studies end to end on the session's real datasites."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from datasites.contract.encoding import N_FEATURES, encode_ehr
from datasites.contract.zoo import build_model, load_weights
from datasites.governance.operator import Operator, OperatorError
from datasites.privacy.ledger import Ledger
from scientist import DPConfig, Federation, StudyConfig
from scientist.bins import MockScorer, bins_for
from scientist.checkpoint import Checkpoint
from scientist.study import Study, StudyError, initial_weights
from tests.conftest import Launch, datasites_cli

SMALL_EHR = dict(
    task="ehr",
    aggregation="plain",
    local_epochs=1,
    average_decay=0.0,
    model="ehr_mlp",
    rounds=3,
    batch_size=128,
    lr=0.5,
    dp=DPConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0),
)


def decide(
    study: Study, operators: dict[str, Operator], deny: dict[str, str] | None = None
) -> None:
    deny = deny or {}
    for hospital, request_id in study.requests.items():
        if hospital in deny:
            operators[hospital].deny(request_id, deny[hospital])
        else:
            operators[hospital].approve(request_id)


def ledger(federation: Launch, hospital: str) -> Ledger:
    return Ledger(federation.data_dir / hospital / "ledger.sqlite")


def call(fed: Federation, study: Study, hospital: str, request: Any) -> dict[str, Any]:
    client = fed.client(hospital)
    assets = client.datasets[study.config.task].assets
    result = getattr(client.code, study.function)(
        train=assets["train"], test=assets["test"], weights=request, blocking=True
    )
    return result.get()


def test_pending_until_the_operators_decide(fed: Federation) -> None:
    study = fed.submit(StudyConfig(**SMALL_EHR))
    table = study.status()
    assert set(table["status"]) == {"pending"}
    assert sorted(table["hospital"]) == sorted(fed.hospitals)


def exact_auroc(model: Any, tables: list[Any]) -> float:
    """AUROC on the union of the hospitals' private test sets (the test is privileged)."""
    features, labels = zip(*(encode_ehr(t) for t in tables), strict=True)
    x, y = np.concatenate(features), np.concatenate(labels)
    with torch.no_grad():
        scores = model(torch.from_numpy(x)).reshape(-1).numpy()
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    positives = y == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_study_learns_and_stays_within_its_budget(
    fed: Federation,
    operators: dict[str, Operator],
    federation: Launch,
    tmp_path: Path,
    admin_clients: dict[str, Any],
) -> None:
    # The calibrated EHR data learns as slowly as the real extract: over these three small
    # hospitals at epsilon 4, ehr_mlp (4 x 2 epochs) gained 0.026-0.055 AUROC over the
    # untrained model, ehr_logistic (4 x 3) 0.034-0.052 (six noise draws each, in-process
    # replica). So the logistic model, and a bar (0.02) that no-learning (gain ~0) cannot pass.
    config = StudyConfig(
        **{
            **SMALL_EHR,
            "model": "ehr_logistic",
            "rounds": 4,
            "local_epochs": 3,
            "eval_every": 2,
        }
    )
    study = fed.submit(config)
    decide(study, operators)
    assert set(study.status()["status"]) == {"approved"}
    completed: list[dict[str, Any]] = []
    result = study.run(progress=False, on_round=completed.append)

    rounds = {h["round"]: h for h in result.rounds}
    assert sorted(rounds) == [0, 1, 2, 3, 4]
    # One callback per call, each with the round it completed, in order.
    assert [e["round"] for e in completed] == [0, 1, 2, 3, 4] and completed == result.rounds
    assert result.history["round"].tolist() == [0, 1, 2, 3, 4]
    # Each evaluation carries 95% intervals from its published noise, around its value.
    evaluated = result.history.dropna(subset=["auroc"])
    assert evaluated["round"].tolist() == [0, 2, 4]
    assert (evaluated["auroc_low"] <= evaluated["auroc"]).all()
    assert (evaluated["auroc"] <= evaluated["auroc_high"]).all()
    assert {r for r, h in rounds.items() if "metrics" in h} == {0, 2, 4}
    assert all(rounds[r]["n"] > 0 and "loss" not in rounds[r] for r in (1, 3))
    assert all(np.isfinite(rounds[r]["loss"]) for r in (0, 2, 4))
    # Each evaluation was binned at quantiles of that model's predictions on the mocks: the
    # first into the default bins, later ones into as many as the last release makes
    # readable (its noised positives against its noise sd).
    scorer = MockScorer(config, fed.mock("ehr", "test"))
    readable = bins_for(rounds[2]["metrics"]["positives"], rounds[2]["metrics"]["count_noise_std"])
    assert rounds[4]["edges"] == scorer.edges(result.weights, readable)
    assert rounds[0]["edges"] == scorer.edges(initial_weights(config)) != rounds[4]["edges"]
    tests = [c.datasets["ehr"].assets["test"].data for c in admin_clients.values()]
    initial = build_model(config.model, **config.model_kwargs)
    load_weights(initial, initial_weights(config))
    assert exact_auroc(result.model, tests) > exact_auroc(initial.eval(), tests) + 0.02
    for name in fed.hospitals:
        spent = ledger(federation, name).study_spent(study.id)
        assert 0.97 * 4.0 <= spent <= 4.0 + 1e-9
    assert max(h["epsilon"] for h in result.rounds if "epsilon" in h) <= 4.0 + 1e-9
    out = result.save(tmp_path / "report")
    assert {p.name for p in out.iterdir()} >= {"history.json", "model.pt", "curves.png"}
    model_out = result.model(torch.zeros(2, N_FEATURES))
    assert model_out.shape == (2, 1) and torch.isfinite(model_out).all()


def test_denied_hospital_is_left_out_with_its_reason(
    fed: Federation, operators: dict[str, Operator]
) -> None:
    study = fed.submit(StudyConfig(**{**SMALL_EHR, "rounds": 1}))
    decide(study, operators, deny={"hospital-c": "no readmission studies this quarter"})
    table = study.status().set_index("hospital")
    assert table.loc["hospital-c", "status"] == "denied"
    assert "no readmission studies this quarter" in table.loc["hospital-c", "reason"]
    result = study.run(progress=False)
    assert sorted(result.hospitals) == ["hospital-a", "hospital-b"]
    assert "no readmission studies" in result.excluded["hospital-c"]
    assert set(result.rounds[1]["hospitals"]) == {"hospital-a", "hospital-b"}


def test_too_few_approvals_is_a_clear_error(
    fed: Federation, operators: dict[str, Operator]
) -> None:
    study = fed.submit(StudyConfig(**{**SMALL_EHR, "rounds": 1, "min_hospitals": 3}))
    decide(study, operators, deny={"hospital-b": "budget reserved"})
    with pytest.raises(StudyError, match="min_hospitals=3.*hospital-b denied: budget reserved"):
        study.run(progress=False)


def test_resume_continues_at_the_next_round(
    fed: Federation, operators: dict[str, Operator], federation: Launch
) -> None:
    study = fed.submit(StudyConfig(**{**SMALL_EHR, "rounds": 3}))
    decide(study, operators)

    def crash(entry: dict[str, Any]) -> None:
        if entry["round"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.run(progress=False, on_round=crash)
    spent_after_one = ledger(federation, "hospital-a").study_spent(study.id)

    resumed = fed.resume(study.id)
    result = resumed.run(progress=False)
    assert [h["round"] for h in result.rounds] == [0, 1, 2, 3]
    events = ledger(federation, "hospital-a").events(study_id=study.id)
    train_rounds = sorted(r for _, kind, r, _ in events if kind == "train")
    assert train_rounds == [1, 2, 3]
    assert ledger(federation, "hospital-a").study_spent(study.id) > spent_after_one


def test_runtime_enforces_rounds_and_repeats_cost_nothing(
    fed: Federation, operators: dict[str, Operator], federation: Launch
) -> None:
    config = StudyConfig(**{**SMALL_EHR, "rounds": 1})
    study = fed.submit(config)
    decide(study, operators)
    weights = initial_weights(config)
    first = call(fed, study, "hospital-a", {"round": 1, "weights": weights})
    spent = ledger(federation, "hospital-a").spent("ehr")

    shifted = {k: v + 1.0 for k, v in weights.items()}
    again = call(fed, study, "hospital-a", {"round": 1, "weights": shifted})
    for key, value in first["train"]["weights"].items():
        np.testing.assert_array_equal(again["train"]["weights"][key], value)
    assert ledger(federation, "hospital-a").spent("ehr") == spent

    beyond = call(fed, study, "hospital-a", {"round": 3, "weights": weights})
    assert "outside this study's approved rounds" in beyond["error"]
    changed = call(
        fed, study, "hospital-a", {"round": 1, "weights": weights, "noise_multiplier": 0.0}
    )
    assert "DP parameters come from the approved plan" in changed["error"]
    assert ledger(federation, "hospital-a").spent("ehr") == spent


def test_a_study_above_the_cap_is_refused_even_when_approved(
    fed: Federation, operators: dict[str, Operator], federation: Launch
) -> None:
    # One hospital: calibrating noise for epsilon 60 takes each datasite seconds.
    study = fed.submit(
        StudyConfig(**{**SMALL_EHR, "rounds": 1, "dp": DPConfig(epsilon=60.0)}),
        hospitals=["hospital-b"],
    )
    with pytest.raises(OperatorError, match="above its cap"):
        operators["hospital-b"].approve(study.requests["hospital-b"])
    # An operator who approves through syft directly skips those checks; the runtime holds.
    for hospital, request_id in study.requests.items():
        operators[hospital].request(request_id).approve()
    before = ledger(federation, "hospital-b").spent("ehr")
    with pytest.raises(StudyError, match="cap"):
        study.run(progress=False)
    assert ledger(federation, "hospital-b").spent("ehr") == before


def test_operator_commands(federation: Launch, fed: Federation) -> None:
    study = fed.submit(StudyConfig(**{**SMALL_EHR, "rounds": 2}))
    request_id = study.requests["hospital-a"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return datasites_cli(federation.data_dir, "hospital-a", *args)

    listing = cli("requests")
    assert listing.returncode == 0, listing.stderr
    line = next(x for x in listing.stdout.splitlines() if x.startswith(request_id[:12]))
    assert "pending" in line and "ehr_mlp on ehr, 2 rounds" in line and "epsilon 4.0" in line
    denied = cli("deny", request_id[:12], "--reason", "rounds too high")
    assert denied.returncode == 0 and "denied" in denied.stdout
    table = study.status().set_index("hospital")
    assert table.loc["hospital-a", "reason"] == "rounds too high"
    missing = cli("approve", "ffffffffffff")
    assert missing.returncode == 2 and "no requests match" in missing.stderr
    budget = cli("budget", "--json")
    assert budget.returncode == 0 and '"cap": 40.0' in budget.stdout


def test_short_rounds_and_the_weight_average_end_to_end(
    fed: Federation, operators: dict[str, Operator], federation: Launch
) -> None:
    """local_steps: every hospital trains (and is charged) exactly that many steps a round;
    average_decay: the final call evaluates, and the result holds, the running average."""
    config = StudyConfig(
        **{
            **SMALL_EHR,
            "model": "ehr_logistic",
            "rounds": 3,
            "eval_every": 3,
            "local_steps": 4,
            "average_decay": 0.5,
        }
    )
    study = fed.submit(config)
    decide(study, operators)
    globals_after: dict[int, dict[str, np.ndarray]] = {}

    def snapshot(entry: dict[str, Any]) -> None:  # after each call: the global model so far
        state = Checkpoint.load(study.folder)
        if state.next_round - 1 <= config.rounds:
            globals_after[state.next_round - 1] = dict(state.weights)

    result = study.run(progress=False, on_round=snapshot)

    assert sorted(globals_after) == [1, 2, 3]
    expected = {
        k: 0.25 * globals_after[1][k] + 0.25 * globals_after[2][k] + 0.5 * globals_after[3][k]
        for k in globals_after[3]
    }
    for key, value in expected.items():
        np.testing.assert_allclose(result.weights[key], value, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(result.weights[k], globals_after[3][k]) for k in expected)
    scorer = MockScorer(config, fed.mock("ehr", "test"))
    final = next(h for h in result.rounds if h["round"] == config.rounds)
    first = next(h for h in result.rounds if h["round"] == 0)["metrics"]
    readable = bins_for(first["positives"], first["count_noise_std"])
    assert final["edges"] == scorer.edges(result.weights, readable)
    for name in fed.hospitals:
        record = ledger(federation, name).study(study.id)
        assert record.steps_per_round == 4 and record.budget().train.steps == 4
