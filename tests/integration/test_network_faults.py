"""A hospital that stops answering in the middle of a study (its datasite SIGSTOPped: the
port still accepts connections, nothing answers) costs the scientist one read timeout: it is
named, the round completes without it while `min_hospitals` (or the secure threshold) holds,
and after SIGCONT it rejoins a later round. Below `min_hospitals` the study stops with one
sentence and `fed.resume` completes it later, repeating no release.

Uses the session federation; every stopped datasite is continued again, whatever happens.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from datasites.contract.pinned_tls import NetworkPolicy
from datasites.governance.operator import Operator
from datasites.privacy.ledger import Ledger
from scientist import Federation
from scientist.config import DPConfig, StudyConfig
from scientist.study import HospitalDropped, Study, StudyError
from tests.conftest import Launch

VICTIM = "hospital-c"
READ_TIMEOUT = 20.0
NETWORK = NetworkPolicy(connect_timeout=3.0, read_timeout=READ_TIMEOUT, retries=2, backoff=0.2)
REASON = f"did not answer within {READ_TIMEOUT:g} s"
SILENT = f"{VICTIM} {REASON}"


def config(**changes: Any) -> StudyConfig:
    base: dict[str, Any] = {
        "task": "ehr",
        "model": "ehr_logistic",
        "local_epochs": 1,
        "average_decay": 0.0,
        "rounds": 3,
        "eval_every": 3,
        "batch_size": 128,
        "lr": 0.5,
        "dp": DPConfig(epsilon=2.0),
    }
    return StudyConfig(**(base | changes))


class Frozen:
    """SIGSTOP / SIGCONT of one hospital's datasite process; continued on exit."""

    def __init__(self, data_dir: Path, hospital: str) -> None:
        self.pid = _datasite_pid(data_dir, hospital)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def _datasite_pid(data_dir: Path, hospital: str) -> int:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and hospital in cmdline and str(data_dir) in cmdline:
            return proc.pid
    raise AssertionError(f"no datasite process of {hospital} found")


@pytest.fixture
def frozen(federation: Launch) -> Iterator[Frozen]:
    victim = Frozen(federation.data_dir, VICTIM)
    try:
        yield victim
    finally:
        victim.resume()  # never leave a session datasite stopped


@pytest.fixture(scope="module")
def fed(federation: Launch, tmp_path_factory: pytest.TempPathFactory) -> Federation:
    workdir = tmp_path_factory.mktemp("faults") / "studies"
    return Federation.connect(federation.data_dir, workdir=workdir, network=NETWORK)


def approved(fed: Federation, data_dir: Path, study_config: StudyConfig) -> Study:
    study = fed.submit(study_config)
    for hospital, request_id in study.requests.items():
        Operator.open(data_dir, hospital).approve(request_id)
    return study


def _settled(ledger: Ledger, study_id: str, timeout: float = 60) -> None:
    """Wait while the call the scientist gave up on is still being computed at the
    continued hospital (charged, no release yet); uvicorn usually drops such a call."""
    time.sleep(3)
    deadline = time.monotonic() + timeout
    while ledger.result(study_id, "train", 2) == b"" and time.monotonic() < deadline:
        time.sleep(1)


def stop_then_continue(frozen: Frozen) -> Any:
    """on_round: stop the victim after call 1, continue it once call 2 is done."""

    def on_round(entry: dict[str, Any]) -> None:
        if entry["round"] == 0:
            frozen.stop()
        elif entry["round"] == 1:
            frozen.resume()

    return on_round


def test_a_hospital_that_hangs_is_named_dropped_and_rejoins(
    fed: Federation, federation: Launch, frozen: Frozen, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a plain study over three hospitals; hospital-c hangs during call 2
    study = approved(fed, federation.data_dir, config(aggregation="plain", min_hospitals=2))
    # Execute
    with pytest.warns(HospitalDropped, match=f"round 2 of study {study.id}: {SILENT}"):
        result = study.run(progress=True, on_round=stop_then_continue(frozen))
    # Assert: round 2 is the others' alone, named; hospital-c trains round 3 again
    rounds = {e["round"]: e for e in result.rounds}
    assert rounds[2]["dropped"] == {VICTIM: REASON}
    assert rounds[2]["contributors"] == ["hospital-a", "hospital-b"]
    assert set(rounds[2]["hospitals"]) == {"hospital-a", "hospital-b"}
    assert "dropped" not in rounds[1] and "dropped" not in rounds[3]
    assert rounds[3]["contributors"] == ["hospital-a", "hospital-b", VICTIM]
    assert f"[without {VICTIM}]" in capsys.readouterr().err


def test_a_hang_in_a_secure_round_keeps_the_threshold_and_rejoins(
    fed: Federation, federation: Launch, frozen: Frozen
) -> None:
    # Prepare: secure aggregation over three hospitals (threshold 2), four rounds
    study = approved(fed, federation.data_dir, config(rounds=4, eval_every=4, threshold=2))
    # Execute
    with pytest.warns(HospitalDropped, match=f"round 2 of study {study.id}: {SILENT}"):
        result = study.run(progress=False, on_round=stop_then_continue(frozen))
    # Assert: round 2 summed over the two that answered. Round 3 too: its keys rode along
    # in the call hospital-c never answered, and round 4's in the next call, which it
    # missed while stopped; it advertises again in call 3 and is back for call 5, the final
    # evaluation (whose hospitals are `evaluated_by`: round 4's trainers stay on record).
    rounds = {e["round"]: e for e in result.rounds}
    assert rounds[2]["contributors"] == ["hospital-a", "hospital-b"]
    assert rounds[2]["dropped"][VICTIM] == REASON
    assert rounds[3]["contributors"] == rounds[4]["contributors"] == ["hospital-a", "hospital-b"]
    assert VICTIM in rounds[4]["evaluated_by"]


def test_below_min_hospitals_the_study_stops_and_resume_repeats_nothing(
    fed: Federation, federation: Launch, frozen: Frozen
) -> None:
    # Prepare: a plain study that needs all three hospitals
    data_dir = federation.data_dir
    study = approved(fed, data_dir, config(aggregation="plain", rounds=2, min_hospitals=3))
    # Execute: hospital-c hangs during call 2
    with pytest.raises(StudyError, match=f"fewer than min_hospitals=3 \\({SILENT}\\)"):
        study.run(progress=False, on_round=lambda e: frozen.stop() if e["round"] == 0 else None)
    frozen.resume()
    _settled(Ledger(data_dir / VICTIM / "ledger.sqlite"), study.id)
    result = fed.resume(study.id).run(progress=False)
    # Assert: the study completes with everyone, and each release was made exactly once
    assert [e["round"] for e in result.rounds] == [0, 1, 2]
    assert result.rounds[2]["contributors"] == ["hospital-a", "hospital-b", VICTIM]
    for hospital in ("hospital-a", "hospital-b", VICTIM):
        events = Ledger(data_dir / hospital / "ledger.sqlite").events(study_id=study.id)
        assert sorted(r for _, kind, r, _ in events if kind == "train") == [1, 2]


def test_a_hospital_silent_when_the_run_starts_joins_once_it_answers(
    fed: Federation, federation: Launch, frozen: Frozen
) -> None:
    # Prepare: hospital-c approved, then stopped before the run begins
    study = approved(fed, federation.data_dir, config(aggregation="plain", rounds=2))
    frozen.stop()
    started = time.monotonic()
    table = study.status().set_index("hospital")
    asked = time.monotonic() - started
    # Execute: it continues once call 1 is done
    result = study.run(progress=False, on_round=lambda e: frozen.resume())
    # Assert: a quick probe told (no read timeout waited), and it trained round 2
    assert table.loc[VICTIM, "status"] == "unreachable"
    assert asked < READ_TIMEOUT
    assert result.rounds[1]["contributors"] == ["hospital-a", "hospital-b"]
    assert result.rounds[2]["contributors"] == ["hospital-a", "hospital-b", VICTIM]
    assert VICTIM in result.hospitals and VICTIM not in result.excluded
