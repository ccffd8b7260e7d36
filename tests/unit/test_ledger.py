"""The privacy ledger on real SQLite files: composition, refusals, restarts, concurrency."""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from datasites.privacy.accounting import epsilon
from datasites.privacy.ledger import (
    BudgetExceeded,
    Ledger,
    LedgerError,
    RoundRefused,
    StudyConflict,
    StudyRecord,
)
from tests.privacy_reference import agrees_with_pld, opacus_epsilon

DELTA = 1e-5


def study(study_id: str, **changes: object) -> StudyRecord:
    """A registered-looking study; its noise is fixed (calibration is tested elsewhere)."""
    base = StudyRecord(
        study_id=study_id,
        scientist="alice",
        dataset="ehr",
        rounds=3,
        local_epochs=1,
        batch_size=50,
        lr=0.05,
        epsilon=1.0,
        delta=DELTA,
        max_grad_norm=1.0,
        n=2500,
        sample_rate=0.02,
        noise_multiplier=1.5,
        eval_noise_multiplier=30.0,
        steps_per_round=20,
        evaluations=4,
    )
    return replace(base, **changes)


def run_all(record: StudyRecord, ledger: Ledger) -> None:
    budget = record.budget()
    for r in range(1, record.rounds + 1):
        ledger.record(record.study_id, "train", r, budget.train, b"weights")
    for r in range(record.evaluations):
        ledger.record(record.study_id, "eval", r, budget.evaluation, b"counts")


def test_dataset_epsilon_is_the_pld_composition_of_all_studies_part_by_part(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    alice = ledger.register_study(study("s-alice"))
    bob = ledger.register_study(
        study("s-bob", scientist="bob", noise_multiplier=2.0, sample_rate=0.05, rounds=2)
    )
    images = ledger.register_study(study("s-img", dataset="images", rounds=1, evaluations=1))

    ledger.record("s-alice", "train", 1, alice.budget().train, b"a1")
    ledger.record("s-bob", "eval", 0, bob.budget().evaluation, b"b0")
    ledger.record("s-bob", "train", 1, bob.budget().train, b"b1")
    total = ledger.record("s-alice", "train", 2, alice.budget().train, b"a2")
    ledger.record("s-img", "train", 1, images.budget().train, b"i1")

    # Training rounds read the training part, evaluations the test part: in parallel.
    train = [alice.budget().train, bob.budget().train, alice.budget().train]
    test = [bob.budget().evaluation]
    parts = ledger.part_spent("ehr")
    assert agrees_with_pld(parts["train"], train) and agrees_with_pld(parts["test"], test)
    assert ledger.spent("ehr") == total == max(parts.values())
    assert agrees_with_pld(ledger.spent("images"), [images.budget().train])
    assert ledger.study_spent("s-bob") == max(
        epsilon([bob.budget().train], DELTA), epsilon(test, DELTA)
    )
    rdp = max(opacus_epsilon(train), opacus_epsilon(test))
    assert ledger.spent_rdp("ehr") == rdp > total  # the cross-check
    assert ledger.spent("ehr") < ledger.study_spent("s-alice") + ledger.study_spent("s-bob")
    assert [e[:3] for e in ledger.events("ehr")] == [
        ("s-alice", "train", 1),
        ("s-bob", "eval", 0),
        ("s-bob", "train", 1),
        ("s-alice", "train", 2),
    ]
    assert [e[3] for e in ledger.events(study_id="s-img")] == [images.budget().train]
    assert ledger.spent("nothing-here") == 0.0
    assert [s.study_id for s in ledger.studies("ehr")] == ["s-alice", "s-bob"]


def test_cap_refuses_a_round_of_a_registered_study(tmp_path: Path) -> None:
    first, second = study("s-1"), study("s-2", scientist="bob")
    alone = epsilon(first.budget().planned_events(), DELTA)
    ledger = Ledger(tmp_path / "ledger.sqlite", cap=1.2 * alone)
    ledger.register_study(first)
    ledger.register_study(second)  # fits: nothing is spent yet
    run_all(first, ledger)

    with pytest.raises(BudgetExceeded):  # at some round of the second study
        for r in range(1, second.rounds + 1):
            ledger.check_round("s-2", "train", r)
            ledger.record("s-2", "train", r, second.budget().train, b"w")
    refused = len(ledger.events(study_id="s-2")) + 1

    spent = ledger.spent("ehr")
    assert spent <= ledger.cap("ehr")
    with pytest.raises(BudgetExceeded):
        ledger.check_round("s-2", "train", refused)
    assert ledger.result("s-2", "train", refused) is None
    assert ledger.spent("ehr") == spent


def test_registration_refuses_a_plan_over_the_cap(tmp_path: Path) -> None:
    record = study("s-big")
    planned = epsilon(record.budget().planned_events(), DELTA)
    ledger = Ledger(tmp_path / "ledger.sqlite", cap=0.9 * planned)

    with pytest.raises(BudgetExceeded, match="s-big"):
        ledger.register_study(record)

    assert ledger.study("s-big") is None
    assert ledger.studies() == []


def test_registration_counts_what_others_spent(tmp_path: Path) -> None:
    record = study("s-1")
    planned = epsilon(record.budget().planned_events(), DELTA)
    ledger = Ledger(tmp_path / "ledger.sqlite", caps={"ehr": 1.1 * planned})
    ledger.register_study(record)
    run_all(record, ledger)

    with pytest.raises(BudgetExceeded):
        ledger.register_study(study("s-2", scientist="bob"))
    ledger.register_study(study("s-3", dataset="images"))  # another dataset, its own cap

    assert ledger.cap("ehr") == 1.1 * planned and ledger.cap("images") == 10.0


def test_rounds_outside_the_approval_are_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record = ledger.register_study(study("s-1", rounds=2, evaluations=2))
    train, evaluation = record.budget().train, record.budget().evaluation

    for kind, r in [("train", 0), ("train", 3), ("eval", -1), ("eval", 3)]:
        with pytest.raises(RoundRefused, match=f" {r} is outside the approved rounds"):
            ledger.check_round("s-1", kind, r)
        with pytest.raises(RoundRefused):
            ledger.record("s-1", kind, r, train if kind == "train" else evaluation, b"x")
    ledger.record("s-1", "eval", 0, evaluation, b"e0")
    ledger.record("s-1", "eval", 2, evaluation, b"e2")
    with pytest.raises(RoundRefused, match="2 approved evaluations are spent"):
        ledger.check_round("s-1", "eval", 1)
    with pytest.raises(RoundRefused, match="2 approved evaluations are spent"):
        ledger.record("s-1", "eval", 1, evaluation, b"e1")
    with pytest.raises(LedgerError, match="study s-unknown is not registered"):
        ledger.record("s-unknown", "train", 1, train, b"x")

    assert len(ledger.events(study_id="s-1")) == 2
    ledger.check_round("s-1", "eval", 2)  # already recorded: passes, charges nothing


def test_a_repeated_round_records_and_spends_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record = ledger.register_study(study("s-1"))
    first = ledger.record("s-1", "train", 1, record.budget().train, b"first")

    again = ledger.record("s-1", "train", 1, record.budget().train, b"second")

    assert again == first == ledger.spent("ehr")
    assert ledger.result("s-1", "train", 1) == b"first"
    assert len(ledger.events()) == 1


def test_same_study_id_with_other_parameters_conflicts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record = ledger.register_study(study("s-1"))

    assert ledger.register_study(study("s-1")) == record  # identical: idempotent
    with pytest.raises(StudyConflict, match="different lr, noise_multiplier"):
        ledger.register_study(study("s-1", lr=0.1, noise_multiplier=1.6))
    assert ledger.study("s-1") == record


def test_a_study_at_another_delta_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", delta=1e-6)

    with pytest.raises(LedgerError, match="this hospital accounts at delta 1e-06"):
        ledger.register_study(study("s-1"))


def test_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "hospital" / "ledger.sqlite"
    before = Ledger(path)
    record = before.register_study(study("s-1"))
    before.record("s-1", "train", 1, record.budget().train, b"w1")
    spent = before.spent("ehr")
    del before

    after = Ledger(path)

    assert after.study("s-1") == record
    assert after.spent("ehr") == spent
    assert after.result("s-1", "train", 1) == b"w1"
    assert after.record("s-1", "train", 1, record.budget().train, b"again") == spent
    assert after.record("s-1", "train", 2, record.budget().train, b"w2") > spent
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_schema_1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    """Ledgers written before plan digests keep their studies and spending."""
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    old = Ledger(path)
    record = old.register_study(study("s-old"))
    old.record("s-old", "train", 1, record.budget().train, b"w1")
    spent = old.spent("ehr")
    with sqlite3.connect(path) as conn:  # undo the migration: the schema-1 table
        conn.execute("ALTER TABLE studies DROP COLUMN plan_sha256")

    reopened = Ledger(path)

    assert reopened.study("s-old") == record and reopened.spent("ehr") == spent
    assert reopened.register_study(study("s-new", plan_sha256="ab" * 32)).plan_sha256 == "ab" * 32


def test_the_plan_digest_is_part_of_the_study(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.register_study(study("s-1", plan_sha256="a" * 64))
    with pytest.raises(StudyConflict, match="different plan;"):
        ledger.register_study(study("s-1", plan_sha256="b" * 64))


def test_an_rdp_ledger_is_migrated_with_both_figures_recorded(tmp_path: Path) -> None:
    """A schema-2 ledger (all events summed by RDP) recomposes the same events by PLD, part
    by part in parallel, and says so."""
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    old = Ledger(path)
    record = old.register_study(study("s-old"))
    old.record("s-old", "train", 1, record.budget().train, b"w1")
    old.record("s-old", "eval", 0, record.budget().evaluation, b"c0")
    with sqlite3.connect(path) as conn:  # undo the migration: a schema-2 ledger
        conn.execute("DROP TABLE accountants")
        conn.execute("PRAGMA user_version = 2")
    train, test = [record.budget().train], [record.budget().evaluation]

    reopened = Ledger(path)

    ((accountant, since, note),) = reopened.accountants()
    assert accountant == "pld/parts" and since
    assert note == (
        f"from rdp: ehr {opacus_epsilon(train + test):.4f} -> {reopened.spent('ehr'):.4f}"
    )
    assert agrees_with_pld(reopened.spent("ehr"), train)  # the training part dominates
    assert reopened.spent("ehr") < reopened.spent_rdp("ehr") == opacus_epsilon(train)
    assert reopened.study("s-old") == record  # its noise is kept as approved
    assert Ledger(path).accountants() == reopened.accountants()  # migrated once


def test_a_ledger_summed_by_pld_is_migrated_to_parts(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    old = Ledger(path)
    record = old.register_study(study("s-old"))
    old.record("s-old", "eval", 0, record.budget().evaluation, b"c0")
    with sqlite3.connect(path) as conn:  # as this session's first PLD ledgers were kept
        conn.execute("UPDATE accountants SET accountant = 'pld'")

    reopened = Ledger(path)

    assert [a for a, _, _ in reopened.accountants()] == ["pld", "pld/parts"]
    summed = epsilon([record.budget().evaluation], DELTA)
    assert reopened.accountants()[-1][2] == f"from pld: ehr {summed:.4f} -> {summed:.4f}"


def test_a_new_ledger_records_its_accountant(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")

    assert [(a, note) for a, _, note in ledger.accountants()] == [("pld/parts", "new ledger")]


def _race(workers: int, job) -> list:
    barrier = threading.Barrier(workers)
    results: list = [None] * workers
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = job(i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


def test_threads_charge_a_round_once_and_land_distinct_rounds(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record = ledger.register_study(study("s-1", rounds=8, evaluations=9))
    train, evaluation = record.budget().train, record.budget().evaluation

    same = _race(8, lambda i: ledger.record("s-1", "train", 1, train, f"t{i}".encode()))
    _race(8, lambda i: ledger.record("s-1", "eval", i, evaluation, f"e{i}".encode()))

    assert len(set(same)) == 1
    assert ledger.result("s-1", "train", 1) in {f"t{i}".encode() for i in range(8)}
    assert sorted(e[:3] for e in ledger.events()) == sorted(
        [("s-1", "train", 1)] + [("s-1", "eval", r) for r in range(8)]
    )
    assert ledger.spent("ehr") == max(epsilon([train], DELTA), epsilon([evaluation] * 8, DELTA))


def _record_in_process(path: str, rounds: list[int], tag: str, barrier) -> None:
    ledger = Ledger(Path(path))  # every process opens the file itself, as datasites do
    train = ledger.study("s-1").budget().train
    barrier.wait()
    for r in rounds:
        ledger.record("s-1", "train", r, train, tag.encode())


def test_processes_charge_a_round_once_and_land_distinct_rounds(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    record = ledger.register_study(study("s-1", rounds=5))
    # Forked: two more interpreters, each opening the file itself as datasites do, without
    # each importing the accountant again (spawn spent ~6 s of CPU on that). No connection
    # is open across the fork: the ledger connects per transaction.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    jobs = [
        context.Process(target=_record_in_process, args=(str(path), [1, 2, 4], "p0", barrier)),
        context.Process(target=_record_in_process, args=(str(path), [1, 3, 5], "p1", barrier)),
    ]

    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)

    assert [job.exitcode for job in jobs] == [0, 0]
    assert sorted(e[2] for e in ledger.events(study_id="s-1")) == [1, 2, 3, 4, 5]
    assert ledger.result("s-1", "train", 1) in {b"p0", b"p1"}
    assert ledger.spent("ehr") == epsilon([record.budget().train] * 5, DELTA)


PRIVATE = {
    "n": 24771,
    "batch_size": 2113,
    "lr": 0.01234,
    "max_grad_norm": 1.3791,
    "noise_multiplier": 2.3456,
    "eval_noise_multiplier": 23.4567,
    "sample_rate": 2113 / 24771,
}


def test_error_messages_carry_no_private_values(tmp_path: Path) -> None:
    record = study("s-1", evaluations=2, **PRIVATE)
    planned = epsilon(record.budget().planned_events(), DELTA)
    ledger = Ledger(tmp_path / "ledger.sqlite", cap=1.3 * planned)
    ledger.register_study(record)
    ledger.register_study(replace(record, study_id="s-2"))
    messages = []

    def refused(call, *args) -> None:
        with pytest.raises(LedgerError) as error:
            call(*args)
        messages.append(str(error.value))

    refused(ledger.register_study, replace(record, lr=0.5))
    refused(ledger.check_round, "s-1", "train", 4)
    refused(ledger.check_round, "s-1", "eval", 7)
    refused(ledger.register_study, replace(record, study_id="s-3", rounds=30))
    run_all(record, ledger)
    refused(ledger.check_round, "s-1", "eval", 3)  # evaluations used up
    with pytest.raises(BudgetExceeded) as error:
        for r in range(1, 4):
            ledger.record("s-2", "train", r, record.budget().train, b"w")
    messages.append(str(error.value))
    refused(ledger.record, "s-9", "train", 1, record.budget().train, b"w")

    for message in messages:
        assert message.endswith(".") and "\n" not in message
        for value in PRIVATE.values():
            assert str(value) not in message, message
            assert f"{value:g}" not in message, message
