"""A hospital's secure-aggregation state: what it said in each phase of each round, once.

Secure aggregation is safe only if a hospital never answers the same phase of a round two
ways: a second set of round keys, a second set of shares for other adverts, or a second
unmasking answer for other survivor sets would let a relay collect both of a peer's
secrets. So every answer is written here before it leaves, keyed by (study, round, phase),
and a repeated call gets the first answer back (`put_once`). The file holds this round's
private keys and the peers' shares: owner-only (0600) from creation, like the ledger.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_S = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    study_id TEXT NOT NULL, round INTEGER NOT NULL, phase TEXT NOT NULL, value BLOB NOT NULL,
    created REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (study_id, round, phase)
)
"""


class SecureStore:
    """One SQLite file of first answers; safe across threads and datasite processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(answers)")}
            if "created" not in columns:  # a store from before rows were dated: from now
                conn.execute("ALTER TABLE answers ADD COLUMN created REAL NOT NULL DEFAULT 0")
                conn.execute("UPDATE answers SET created = ?", (time.time(),))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def get(self, study_id: str, round_: int, phase: str) -> Any | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT value FROM answers WHERE study_id = ? AND round = ? AND phase = ?",
                (study_id, round_, phase),
            ).fetchone()
        return None if row is None else pickle.loads(row[0])

    def put_once(self, study_id: str, round_: int, phase: str, make: Callable[[], Any]) -> Any:
        """The stored answer of (study, round, phase), or `make()`'s, stored first."""
        return self.first(study_id, round_, phase, make)[0]

    def erase(self, study_id: str, rounds_through: int, phases: tuple[str, ...]) -> None:
        """Delete `phases` of every round up to `rounds_through` (forward secrecy: a round's
        secret keys and held shares go once the round is over). `secure_delete` overwrites
        the freed pages, so the secrets do not linger in the file."""
        marks = ", ".join("?" for _ in phases)
        self._delete(
            f"study_id = ? AND round <= ? AND phase IN ({marks})",
            (study_id, rounds_through, *phases),
        )

    def expire(self, phases: tuple[str, ...], older_than_s: float) -> None:
        """Delete `phases` of any study stored more than `older_than_s` ago: a round whose
        end never came (the relay never asked for its unmasking) keeps no secret forever."""
        marks = ", ".join("?" for _ in phases)
        cutoff = time.time() - older_than_s
        self._delete(f"phase IN ({marks}) AND created < ?", (*phases, cutoff))

    def _delete(self, where: str, args: tuple) -> None:
        with self._connect() as conn:
            conn.execute("PRAGMA secure_delete=ON")
            if conn.execute(f"SELECT 1 FROM answers WHERE {where} LIMIT 1", args).fetchone():
                conn.execute(f"DELETE FROM answers WHERE {where}", args)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def first(
        self, study_id: str, round_: int, phase: str, make: Callable[[], Any]
    ) -> tuple[Any, bool]:
        """(the stored answer of (study, round, phase), False), or (`make()`'s, True), stored
        first.

        `make` runs inside the write transaction, so two concurrent calls cannot both store
        an answer: the second waits and gets the first's.
        """
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT value FROM answers WHERE study_id = ? AND round = ? AND phase = ?",
                    (study_id, round_, phase),
                ).fetchone()
                if row is not None:
                    conn.execute("COMMIT")
                    return pickle.loads(row[0]), False
                value = make()
                conn.execute(
                    "INSERT INTO answers (study_id, round, phase, value, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (study_id, round_, phase, pickle.dumps(value), time.time()),
                )
                conn.execute("COMMIT")
                return value, True
            except BaseException:
                conn.execute("ROLLBACK")
                raise
