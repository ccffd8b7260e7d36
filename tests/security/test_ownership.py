"""Each study is its account's (issue 27): attacks on study ids and state files, in process.

The runtime is called directly, as a datasite would call it, `acting_as` the account that
submitted the code (`datasites.server.code_owner` sets it from the submission's key). The
attacks found live were:

- a plan naming another scientist ran, and the ledger attributed the study to that name;
- a second account running an approved copy of a study id got the first account's recorded
  release, or, calling first, made the victim's own round return the attacker's release;
- the ledger and the secure store unpickled their rows, so a tampered or restored file ran
  code inside the datasite.

`tests/security/test_study_hijack.py` runs the same attacks through real datasites.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datasites.contract.plan import Plan
from datasites.contract.stored import StoredFormatError, dumps, legacy_loads, loads
from datasites.privacy.ledger import Ledger, LedgerError, StudyOwned, StudyRecord
from datasites.runtime.execute import current_hospital, execute
from datasites.site.audit import AuditLog
from datasites.site.caller import acting_as
from datasites.site.paths import HOSPITAL_ROOT_ENV, LEDGER_FILE
from datasites.site.phase_store import PhaseStore
from datasites.site.policy import Policy
from scientist.config import DPConfig, StudyConfig
from scientist.study import initial_weights
from tests.conftest import IN_PROCESS_ACCOUNT
from tests.secure_harness import build_trio, relay, secure_plan

pytestmark = pytest.mark.in_process

ALICE, BOB = IN_PROCESS_ACCOUNT, "bob@other-lab.org"
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
def table() -> Any:
    from datasites.server.assets import ehr_training_view
    from synthetic.ehr import generate_ehr

    return ehr_training_view(generate_ehr(1_200, seed=27, identifiers=False))


def run(plan: dict, table: Any, round_: int, weights: dict, account: str) -> dict[str, Any]:
    with acting_as(account):
        return execute(plan, train=table, test=table, request={"round": round_, "weights": weights})


def shifted(weights: dict, by: float) -> dict:
    return {k: (v + by).astype(v.dtype) for k, v in weights.items()}


def test_a_plan_naming_another_scientist_is_refused_and_nothing_is_recorded(
    hospital: Path, table: Any
) -> None:
    plan = CONFIG.plan("ehr-own-0001", "dean@research.org")  # Alice's code, the dean's name
    out = run(plan, table, 1, initial_weights(CONFIG), ALICE)

    assert out["refused"] == "RequestError", out
    assert "names dean@research.org" in out["error"] and ALICE in out["error"]
    assert "train" not in out and "evaluation" not in out
    ledger = Ledger(hospital / LEDGER_FILE)
    assert ledger.studies() == [] and ledger.owner("ehr-own-0001") is None
    refused = [e for e in AuditLog.open(hospital).entries() if e["event"] == "refused"]
    assert refused and refused[-1]["study"] == "ehr-own-0001"


def test_a_copied_study_id_never_returns_the_owners_release(hospital: Path, table: Any) -> None:
    weights = initial_weights(CONFIG)
    alice = CONFIG.plan("ehr-own-0002", ALICE)
    first = run(alice, table, 1, weights, ALICE)
    assert "error" not in first, first

    # Bob runs the identical plan (Alice's name in it) and his own copy (his name in it).
    for plan in (alice, {**alice, "scientist": BOB}):
        out = run(plan, table, 1, weights, BOB)
        assert "error" in out and "train" not in out, out
        assert out["refused"] in ("RequestError", "StudyOwned")
    out = run({**alice, "scientist": BOB}, table, 2, weights, BOB)
    assert "belongs to another account" in out["error"] and ALICE not in out["error"]

    # Alice's repeat still returns her own release; the ledger names her alone.
    again = run(alice, table, 1, weights, ALICE)
    for key, value in first["train"]["weights"].items():
        np.testing.assert_array_equal(again["train"]["weights"][key], value)
    ledger = Ledger(hospital / LEDGER_FILE)
    assert [s.scientist for s in ledger.studies()] == [ALICE]
    assert ledger.owner("ehr-own-0002") == ALICE


def test_calling_first_does_not_capture_the_victims_study(hospital: Path, table: Any) -> None:
    weights = initial_weights(CONFIG)
    alice = CONFIG.plan("ehr-own-0003", ALICE)
    mallet = run({**alice, "scientist": BOB}, table, 1, shifted(weights, 3.0), BOB)
    assert "error" not in mallet, mallet  # the id was free: it is Bob's now

    out = run(alice, table, 1, weights, ALICE)
    assert out["refused"] == "StudyOwned" and "train" not in out, out
    assert Ledger(hospital / LEDGER_FILE).owner("ehr-own-0003") == BOB


def test_a_second_account_cannot_open_a_second_secure_session_under_one_id(
    tmp_path: Path, secure_tables: Any
) -> None:
    """Two accounts under one study id would get two sets of round keys from one hospital
    for the same (study, round): the repeat-with-other-inputs attack by other means."""
    federation = build_trio(tmp_path)
    plan = secure_plan(federation["keys"], "secure-own-0001")
    call_all = relay(federation, secure_tables, plan)
    first = call_all({"hospital-a": {"round": 1, "phase": "advertise"}})["hospital-a"]
    assert "advert" in first, first

    with acting_as(BOB):
        copied = relay(federation, secure_tables, {**plan, "scientist": BOB})
        out = copied({"hospital-a": {"round": 1, "phase": "advertise"}})["hospital-a"]
    assert "advert" not in out and "belongs to another account" in out["error"], out


def test_the_secure_store_keys_answers_by_owner(tmp_path: Path) -> None:
    store = PhaseStore(tmp_path / "secure.sqlite")
    store.put_once((ALICE, "s-1"), 1, "advertise", lambda: {"advert": b"alice"})
    assert store.get((BOB, "s-1"), 1, "advertise") is None
    assert store.get((ALICE, "s-1"), 1, "advertise") == {"advert": b"alice"}
    with pytest.raises(ValueError, match="owner"):
        store.get(("", "s-1"), 1, "advertise")


def record(study_id: str, owner: str) -> StudyRecord:
    return StudyRecord(
        study_id=study_id,
        scientist=owner,
        dataset="ehr",
        rounds=3,
        local_epochs=1,
        batch_size=50,
        lr=0.05,
        epsilon=1.0,
        delta=1e-5,
        max_grad_norm=1.0,
        n=2500,
        sample_rate=0.02,
        noise_multiplier=1.5,
        eval_noise_multiplier=30.0,
        steps_per_round=20,
        evaluations=4,
    )


def test_the_ledger_binds_an_id_to_one_account(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / LEDGER_FILE)
    ledger.own("s-1", ALICE)
    ledger.own("s-1", ALICE)  # again: fine
    with pytest.raises(StudyOwned):
        ledger.own("s-1", BOB)
    with pytest.raises(StudyOwned):
        ledger.register_study(record("s-1", BOB))
    ledger.register_study(record("s-1", ALICE))
    with pytest.raises(StudyOwned):
        ledger.study("s-1", owner=BOB)
    with pytest.raises(StudyOwned):
        ledger.claim("s-1", "train", 1, ledger.study("s-1").budget().train, owner=BOB)
    assert ledger.events(study_id="s-1") == []


class _Boom:
    """A pickle that runs code when loaded (writes a file)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.target}",))


def test_a_pickled_ledger_row_is_never_run(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = Ledger(path)
    ledger.register_study(record("s-1", ALICE))
    event = ledger.study("s-1").budget().train
    ledger.record("s-1", "train", 1, event, dumps({"n": 3}), owner=ALICE)
    ledger.record("s-1", "train", 2, event, dumps({"n": 4}), owner=ALICE)
    marker = tmp_path / "ran"
    old = pickle.dumps({"weights": {"w": np.ones(3, np.float32)}, "n": 5})
    with sqlite3.connect(path) as conn:  # a ledger from before: one old row, one tampered
        conn.execute("UPDATE events SET result = ? WHERE round = 1", (old,))
        conn.execute("UPDATE events SET result = ? WHERE round = 2", (pickle.dumps(_Boom(marker)),))
    with pytest.raises(LedgerError, match="not plain data.*trusted copy"):
        Ledger(path)
    assert not marker.exists()

    with sqlite3.connect(path) as conn:  # the operator restores the good row
        conn.execute("UPDATE events SET result = ? WHERE round = 2", (dumps({"n": 4}),))
    migrated = Ledger(path)
    value = loads(migrated.result("s-1", "train", 1, owner=ALICE))
    np.testing.assert_array_equal(value["weights"]["w"], np.ones(3, np.float32))
    assert value["n"] == 5
    with pytest.raises(StudyOwned):
        migrated.result("s-1", "train", 1, owner=BOB)


def test_a_pickled_secure_store_row_is_never_run(tmp_path: Path) -> None:
    path = tmp_path / "secure.sqlite"
    marker = tmp_path / "ran"
    with sqlite3.connect(path) as conn:  # the store's layout before owners
        conn.execute(
            "CREATE TABLE answers (study_id TEXT NOT NULL, round INTEGER NOT NULL, phase TEXT "
            "NOT NULL, value BLOB NOT NULL, PRIMARY KEY (study_id, round, phase))"
        )
        conn.execute(
            "INSERT INTO answers VALUES ('s-1', 1, 'keys', ?)", (pickle.dumps(_Boom(marker)),)
        )
    with pytest.raises(ValueError, match="not plain data"):
        PhaseStore(path)
    assert not marker.exists()

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE answers SET value = ?", (pickle.dumps((b"k", np.arange(3))),))
    store = PhaseStore(path)  # migrated: the old rows belong to no account
    with pytest.raises(ValueError, match="before studies had owners"):
        store.get((ALICE, "s-1"), 1, "keys")
    assert store.get((ALICE, "s-2"), 1, "keys") is None


def test_the_stored_format_round_trips_plain_data_and_refuses_the_rest() -> None:
    value = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        1: (b"\x00\xff", np.int64(7), float("nan")),
        "nested": [{"a": None, "b": True}],
    }
    back = loads(dumps(value))
    np.testing.assert_array_equal(back["w"], value["w"])
    assert back["w"].dtype == np.float32 and back[1][0] == b"\x00\xff" and back[1][1] == 7
    assert np.isnan(back[1][2]) and back["nested"] == [{"a": None, "b": True}]
    with pytest.raises(StoredFormatError):
        dumps({"x": object()})
    with pytest.raises(StoredFormatError):
        dumps(np.array([object()]))
    with pytest.raises(StoredFormatError):
        loads(b'{"$": "data", "kind": "Popen", "fields": {}}')
    with pytest.raises(StoredFormatError):
        legacy_loads(pickle.dumps(Plan))  # a class by reference is not data
