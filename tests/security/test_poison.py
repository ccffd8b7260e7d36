"""Poisoned weights through a vetted study, against a live datasite: a yes/no query on
private rows must get the same reply, and the same charge, whatever the answer.

The attack (issue 12): the scientist picks the weights a vetted study sends. Weights that
overflow to a non-finite score for exactly the test patients meeting a condition made the
evaluation fail for them alone ("InternalError", nothing charged) and release normally
otherwise: repeated, that answers any question about private rows for free. Here the
condition is met by exactly one test patient ("target") or by nobody ("nobody"), and each
study's first call (an evaluation, then a training round) must answer alike.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datasites.encoding import encode_ehr
from datasites.ledger import Ledger
from datasites.operator import Operator
from scientist import DPConfig, Federation, StudyConfig
from tests.conftest import Launch, admin_login, start_launch
from tests.test_total import condition_weights

HOSPITAL = "hospital-a"
CALLS = 3  # studies each way: each is one evaluation and one training round
POLICY = "[budget]\nepsilon_cap = 40.0\n[study]\nmax_epsilon = 5.0\n"
ATTACK = StudyConfig(task="ehr", model="ehr_mlp", model_kwargs={"hidden": [8] * 6}, rounds=1,
                     eval_every=1, batch_size=64, lr=0.01, dp=DPConfig(epsilon=0.5))  # fmt: skip


@pytest.fixture(scope="module")
def poison_site() -> Iterator[Launch]:
    parent = Path(tempfile.mkdtemp(prefix="poison-"))
    data_dir = parent / "datasites"
    (data_dir / HOSPITAL).mkdir(parents=True)
    (data_dir / HOSPITAL / "policy.toml").write_text(POLICY)
    try:
        launch = start_launch("--hospitals", "1", "--base-port", "18681", "--seed", "17",
                              data_dir=data_dir)  # fmt: skip
        yield launch
        launch.stop()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


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


def call(fed: Federation, study: Any, weights: dict[str, np.ndarray]) -> Any:
    client = fed.client(HOSPITAL)
    assets = client.datasets["ehr"].assets
    function = getattr(client.code, study.function)
    with contextlib.redirect_stdout(io.StringIO()):
        result = function(train=assets["train"], test=assets["test"],
                          weights={"round": 1, "weights": weights}, blocking=True)  # fmt: skip
        return result.get() if hasattr(result, "get") else result


def test_a_condition_on_private_rows_gets_the_same_reply_and_charge_either_way(
    poison_site: Launch, tmp_path: Path
) -> None:
    feature, thresholds = target_condition(poison_site)
    fed = Federation.connect(poison_site.data_dir, workdir=tmp_path / "studies")
    op = Operator.open(poison_site.data_dir, HOSPITAL, name="ops")
    ledger = Ledger(poison_site.data_dir / HOSPITAL / "ledger.sqlite")
    replies: dict[str, list[Any]] = {"target": [], "nobody": []}
    charges: dict[str, list[float]] = {"target": [], "nobody": []}

    for _ in range(CALLS):
        for case, threshold in thresholds.items():
            study = fed.submit(ATTACK, hospitals=[HOSPITAL])
            op.approve(study.requests[HOSPITAL])
            replies[case].append(call(fed, study, condition_weights(feature, threshold)))
            charges[case].append(round(ledger.study_spent(study.id), 9))

    keys = sorted(replies["nobody"][0])
    for case, outs in replies.items():
        for out in outs:
            assert isinstance(out, dict) and "error" not in out, (case, out)
            assert sorted(out) == keys
            assert sorted(out["evaluation"]) == sorted(replies["nobody"][0]["evaluation"])
            assert all(np.isfinite(w).all() for w in out["train"]["weights"].values())
    assert set(charges["target"]) == set(charges["nobody"]) and len(set(charges["nobody"])) == 1
