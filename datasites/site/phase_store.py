"""A hospital's secure-aggregation state: what it said in each phase of each round, once.

Secure aggregation is safe only if a hospital never answers the same phase of a round two
ways: a second set of round keys, a second set of shares for other adverts, or a second
unmasking answer for other survivor sets would let a relay collect both of a peer's
secrets. So every answer is written here before it leaves, keyed by (owner, study, round,
phase) where the owner is the account the study runs for (issue 27: never an id alone), and
a repeated call gets the first answer back (`put_once`). The file holds this round's
private keys and the peers' shares: owner-only (0600) from creation, like the ledger.

Values are plain data (`datasites.contract.stored`), never pickles: a tampered or restored
file can hold wrong values, not code. A store from before owners and plain data is
migrated when opened: its pickles are read without running anything they name, and its
rows get no owner, so a study that still has such rows is refused (`LegacyState`) rather
than answered a second time under an owner.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datasites.contract.secure_sum import Advert, RoundKeys, UnmaskingReply
from datasites.contract.stored import StoredFormatError, dumps, is_legacy, legacy_loads, loads

BUSY_TIMEOUT_S = 60.0
# The dataclasses a stored answer may hold: rebuilt field by field, nothing else is.
KINDS = (RoundKeys, Advert, UnmaskingReply)
# The owner of rows stored before studies had owners: matches no account.
NO_OWNER = ""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    owner TEXT NOT NULL, study_id TEXT NOT NULL, round INTEGER NOT NULL, phase TEXT NOT NULL,
    value BLOB NOT NULL, created REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, study_id, round, phase)
)
"""
_KEY = "owner = ? AND study_id = ? AND round = ? AND phase = ?"


# Files whose schema is in place, by (device, inode): a replaced file is set up again.
_READY: set[tuple[int, int, str]] = set()
# When each file was last searched for expired secrets (monotonic seconds).
_EXPIRY_CHECKED: dict[tuple, float] = {}
EXPIRY_CHECK_S = 60.0


def _file_marker(path: Path) -> tuple[int, int, str] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, str(path))


class LegacyState(ValueError):
    """The study has state from before owners: it is not answered again."""


class PhaseStore:
    """One SQLite file of first answers; safe across threads and datasite processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # The schema and the migration run once per file and process (every phase call
        # opens the store; a write transaction each time cost more than the phase itself).
        marker = _file_marker(self.path)
        if marker is not None and marker in _READY:
            return
        self._create()
        marker = _file_marker(self.path)
        if marker is not None:
            _READY.add(marker)

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                _migrate(conn)
                conn.execute(_SCHEMA)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's open connection to the file (opened on first use). Kept open:
        closing the last connection to a WAL database checkpoints it, an fsync of the
        database on every phase call (half a light phase's time at the hospital)."""
        conn = _thread_connection(self.path)
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def sync(self) -> None:
        """Make every commit so far durable: call before an answer leaves the hospital, so
        that no crash can forget an answer (and then answer the phase again otherwise).
        In WAL mode a commit lives in the log until a checkpoint, and SQLite syncs the
        database itself when it checkpoints, so flushing the log is enough."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and truncated: already in the database
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, study: tuple[str, str], round_: int, phase: str) -> Any | None:
        """The stored answer of (owner, study id) = `study`, round and phase, or None."""
        with self._connect() as conn:
            _refuse_legacy(conn, study)
            row = conn.execute(
                f"SELECT value FROM answers WHERE {_KEY}", (*study, round_, phase)
            ).fetchone()
        return None if row is None else loads(row[0], KINDS)

    def put_once(
        self, study: tuple[str, str], round_: int, phase: str, make: Callable[[], Any]
    ) -> Any:
        """The stored answer of (study, round, phase), or `make()`'s, stored first."""
        return self.first(study, round_, phase, make)[0]

    def erase(self, study: tuple[str, str], rounds_through: int, phases: tuple[str, ...]) -> None:
        """Delete `phases` of every round up to `rounds_through` (forward secrecy: a round's
        secret keys and held shares go once the round is over). `secure_delete` overwrites
        the freed pages, so the secrets do not linger in the file."""
        marks = ", ".join("?" for _ in phases)
        self._delete(
            f"owner = ? AND study_id = ? AND round <= ? AND phase IN ({marks})",
            (*study, rounds_through, *phases),
        )

    def expire(self, phases: tuple[str, ...], older_than_s: float) -> None:
        """Delete `phases` of any study stored more than `older_than_s` ago: a round whose
        end never came (the relay never asked for its unmasking) keeps no secret forever.
        Looked for at most once every `EXPIRY_CHECK_S` per file and process: a secret
        outlives its time by at most that much."""
        now = time.monotonic()
        key = (str(self.path), phases, older_than_s)
        if now - _EXPIRY_CHECKED.get(key, -EXPIRY_CHECK_S) < EXPIRY_CHECK_S:
            return
        _EXPIRY_CHECKED[key] = now
        marks = ", ".join("?" for _ in phases)
        cutoff = time.time() - older_than_s
        self._delete(f"phase IN ({marks}) AND created < ?", (*phases, cutoff))

    def _delete(self, where: str, args: tuple) -> None:
        with self._connect() as conn:
            if conn.execute(f"SELECT 1 FROM answers WHERE {where} LIMIT 1", args).fetchone():
                conn.execute(f"DELETE FROM answers WHERE {where}", args)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def first(
        self, study: tuple[str, str], round_: int, phase: str, make: Callable[[], Any]
    ) -> tuple[Any, bool]:
        """(the stored answer of (study, round, phase), False), or (`make()`'s, True), stored
        first.

        `make` runs inside the write transaction, so two concurrent calls cannot both store
        an answer: the second waits and gets the first's.
        """
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _refuse_legacy(conn, study)
                row = conn.execute(
                    f"SELECT value FROM answers WHERE {_KEY}", (*study, round_, phase)
                ).fetchone()
                if row is not None:
                    conn.execute("COMMIT")
                    return loads(row[0], KINDS), False
                value = make()
                conn.execute(
                    "INSERT INTO answers (owner, study_id, round, phase, value, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (*study, round_, phase, dumps(value, KINDS), time.time()),
                )
                conn.execute("COMMIT")
                return value, True
            except BaseException:
                conn.execute("ROLLBACK")
                raise


_LOCAL = threading.local()


def _thread_connection(path: Path) -> sqlite3.Connection:
    """The calling thread's connection to `path`, reopened when the file was replaced or
    removed (an operator restoring a copy must not keep writing to the old one). A
    thread's connections close when it ends."""
    opened: dict[str, tuple[Any, sqlite3.Connection]] = _LOCAL.__dict__.setdefault("opened", {})
    marker = _file_marker(path)
    held = opened.get(str(path))
    if held is not None and held[0] == marker and marker is not None:
        return held[1]
    if held is not None:
        held[1].close()
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    # Commits are written, not flushed: a phase makes several, and `sync` flushes them all
    # at once before its answer leaves (one fsync a call instead of one a commit).
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA secure_delete=ON")
    opened[str(path)] = (_file_marker(path), conn)
    return conn


def _refuse_legacy(conn: sqlite3.Connection, study: tuple[str, str]) -> None:
    owner, study_id = study
    if not owner:
        raise ValueError("a secure study's state is keyed by its owner's account.")
    found = conn.execute(
        "SELECT 1 FROM answers WHERE owner = ? AND study_id = ? LIMIT 1", (NO_OWNER, study_id)
    ).fetchone()
    if found:
        raise LegacyState(
            f"study {study_id}'s secure state was stored before studies had owners; "
            "run it again under a new study id."
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a store from before owners (and before rows were dated) to this schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(answers)")}
    if not columns or "owner" in columns:
        return
    created = "created" if "created" in columns else str(time.time())
    rows = conn.execute(f"SELECT study_id, round, phase, value, {created} FROM answers")
    migrated = [(NO_OWNER, s, r, p, _plain(v), c) for s, r, p, v, c in rows.fetchall()]
    conn.execute("DROP TABLE answers")
    conn.execute(_SCHEMA)
    conn.executemany(
        "INSERT INTO answers (owner, study_id, round, phase, value, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        migrated,
    )


def _plain(value: bytes) -> bytes:
    """An old pickled value as plain data; one naming anything else is refused, never run."""
    if not is_legacy(value):
        return bytes(value)
    try:
        return dumps(legacy_loads(value, KINDS), KINDS)
    except StoredFormatError as error:
        raise ValueError(
            f"the secure store holds a value that is not plain data ({error}); move the file "
            "away (its studies cannot continue) or restore a trusted copy."
        ) from None
