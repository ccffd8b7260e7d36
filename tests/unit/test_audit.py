"""The audit log on real files: chaining, every kind of tampering, processes, digests."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datasites.site.audit import (
    AUDIT_FILE,
    GENESIS,
    RESERVED,
    AuditLog,
    Event,
    Verification,
    format_entry,
    weights_digest,
)

ENTRIES = 5


def reference_hash(entry: dict[str, Any]) -> str:
    """The documented hash, computed here without the module's helpers."""
    content = {key: value for key, value in entry.items() if key != "hash"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def filled(tmp_path: Path, count: int = ENTRIES) -> AuditLog:
    log = AuditLog.open(tmp_path / "hospital-a")
    for r in range(count):
        log.append(Event.ROUND_EXECUTED, study="s-1", round=r, n=2500, operator="ops")
    return log


def read_lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def write_lines(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def one_sentence(message: str) -> None:
    assert message.endswith(".") and ". " not in message and "\n" not in message, message


# -- writing ---------------------------------------------------------------------------


def test_append_returns_the_entry_read_back_and_chains_it(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "new" / "hospital-a")

    written = [
        log.append("approved", study="s-1", operator="ops", epsilon=1.5),
        log.append(Event.ROUND_EXECUTED, study="s-1", round=1, n=2500),
        log.append("denied", note="ünïcode ✓"),
    ]

    assert log.path == tmp_path / "new" / "hospital-a" / AUDIT_FILE
    assert log.entries() == written
    assert [e["seq"] for e in written] == [0, 1, 2]
    assert [e["prev"] for e in written] == [GENESIS, written[0]["hash"], written[1]["hash"]]
    assert [e["hash"] for e in written] == [reference_hash(e) for e in written]
    assert written[1] == {
        "seq": 1,
        "time": written[1]["time"],
        "event": Event.ROUND_EXECUTED,
        "study": "s-1",
        "round": 1,
        "n": 2500,
        "prev": written[0]["hash"],
        "hash": written[1]["hash"],
    }
    time = datetime.fromisoformat(written[0]["time"])
    assert time.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - time) < timedelta(hours=1)
    assert json.loads(log.head_path.read_text()) == {"seq": 2, "hash": written[2]["hash"]}


def test_log_and_head_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask would leave a plain open() 0644
    try:
        log = filled(tmp_path, 2)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.head_path.stat().st_mode) == 0o600


def test_numpy_values_are_stored_as_plain_json(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)

    entry = log.append(
        "round_executed",
        n=np.int64(2500),
        epsilon=np.float32(0.5),
        counts=np.arange(3),
        nested={"sd": np.float64(1.25), "ok": np.bool_(True)},
        pair=(1, "a"),
    )

    assert log.entries() == [entry]
    assert type(entry["n"]) is int and type(entry["epsilon"]) is float
    assert entry["counts"] == [0, 1, 2] and entry["nested"] == {"sd": 1.25, "ok": True}
    assert entry["pair"] == [1, "a"]
    assert log.verify().ok


@pytest.mark.parametrize(
    "value",
    [object(), b"bytes", float("nan"), np.array([1.0, np.inf]), {1: "int key"}, [Path("x")]],
    ids=["object", "bytes", "nan", "inf-in-array", "int-key", "nested-path"],
)
def test_values_json_cannot_store_are_refused_and_nothing_is_written(
    tmp_path: Path, value: Any
) -> None:
    log = AuditLog.open(tmp_path)

    with pytest.raises(ValueError, match="field value") as error:
        log.append("approved", value=value)

    one_sentence(str(error.value))
    assert log.entries() == [] and not log.path.exists()


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_field_names_are_refused(tmp_path: Path, name: str) -> None:
    log = AuditLog.open(tmp_path)

    with pytest.raises(ValueError, match=f"field {name} is reserved") as error:
        log.append("approved", **{name: 1})

    one_sentence(str(error.value))
    assert log.entries() == []


def test_several_reserved_names_and_an_empty_event_are_refused(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)

    with pytest.raises(ValueError, match="fields seq, hash are reserved") as several:
        log.append("approved", hash="x", seq=1)
    with pytest.raises(ValueError, match="unknown audit event ''") as empty:
        log.append("")
    with pytest.raises(ValueError, match="unknown audit event 'custom_event'"):
        log.append("custom_event", note="a kind no reader looks for")

    one_sentence(str(several.value))
    one_sentence(str(empty.value))
    assert log.entries() == []


# -- reading ---------------------------------------------------------------------------


def test_missing_and_empty_logs_verify_and_read_as_empty(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / AUDIT_FILE)

    missing = log.verify()
    log.path.touch()
    empty = log.verify()

    assert missing == Verification(True, 0, None, "", GENESIS)
    assert empty == Verification(True, 0, None, "", GENESIS)
    assert log.entries() == []


def test_intact_log_verifies_and_reports_its_last_hash(tmp_path: Path) -> None:
    log = filled(tmp_path)

    result = log.verify()

    assert result == Verification(True, ENTRIES, None, "", log.entries()[-1]["hash"])


def test_format_entry_shows_fields_and_shortens_the_weights_digest(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)
    digest = weights_digest({"w": np.zeros(3)})
    entry = log.append(
        Event.ROUND_EXECUTED,
        study="s-1",
        round=2,
        weights_sha256=digest,
        reason="two words",
        override=False,
    )

    line = format_entry(entry)

    assert line == (
        f"{entry['time']}  #0  round_executed  study=s-1 round=2 "
        f'weights_sha256={digest[:12]} reason="two words" override=false'
    )
    assert entry["hash"] not in line and "prev" not in line


# -- tampering -------------------------------------------------------------------------


def edit_text(lines: list[str]) -> None:
    lines[2] = lines[2].replace('"round":2', '"round":7')


def edit_and_rehash(index: int) -> Callable[[list[str]], None]:
    def tamper(lines: list[str]) -> None:
        entry = json.loads(lines[index])
        entry["operator"] = "someone-else"
        entry["hash"] = reference_hash(entry)
        lines[index] = json.dumps(entry)

    return tamper


def renumber(lines: list[str]) -> None:
    entry = json.loads(lines[3])
    entry["seq"] = 4
    entry["hash"] = reference_hash(entry)
    lines[3] = json.dumps(entry)


def delete_middle(lines: list[str]) -> None:
    del lines[2]


def swap(lines: list[str]) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def delete_last(lines: list[str]) -> None:
    del lines[-1]


def cut_last(lines: list[str]) -> None:
    lines[-1] = lines[-1][: len(lines[-1]) // 2]


def append_garbage(lines: list[str]) -> None:
    lines.append("this is not json")


def append_foreign_object(lines: list[str]) -> None:
    lines.append('{"seq": 5, "event": "approved"}')


def empty_all(lines: list[str]) -> None:
    lines.clear()


TAMPERING = {
    "text-edit": (edit_text, 2, "entry 2 was edited (its hash does not match its content)"),
    "edit-rehashed-middle": (edit_and_rehash(2), 2, "entry 2 was edited and its hash recomputed"),
    "edit-rehashed-first": (edit_and_rehash(0), 0, "entry 0 was edited and its hash recomputed"),
    "edit-rehashed-last": (edit_and_rehash(4), 4, "entry 4 was edited and its hash recomputed"),
    "seq-skips": (renumber, 3, "entry 3 holds seq 4 instead of 3"),
    "delete-middle": (delete_middle, 2, "entry 2 holds seq 3 instead of 2"),
    "swap": (swap, 1, "entry 1 holds seq 2 instead of 1"),
    "delete-last": (delete_last, 4, "the log ends at entry 3 but entry 4 was written"),
    "cut-last": (cut_last, 4, "entry 4 is not valid JSON (line 5 of the file)"),
    "garbage": (append_garbage, 5, "entry 5 is not valid JSON"),
    "foreign-object": (append_foreign_object, 5, "entry 5 is not an audit entry"),
    "emptied": (empty_all, 0, "the log is empty but entry 4 was written"),
}


@pytest.mark.parametrize(("tamper", "first_bad", "problem"), TAMPERING.values(), ids=TAMPERING)
def test_tampering_is_reported_at_the_first_bad_entry(
    tmp_path: Path, tamper: Callable[[list[str]], None], first_bad: int, problem: str
) -> None:
    log = filled(tmp_path)
    lines = read_lines(log)
    tamper(lines)
    write_lines(log, lines)

    result = log.verify()

    assert (result.ok, result.first_bad) == (False, first_bad), result
    assert result.problem.startswith(problem), result.problem
    one_sentence(result.problem)
    assert result.entries == len(lines) and result.last_hash == ""


def test_deleting_the_head_is_reported(tmp_path: Path) -> None:
    log = filled(tmp_path)
    log.head_path.unlink()

    result = log.verify()

    assert (result.ok, result.first_bad) == (False, ENTRIES)
    assert "audit.head is missing" in result.problem


def test_an_append_after_deleting_the_end_does_not_hide_it(tmp_path: Path) -> None:
    log = filled(tmp_path)
    write_lines(log, read_lines(log)[:3])

    entry = log.append("approved", study="s-2")

    assert entry["seq"] == ENTRIES  # it follows the head, not the shortened file
    result = log.verify()
    assert (result.ok, result.first_bad) == (False, 3)
    assert result.problem.startswith(f"entry 3 holds seq {ENTRIES} instead of 3")


def test_an_append_cut_short_before_its_head_verifies_and_is_followed(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    head_before = log.head_path.read_bytes()
    log.append("approved", study="s-2")
    log.head_path.write_bytes(head_before)  # as if the process died before the head

    between = log.verify()
    entry = log.append("denied", study="s-3")

    assert between.ok, between
    assert entry["seq"] == 4 and entry["prev"] == log.entries()[3]["hash"]
    assert log.verify().ok


def test_an_append_after_a_half_written_line_lands_on_its_own_line(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    with log.path.open("a") as handle:
        handle.write('{"seq":3,"time":"2026-')

    entry = log.append("approved", study="s-2")

    assert log.entries()[-1] == entry and entry["seq"] == 3
    result = log.verify()
    assert (result.ok, result.first_bad) == (False, 3)
    assert result.problem.startswith("entry 3 is not valid JSON")


# -- processes -------------------------------------------------------------------------

WORKERS = 4
APPENDS = 50


def _append_in_process(path: str, worker: int, barrier: Any) -> None:
    log = AuditLog(Path(path))  # every process opens the log itself, as datasites do
    barrier.wait()
    for i in range(APPENDS):
        log.append(Event.ROUND_EXECUTED, worker=worker, i=i)


def test_processes_appending_at_once_leave_one_consecutive_chain(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    jobs = [
        context.Process(target=_append_in_process, args=(str(log.path), w, barrier))
        for w in range(WORKERS)
    ]

    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)

    assert [job.exitcode for job in jobs] == [0] * WORKERS
    result = log.verify()
    assert result.ok and result.entries == WORKERS * APPENDS, result
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(WORKERS * APPENDS))
    for w in range(WORKERS):
        assert [e["i"] for e in entries if e["worker"] == w] == list(range(APPENDS))


# -- weights digest --------------------------------------------------------------------


def test_weights_digest_matches_a_hand_computed_reference() -> None:
    weights = {"b": np.array([1, 2], dtype="<i4"), "a": np.array([[0.5]], dtype="<f8")}
    expected = hashlib.sha256()
    expected.update(b'{"dtype":"<f8","name":"a","nbytes":8,"shape":[1,1]}\n')
    expected.update(struct.pack("<d", 0.5))
    expected.update(b'{"dtype":"<i4","name":"b","nbytes":8,"shape":[2]}\n')
    expected.update(struct.pack("<2i", 1, 2))

    assert weights_digest(weights) == expected.hexdigest()


def test_weights_digest_ignores_order_and_layout_but_not_values_dtypes_or_shapes() -> None:
    w = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=np.float32)
    b = np.array([0.0, -1.0], dtype=np.float32)
    base = weights_digest({"w": w, "b": b})
    one_ulp = w.copy()
    one_ulp[1, 2] = np.nextafter(one_ulp[1, 2], np.float32(np.inf))

    assert weights_digest({"b": b.copy(), "w": w.copy()}) == base
    assert weights_digest({"w": np.asfortranarray(w), "b": b}) == base
    assert weights_digest({"w": w.T.copy().T, "b": b}) == base
    variants = [
        {"w": one_ulp, "b": b},
        {"w": w.astype(np.float64), "b": b},
        {"w": w.reshape(3, 2), "b": b},
        {"w": w.reshape(6), "b": b},
        {"w": w, "bias": b},
        {"w": w},
    ]
    digests = {weights_digest(v) for v in variants}
    assert len(digests) == len(variants) and base not in digests


def test_weights_digest_refuses_objects_and_non_str_names() -> None:
    with pytest.raises(ValueError, match="weight w holds Python objects") as objects:
        weights_digest({"w": np.array([object()])})
    with pytest.raises(ValueError, match="weight names must be str") as names:
        weights_digest({1: np.zeros(1)})

    one_sentence(str(objects.value))
    one_sentence(str(names.value))


def test_grouped_entries_are_written_together_at_the_end_and_chain(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)
    log.append(Event.APPROVED, request="r0")
    with log.grouped():
        log.append(Event.SECURE_PHASE, study="s", round=1, phase="confirm")
        with log.grouped():  # nested: joins the outer block
            log.append(Event.SECURE_PHASE, study="s", round=3, phase="advertise")
        assert len(log.entries()) == 1, "a grouped entry was written before the block ended"
    entries = log.entries()
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert [e.get("phase") for e in entries] == [None, "confirm", "advertise"]
    assert log.verify().ok


def test_grouped_entries_are_written_even_when_the_block_fails(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)
    with pytest.raises(RuntimeError), log.grouped():
        log.append(Event.INCIDENT, incident="ab12")
        raise RuntimeError("boom")
    assert [e["event"] for e in log.entries()] == ["incident"]
    assert log.verify().ok
