"""Poisoned weights through a vetted study, against a live datasite: a yes/no query on
private rows must get the same reply, and the same charge, whatever the answer.

The attack (issue 12): the scientist picks the weights a vetted study sends. Weights that
overflow to a non-finite score for exactly the test patients meeting a condition made the
evaluation fail for them alone ("InternalError", nothing charged) and release normally
otherwise: repeated, that answers any question about private rows for free. Here the
condition is met by exactly one test patient ("target") or by nobody ("nobody"), and every
call (a training round and an evaluation) must answer alike: the same shape, finite
weights, the same charge, and released figures that a two-sample test cannot tell apart.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from datasites.contract.encoding import encode_ehr
from datasites.governance.operator import Operator
from datasites.privacy.ledger import Ledger
from scientist import DPConfig, Federation, StudyConfig
from tests.conftest import Launch, admin_login
from tests.unit.test_total import condition_weights

HOSPITAL = "hospital-a"
STUDIES = 2  # studies each way, each of ROUNDS calls (a training round and an evaluation)
ROUNDS = 4
ATTACK = StudyConfig(
    task="ehr",
    aggregation="plain",
    local_epochs=1,
    average_decay=0.0,
    model="ehr_mlp",
    model_kwargs={"hidden": [8] * 6},
    rounds=ROUNDS,
    eval_every=1,
    batch_size=64,
    lr=0.01,
    dp=DPConfig(epsilon=0.5),
)


def target_condition(launch: Launch) -> tuple[int, dict[str, float]]:
    """A feature and thresholds met by exactly one private test patient, or by nobody;
    read with the operator's login (the attacker would guess; the test must know)."""
    with contextlib.redirect_stdout(io.StringIO()):
        test = admin_login(launch, HOSPITAL).datasets["ehr"].assets["test"].data
    features, _ = encode_ehr(test)
    gaps = [np.sort(column)[-1] - np.sort(column)[-2] for column in features.T]
    feature = int(np.argmax(gaps))
    top, second = np.sort(features[:, feature])[-2:][::-1]
    return feature, {"target": float(top + second) / 2, "nobody": float(top) + 1.0}


def call(function: Any, assets: Any, round_: int, weights: dict[str, np.ndarray]) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        result = function(
            train=assets["train"],
            test=assets["test"],
            weights={"round": round_, "weights": weights},
            blocking=True,
        )
        return result.get() if hasattr(result, "get") else result


def test_a_condition_on_private_rows_gets_the_same_reply_and_charge_either_way(
    federation: Launch, tmp_path: Path
) -> None:
    # The session's datasites: this test reads only its own studies' charges and replies.
    feature, thresholds = target_condition(federation)
    fed = Federation.connect(federation.data_dir, workdir=tmp_path / "studies")
    op = Operator.open(federation.data_dir, HOSPITAL, name="ops")
    ledger = Ledger(federation.data_dir / HOSPITAL / "ledger.sqlite")
    replies: dict[str, list[Any]] = {"target": [], "nobody": []}
    charges: dict[str, list[float]] = {"target": [], "nobody": []}

    client = fed.client(HOSPITAL)
    assets = client.datasets["ehr"].assets  # a round trip: fetched once, like a Study does

    for _ in range(STUDIES):
        for case, threshold in thresholds.items():
            study = fed.submit(ATTACK, hospitals=[HOSPITAL])
            op.approve(study.requests[HOSPITAL])
            function = getattr(client.code, study.function)
            for round_ in range(1, ROUNDS + 1):
                weights = condition_weights(feature, threshold)
                replies[case].append(call(function, assets, round_, weights))
                charges[case].append(round(ledger.study_spent(study.id), 9))

    keys = sorted(replies["nobody"][0])
    for case, outs in replies.items():
        for out in outs:
            assert isinstance(out, dict) and "error" not in out, (case, out)
            assert sorted(out) == keys
            assert sorted(out["evaluation"]) == sorted(replies["nobody"][0]["evaluation"])
            assert all(np.isfinite(w).all() for w in out["train"]["weights"].values())
    assert charges["target"] == charges["nobody"]  # round by round, to nine digits
    # The released figures differ by one patient's bounded contribution under the noise:
    # two-sample tests over the calls find nothing (a correct runtime fails this 1 in 1000).
    sent = {case: condition_weights(feature, threshold) for case, threshold in thresholds.items()}
    figures = {
        "loss sum": lambda out, case: out["evaluation"]["loss_sum"],
        "count total": lambda out, case: float(np.sum(out["evaluation"]["counts"])),
        "update norm": lambda out, case: update_norm(out["train"]["weights"], sent[case]),
    }
    for name, figure in figures.items():
        target = [figure(out, "target") for out in replies["target"]]
        nobody = [figure(out, "nobody") for out in replies["nobody"]]
        assert stats.ks_2samp(target, nobody).pvalue > 1e-3, name


def update_norm(released: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> float:
    """How far a round moved the weights (its noise, mostly), in float64."""
    moves = [np.asarray(released[k], np.float64) - np.asarray(sent[k], np.float64) for k in sent]
    return float(np.linalg.norm(np.concatenate([m.ravel() for m in moves])))
