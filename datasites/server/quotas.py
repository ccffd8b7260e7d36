"""What each account has taken from this datasite: bytes stored and submissions, by time.

The guard (`datasites.server.guard`) checks an account's quota (`policy.toml [quota]`, with
what `scientists quota` set for it) against this book before syft sees a storing or
submitting call, and reserves what the call takes in the same transaction (`reserve`,
`reserve_submission`): ten concurrent calls that each fit alone cannot all pass a check
made before any of them was written (ten 40 MB allocations against 50 MB gave four). A
reservation is released if syft then refuses or fails the call. syft never deletes a stored
object, so the bytes an account stored, in all, are what it holds. The book is a SQLite
file in the hospital's folder (owner-only, like everything there), keyed by email, so a
restart or a key rotation does not reset it. It holds counts and times, never data.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

QUOTA_BOOK_FILE = "quota.sqlite"
HOUR = 3600.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored (account TEXT NOT NULL, bytes INTEGER NOT NULL,
                                   at REAL NOT NULL, what TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (account TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS stored_account ON stored (account);
CREATE INDEX IF NOT EXISTS submissions_account ON submissions (account, at);
"""


@dataclass(frozen=True)
class Usage:
    """One account's use so far: bytes stored in all, submissions in the last hour."""

    stored_bytes: int
    submissions_last_hour: int


class QuotaBook:
    """Bytes stored and submissions per account, in `<hospital>/quota.sqlite`."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / QUOTA_BOOK_FILE
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connection = contextlib.closing(sqlite3.connect(self.path, timeout=10))
        with self._lock, connection as db, db:
            yield db

    def usage(self, account: str, now: float | None = None) -> Usage:
        now = time.time() if now is None else now
        with self._db() as db:
            (stored,) = db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM stored WHERE account = ?", (account,)
            ).fetchone()
            (recent,) = db.execute(
                "SELECT COUNT(*) FROM submissions WHERE account = ? AND at > ?",
                (account, now - HOUR),
            ).fetchone()
        return Usage(int(stored), int(recent))

    def reserve(self, account: str, size: int, limit: int, what: str) -> tuple[int | None, int]:
        """Take `size` bytes for `account` if its total stays within `limit`, in one
        transaction: (the reservation's id, or None if refused; bytes held before)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            (held,) = db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM stored WHERE account = ?", (account,)
            ).fetchone()
            if int(held) + int(size) > limit:
                return None, int(held)
            cursor = db.execute(
                "INSERT INTO stored (account, bytes, at, what) VALUES (?, ?, ?, ?)",
                (account, int(size), time.time(), what),
            )
            return cursor.lastrowid, int(held)

    def release(self, reservation: int) -> None:
        """Give back a reservation of `reserve` (syft did not store the call)."""
        with self._db() as db:
            db.execute("DELETE FROM stored WHERE rowid = ?", (reservation,))

    def reserve_submission(self, account: str, per_hour: int) -> tuple[int | None, int]:
        """Count a submission for `account` if it made fewer than `per_hour` in the last
        hour, in one transaction: (the reservation's id, or None; submissions before)."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            (recent,) = db.execute(
                "SELECT COUNT(*) FROM submissions WHERE account = ? AND at > ?",
                (account, now - HOUR),
            ).fetchone()
            if int(recent) >= per_hour:
                return None, int(recent)
            cursor = db.execute(
                "INSERT INTO submissions (account, at) VALUES (?, ?)", (account, now)
            )
            db.execute("DELETE FROM submissions WHERE at < ?", (now - 2 * HOUR,))
            return cursor.lastrowid, int(recent)

    def release_submission(self, reservation: int) -> None:
        with self._db() as db:
            db.execute("DELETE FROM submissions WHERE rowid = ?", (reservation,))

    def stored(self, account: str, size: int, what: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO stored (account, bytes, at, what) VALUES (?, ?, ?, ?)",
                (account, int(size), time.time(), what),
            )

    def submitted(self, account: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO submissions (account, at) VALUES (?, ?)", (account, time.time())
            )
            db.execute("DELETE FROM submissions WHERE at < ?", (time.time() - 2 * HOUR,))


def usage_of(root: Path, account: str) -> Usage | None:
    """An account's use, read by the operator's commands; None before the book exists."""
    if not (Path(root) / QUOTA_BOOK_FILE).exists():
        return None
    return QuotaBook(root).usage(account)
