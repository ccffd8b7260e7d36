"""A hospital SIGKILLed in the middle of a secure round: the round completes over the
survivors and equals their plain FedAvg, launch.py restarts the hospital, and it rejoins a
later call.

Uses the session federation (its policy's `min_secure_threshold = 2` is for these tests),
as tests/integration/test_network_faults.py does: the tests run one at a time, and each
waits until the launcher has every killed datasite back up before it ends, so the modules
after it find the federation whole (its state is on disk; a restart keeps it)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import scientist.study as study_module
from datasites.contract.health import is_up
from datasites.contract.stored import loads as stored_loads
from datasites.governance.operator import Operator
from datasites.privacy.ledger import Ledger
from datasites.site.audit import AuditLog
from scientist import Federation
from scientist.checkpoint import Checkpoint
from scientist.config import DPConfig, StudyConfig
from scientist.secure_round import SecureRelay
from scientist.study import StudyError
from tests.conftest import Launch

VICTIM = "hospital-c"
CONFIG = StudyConfig(
    task="ehr",
    model="ehr_logistic",
    local_epochs=1,
    average_decay=0.0,
    rounds=4,
    eval_every=4,
    batch_size=128,
    lr=0.5,
    dp=DPConfig(epsilon=4.0),
    threshold=2,
)


def _kill(data_dir: Path, hospital: str) -> None:
    """SIGKILL the hospital's datasite process (no clean shutdown of any kind)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and hospital in cmdline and str(data_dir) in cmdline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return
    raise AssertionError(f"no datasite process of {hospital} found")


def _wait_up(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not is_up(url):
        assert time.monotonic() < deadline, f"{url} did not come back"
        time.sleep(1)


@pytest.fixture
def trio(federation: Launch) -> Any:
    """The session's three hospitals (launch.py restarts a killed datasite); whatever the
    test did, every hospital answers again before the next test starts."""
    yield federation
    for hospital in ("hospital-a", "hospital-b", VICTIM):
        _wait_up(federation.hospital(hospital)["url"])


def _approved(fed: Federation, data_dir: Path) -> Any:
    study = fed.submit(CONFIG)
    for hospital, request_id in study.requests.items():
        Operator.open(data_dir, hospital).approve(request_id)
    return study


def test_a_hospital_killed_mid_round_drops_out_and_rejoins(
    trio: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the relay kills hospital-c after round 2's keys and shares were exchanged
    # (they rode along with round 1's calls), just before round 2's masks
    launch, data_dir = trio, trio.data_dir
    fed = Federation.connect(data_dir, workdir=tmp_path / "studies")
    url = launch.hospital(VICTIM)["url"]

    class KillingRelay(SecureRelay):
        def _mask(self, round_: int, *args: Any) -> dict:
            if round_ == 2:
                _kill(data_dir, VICTIM)
            return super()._mask(round_, *args)

        def _confirm(self, round_: int, *args: Any) -> dict:
            if round_ == 3:  # the restart's time, before the adverts of call 5 go out
                _wait_up(url)
            return super()._confirm(round_, *args)

    monkeypatch.setattr(study_module, "SecureRelay", KillingRelay)
    study = _approved(fed, data_dir)
    after: dict[int, dict[str, np.ndarray]] = {}

    def snapshot(entry: dict) -> None:
        state = Checkpoint.load(study.folder)
        after[state.next_round - 1] = dict(state.weights)

    # Execute
    result = study.run(progress=False, on_round=snapshot)
    # Assert: round 2 is the survivors' plain FedAvg, and the study went on
    rounds = {e["round"]: e for e in result.rounds}
    assert rounds[2]["contributors"] == ["hospital-a", "hospital-b"]
    assert VICTIM in rounds[2]["dropped"]
    releases = [
        stored_loads(Ledger(data_dir / h / "ledger.sqlite").result(study.id, "train", 2))
        for h in ("hospital-a", "hospital-b")
    ]
    total = sum(r["n"] for r in releases)
    for key, start in after[1].items():
        plain = start + sum(r["n"] * (r["weights"][key] - start) for r in releases) / total
        np.testing.assert_allclose(after[2][key], plain, atol=1e-5)
    assert "restarting it" in launch.output
    # The restarted hospital takes part again: in the final call's evaluation.
    assert rounds[3]["contributors"] == rounds[4]["contributors"] == ["hospital-a", "hospital-b"]
    assert VICTIM in rounds[4]["evaluated_by"]


def test_below_the_threshold_nothing_is_unmasked_and_resume_goes_on(
    trio: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: two of three hospitals die before round 1's masks (threshold 2)
    data_dir = trio.data_dir
    fed = Federation.connect(data_dir, workdir=tmp_path / "studies")

    class KillingTwo(SecureRelay):
        def _mask(self, round_: int, *args: Any) -> dict:
            if round_ == 1:
                for hospital in ("hospital-b", VICTIM):
                    _kill(data_dir, hospital)
            return super()._mask(round_, *args)

    monkeypatch.setattr(study_module, "SecureRelay", KillingTwo)
    study = _approved(fed, data_dir)
    # Execute / Assert: one clear sentence, and no hospital answered an unmasking
    with pytest.raises(StudyError, match="fewer than its threshold 2; nothing was unmasked"):
        study.run(progress=False)
    audit = AuditLog.open(data_dir / "hospital-a").entries()
    assert not [e for e in audit if e.get("study") == study.id and e.get("phase") == "unmask"]
    # Once the launcher has them back, resume completes the study from round 1.
    for hospital in ("hospital-b", VICTIM):
        _wait_up(trio.hospital(hospital)["url"])
    monkeypatch.setattr(study_module, "SecureRelay", SecureRelay)
    result = fed.resume(study.id).run(progress=False)
    assert [e["round"] for e in result.rounds] == [0, 1, 2, 3, 4]
    assert result.rounds[1]["contributors"] == ["hospital-a", "hospital-b", VICTIM]
