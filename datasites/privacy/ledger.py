"""The hospital's privacy ledger: every study it approved and every release it made.

A dataset's epsilon is the composition of all its events, across every study of every
scientist (`accounting.epsilon`, a PLD accountant), never a sum of per-study figures, and
the hospital's cap bounds that composed figure. Train and test are disjoint parts of each
dataset (a patient's part follows from its own id), so the dataset's figure is the larger
of the two parts' compositions (`accounting.parallel_epsilon`); the Renyi figure is kept
alongside as a cross-check. The ledger stores events, never figures, so changing the accountant is a
recorded migration (`accountants` table) that recomposes the same events. The ledger is one
SQLite file in the hospital's folder, so it survives restarts, and every decision to release
is taken inside one `BEGIN IMMEDIATE` transaction that also stores the release: two threads
or two datasite processes asking for the same round charge it once, and concurrent rounds
cannot jointly overshoot the cap.

Messages of `LedgerError` reach the scientist, so they carry ids, round numbers and
epsilons only, never a dataset size or a training hyperparameter's value.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from datasites.contract.stored import StoredFormatError, dumps, legacy_loads
from datasites.privacy.accounting import (
    ACCOUNTANT,
    ACCOUNTANTS,
    TEST_PART,
    TRAIN_PART,
    DpEvent,
    StudyBudget,
    parallel_epsilon,
)
from datasites.privacy.noise import DISCRETE_NOISE_FACTOR, discrete_gaussian

KINDS = ("train", "eval")
BUSY_TIMEOUT_S = 60.0
SCHEMA_VERSION = 4
# An event's result while its release is being computed: charged, nothing released yet.
PENDING = b""
# A dataset's size is released once, as a discrete Gaussian count (sensitivity 1 under add/remove
# of one unit): everything derived from the size (sampling rate, steps, noise calibration,
# FedAvg weights) uses that public figure, never the exact count. At 50 the release costs
# 0.059 of epsilon at delta 1e-5 (PLD; 0.066 by RDP) and is off by about 50 rows, under 3%
# of a hospital.
SIZE_NOISE_MULTIPLIER = 50.0
SIZE_KIND = "size"
# The released size is below the true one by more than `size_upper_bound`'s margin with at
# most this probability (once per dataset).
SIZE_TAIL = 1e-12
# The part of a dataset each kind of event reads: they compose in parallel.
PART_OF = {"train": TRAIN_PART, SIZE_KIND: TRAIN_PART, "eval": TEST_PART}
# How this ledger composes: the accountant, parts in parallel. Recorded in `accountants`.
LEDGER_ACCOUNTING = f"{ACCOUNTANT}/parts"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY, scientist TEXT NOT NULL, dataset TEXT NOT NULL,
    rounds INTEGER NOT NULL, local_epochs INTEGER NOT NULL, batch_size INTEGER NOT NULL,
    lr REAL NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL, max_grad_norm REAL NOT NULL,
    n INTEGER NOT NULL, sample_rate REAL NOT NULL, noise_multiplier REAL NOT NULL,
    eval_noise_multiplier REAL NOT NULL, steps_per_round INTEGER NOT NULL,
    evaluations INTEGER NOT NULL, registered_at TEXT NOT NULL,
    plan_sha256 TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS studies_dataset ON studies (dataset);
CREATE TABLE IF NOT EXISTS sizes (
    dataset TEXT PRIMARY KEY, noisy_n INTEGER NOT NULL, noise_multiplier REAL NOT NULL,
    released_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL REFERENCES studies (study_id),
    kind TEXT NOT NULL CHECK (kind IN ('train', 'eval')), round INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    result BLOB NOT NULL, recorded_at TEXT NOT NULL,
    UNIQUE (study_id, kind, round)
);
CREATE TABLE IF NOT EXISTS owners (
    study_id TEXT PRIMARY KEY, owner TEXT NOT NULL, since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accountants (
    id INTEGER PRIMARY KEY AUTOINCREMENT, accountant TEXT NOT NULL, since TEXT NOT NULL,
    note TEXT NOT NULL
);
"""
_STUDY_COLUMNS = (
    "study_id, scientist, dataset, rounds, local_epochs, batch_size, lr, epsilon, delta, "
    "max_grad_norm, n, sample_rate, noise_multiplier, eval_noise_multiplier, steps_per_round, "
    "evaluations, plan_sha256"
)
_EVENT_QUERY = (
    "SELECT e.study_id, e.kind, e.round, e.noise_multiplier, e.sample_rate, e.steps "
    "FROM events e JOIN studies s USING (study_id)"
)


class LedgerError(Exception):
    """A refusal; the message is safe to show the scientist (ids, rounds, epsilons)."""


class BudgetExceeded(LedgerError):
    """The release would take the dataset's composed epsilon above its cap."""


class RoundRefused(LedgerError):
    """The round is outside the approved rounds, or the approved evaluations are spent."""


class StudyConflict(LedgerError):
    """A study id already registered with different parameters."""


class StudyOwned(LedgerError):
    """A study id registered to another account: ids are keyed by (owner, id)."""


@dataclass(frozen=True)
class StudyRecord:
    """One approved study at this hospital, with the noise the hospital calibrated for it."""

    study_id: str
    scientist: str
    dataset: str
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    epsilon: float
    delta: float
    max_grad_norm: float
    n: int
    sample_rate: float
    noise_multiplier: float
    eval_noise_multiplier: float
    steps_per_round: int
    evaluations: int
    # SHA-256 of the whole approved plan: a reused study id is refused when any plan field
    # differs, including those not stored here (model, label, evaluation schedule).
    plan_sha256: str = ""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "plan_sha256":
                if not isinstance(value, str):
                    raise ValueError(f"plan_sha256 must be a str, found {type(value).__name__}.")
            elif field.type == "str" and not (isinstance(value, str) and value):
                raise ValueError(f"{field.name} must be a non-empty str, found {value!r}.")
            if field.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{field.name} must be an int, found {type(value).__name__}.")
                if value < (0 if field.name == "evaluations" else 1):
                    raise ValueError(f"{field.name} must be positive, found {value}.")
            if field.type == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{field.name} must be a number, found {value!r}.")
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"{field.name} must be positive and finite, found {value!r}.")
                object.__setattr__(self, field.name, float(value))
        if not self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), found {self.delta!r}.")
        self.budget()  # validates the counts and the events

    @property
    def row_bound(self) -> int:
        """The public upper bound on the training rows behind the released `n`."""
        return size_upper_bound(self.n)

    def budget(self) -> StudyBudget:
        return StudyBudget(
            train=DpEvent(self.noise_multiplier, self.sample_rate, self.steps_per_round),
            evaluation=DpEvent(self.eval_noise_multiplier, 1.0, 1),
            rounds=self.rounds,
            evaluations=self.evaluations,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _insert_event(
    conn: sqlite3.Connection, study_id: str, kind: str, round: int, event: DpEvent, result: bytes
) -> None:
    """One charged release: its event, and its recorded result (or PENDING until complete)."""
    conn.execute(
        "INSERT INTO events (study_id, kind, round, noise_multiplier, sample_rate, "
        "steps, result, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            study_id,
            kind,
            round,
            event.noise_multiplier,
            event.sample_rate,
            event.steps,
            result,
            _now(),
        ),
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, found {kind!r}.")


class Ledger:
    """The privacy ledger in one SQLite file; cheap to create, safe to share.

    Every method opens its own connection, so one `Ledger` may be used from many threads,
    and any number of processes may open the same file. `cap` bounds each dataset's
    composed epsilon at `delta`; `caps` sets it per dataset.
    """

    def __init__(
        self,
        path: Path,
        *,
        cap: float = 10.0,
        delta: float = 1e-5,
        caps: Mapping[str, float] | None = None,
    ) -> None:
        self.path = Path(path)
        self.delta = delta
        self._default_cap = cap
        self._caps = dict(caps or {})
        for value in (cap, *self._caps.values()):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"an epsilon cap must be a positive number, found {value!r}.")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), found {delta!r}.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only from the start: the ledger holds dataset sizes. SQLite gives its -wal
        # and -shm files the same permissions as the database file.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        with self._write() as conn:
            # One statement at a time: executescript() would commit the open transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            _migrate(conn, self.delta)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections -------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its first statement."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot: several queries see the same ledger state."""
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    # -- studies -----------------------------------------------------------------------

    def register_study(self, record: StudyRecord) -> StudyRecord:
        """Register an approved study, or return it if it is already registered as is.

        Refused when the dataset's spent events plus every event this study plans would
        compose above the cap; planned events are not reserved, so a later round can still
        be refused if other studies spend in between.
        """
        if not isinstance(record, StudyRecord):
            raise ValueError(f"record must be a StudyRecord, found {type(record).__name__}.")
        with self._write() as conn:
            stored = _study(conn, record.study_id, record.scientist)
            conn.execute(
                "INSERT OR IGNORE INTO owners (study_id, owner, since) VALUES (?, ?, ?)",
                (record.study_id, record.scientist, _now()),
            )
            if stored is not None:
                if stored != record:
                    changed = [
                        f.name.replace("plan_sha256", "plan")
                        for f in fields(record)
                        if getattr(stored, f.name) != getattr(record, f.name)
                    ]
                    raise StudyConflict(
                        f"study {record.study_id} is already registered with different "
                        f"{', '.join(changed)}; submit the change under a new study id."
                    )
                return stored
            if record.delta != self.delta:
                raise LedgerError(
                    f"study {record.study_id} is calibrated at delta {record.delta:g} but this "
                    f"hospital accounts at delta {self.delta:g}; recalibrate at {self.delta:g}."
                )
            spent_parts = _parts(conn, dataset=record.dataset)
            spent = parallel_epsilon(spent_parts, self.delta)
            total = parallel_epsilon(_merge(spent_parts, record.budget().parts()), self.delta)
            cap = self.cap(record.dataset)
            if total > cap:
                raise BudgetExceeded(
                    f"study {record.study_id} would bring dataset {record.dataset} to epsilon "
                    f"{total:.3f} (spent so far {spent:.3f}), above its cap {cap:g}; ask for a "
                    "smaller epsilon or fewer rounds."
                )
            conn.execute(
                f"INSERT INTO studies ({_STUDY_COLUMNS}, registered_at) "
                f"VALUES ({', '.join('?' * 18)})",
                (*astuple(record), _now()),
            )
        return record

    def own(self, study_id: str, owner: str) -> None:
        """Bind `study_id` to the account `owner` at its first call here, whatever the call
        (a secure study's first phases register nothing else); StudyOwned if another
        account holds it. Every later lookup with `owner` checks this binding."""
        if not (isinstance(owner, str) and owner and isinstance(study_id, str) and study_id):
            raise ValueError("a study is owned by a non-empty account and id.")
        with self._connect() as conn:  # bound already (every call after the first): no write
            bound = _owner(conn, study_id)
        if bound is not None:
            if bound != owner:
                raise _owned(study_id)
            return
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO owners (study_id, owner, since) VALUES (?, ?, ?)",
                (study_id, owner, _now()),
            )
            _check_owner(conn, study_id, owner)

    def owner(self, study_id: str) -> str | None:
        """The account `study_id` belongs to here, or None if no call has bound it yet."""
        with self._connect() as conn:
            return _owner(conn, study_id)

    def study(self, study_id: str, *, owner: str | None = None) -> StudyRecord | None:
        """The study registered under `study_id`; with `owner`, only if it is that account's
        (StudyOwned if another account holds the id)."""
        with self._connect() as conn:
            return _study(conn, study_id, owner)

    def studies(self, dataset: str | None = None) -> list[StudyRecord]:
        query = f"SELECT {_STUDY_COLUMNS} FROM studies"
        query += " WHERE dataset = ? ORDER BY rowid" if dataset is not None else " ORDER BY rowid"
        with self._connect() as conn:
            rows = conn.execute(query, () if dataset is None else (dataset,)).fetchall()
        return [StudyRecord(*row) for row in rows]

    # -- releases ----------------------------------------------------------------------

    def result(
        self, study_id: str, kind: str, round: int, *, owner: str | None = None
    ) -> bytes | None:
        """The stored release of (study, kind, round), or None if it never happened; with
        `owner`, StudyOwned if the study is another account's."""
        _check_kind(kind)
        with self._connect() as conn:
            if owner is not None:
                _study(conn, study_id, owner)
            row = conn.execute(
                "SELECT result FROM events WHERE study_id = ? AND kind = ? AND round = ?",
                (study_id, kind, round),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def record(
        self,
        study_id: str,
        kind: str,
        round: int,
        event: DpEvent,
        result: bytes,
        *,
        owner: str | None = None,
    ) -> float:
        """Charge `event` and store `result` in one transaction; the dataset's new epsilon.

        Training rounds are 1..rounds; evaluation round r is "after round r" (0..rounds),
        at most `evaluations` of them. A (study, kind, round) already recorded is left as
        it is and charged nothing: the caller reads the stored result instead.
        """
        if not isinstance(event, DpEvent):
            raise ValueError(f"event must be a DpEvent, found {type(event).__name__}.")
        if not isinstance(result, bytes | bytearray | memoryview):
            raise ValueError(f"result must be bytes, found {type(result).__name__}.")
        with self._write() as conn:
            study = self._admissible(conn, study_id, kind, round, owner)
            if study is None:  # already recorded
                return parallel_epsilon(_parts(conn, dataset=_dataset(conn, study_id)), self.delta)
            total = self._charge(conn, study, kind, round, event)
            _insert_event(conn, study_id, kind, round, event, bytes(result))
        return total

    def claim(
        self, study_id: str, kind: str, round: int, event: DpEvent, *, owner: str | None = None
    ) -> bool:
        """Charge `event` for a release about to be computed; False if it was charged before.

        The release is charged before anything is computed from private rows, so a
        computation that fails still spends: a failure can never be a free query. The
        event's row holds `PENDING` until `complete` stores the release.
        """
        if not isinstance(event, DpEvent):
            raise ValueError(f"event must be a DpEvent, found {type(event).__name__}.")
        with self._write() as conn:
            study = self._admissible(conn, study_id, kind, round, owner)
            if study is None:
                return False
            self._charge(conn, study, kind, round, event)
            _insert_event(conn, study_id, kind, round, event, PENDING)
        return True

    def complete(
        self, study_id: str, kind: str, round: int, result: bytes, *, owner: str | None = None
    ) -> None:
        """Store the release of a claimed (charged, still pending) event; once."""
        if not isinstance(result, bytes | bytearray | memoryview) or not result:
            raise ValueError("result must be non-empty bytes.")
        with self._write() as conn:
            if owner is not None:
                _study(conn, study_id, owner)
            updated = conn.execute(
                "UPDATE events SET result = ? WHERE study_id = ? AND kind = ? AND round = ? "
                "AND result = ?",
                (bytes(result), study_id, kind, round, PENDING),
            ).rowcount
        if updated != 1:
            raise LedgerError(f"study {study_id}: {kind} {round} has no pending release.")

    def size(self, dataset: str) -> int | None:
        """The dataset's released (noisy) size, or None before it is released."""
        with self._connect() as conn:
            row = conn.execute("SELECT noisy_n FROM sizes WHERE dataset = ?", (dataset,))
            found = row.fetchone()
        return None if found is None else int(found[0])

    def public_size(self, dataset: str, n: int) -> int:
        """The dataset's size as this hospital releases it: a discrete Gaussian count of the `n`
        private rows, drawn and charged to the dataset once; the stored figure after.

        Under add/remove adjacency an exact size would tell whether one patient is in the
        data; this release is a DP mechanism like any other, composed into the dataset's
        epsilon and bounded by its cap.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, found {type(n).__name__}.")
        with self._write() as conn:
            found = conn.execute("SELECT noisy_n FROM sizes WHERE dataset = ?", (dataset,))
            row = found.fetchone()
            if row is not None:
                return int(row[0])
            event = size_event()
            parts = _merge(_parts(conn, dataset=dataset), {TRAIN_PART: [event]})
            total = parallel_epsilon(parts, self.delta)
            if total > self.cap(dataset):
                raise BudgetExceeded(
                    f"releasing the size of dataset {dataset} would bring it to epsilon "
                    f"{total:.3f}, above its cap {self.cap(dataset):g}; this hospital makes "
                    "no further release of it."
                )
            noisy = max(1, n + int(discrete_gaussian(event.noise_multiplier)))
            conn.execute(
                "INSERT INTO sizes (dataset, noisy_n, noise_multiplier, released_at) "
                "VALUES (?, ?, ?, ?)",
                (dataset, noisy, event.noise_multiplier, _now()),
            )
        return noisy

    def check_round(
        self, study_id: str, kind: str, round: int, *, owner: str | None = None
    ) -> None:
        """Raise what `record` would raise for the study's planned event, writing nothing.

        Call it before computing a release, so no work is done for a refused round. A round
        already recorded passes: `record` will return without charging.
        """
        with self._read() as conn:
            study = self._admissible(conn, study_id, kind, round, owner)
            if study is not None:
                budget = study.budget()
                self._charge(
                    conn, study, kind, round, budget.train if kind == "train" else budget.evaluation
                )

    def _admissible(
        self,
        conn: sqlite3.Connection,
        study_id: str,
        kind: str,
        round: int,
        owner: str | None = None,
    ) -> StudyRecord | None:
        """The study if (kind, round) may be charged; None if it is already recorded."""
        _check_kind(kind)
        if isinstance(round, bool) or not isinstance(round, int):
            raise ValueError(f"round must be an int, found {type(round).__name__}.")
        study = _study(conn, study_id, owner)
        if study is None:
            raise LedgerError(f"study {study_id} is not registered at this hospital.")
        first = 1 if kind == "train" else 0
        if not first <= round <= study.rounds:
            what = "training round" if kind == "train" else "evaluation after round"
            raise RoundRefused(
                f"study {study_id}: {what} {round} is outside the approved rounds "
                f"{first}-{study.rounds}."
            )
        if conn.execute(
            "SELECT 1 FROM events WHERE study_id = ? AND kind = ? AND round = ?",
            (study_id, kind, round),
        ).fetchone():
            return None
        if kind == "eval":
            (used,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE study_id = ? AND kind = 'eval'", (study_id,)
            ).fetchone()
            if used >= study.evaluations:
                raise RoundRefused(
                    f"study {study_id}: its {study.evaluations} approved evaluations are spent; "
                    f"evaluation after round {round} is refused."
                )
        return study

    def _charge(
        self, conn: sqlite3.Connection, study: StudyRecord, kind: str, round: int, event: DpEvent
    ) -> float:
        """The dataset's epsilon with `event` added; BudgetExceeded above the cap."""
        spent_parts = _parts(conn, dataset=study.dataset)
        total = parallel_epsilon(_merge(spent_parts, {PART_OF[kind]: [event]}), self.delta)
        cap = self.cap(study.dataset)
        if total > cap:
            what = "training round" if kind == "train" else "evaluation after round"
            raise BudgetExceeded(
                f"study {study.study_id}: {what} {round} would bring dataset {study.dataset} "
                f"to epsilon {total:.3f} (spent {parallel_epsilon(spent_parts, self.delta):.3f}), "
                f"above its cap {cap:g}; this hospital makes no further release of it."
            )
        return total

    # -- accounting --------------------------------------------------------------------

    def events(
        self, dataset: str | None = None, study_id: str | None = None
    ) -> list[tuple[str, str, int, DpEvent]]:
        """(study_id, kind, round, event) in the order they were recorded."""
        with self._connect() as conn:
            return _event_rows(conn, dataset=dataset, study_id=study_id)

    def spent(self, dataset: str) -> float:
        """The dataset's epsilon at this ledger's delta: all studies composed in each part,
        the larger part's figure."""
        with self._connect() as conn:
            return parallel_epsilon(_parts(conn, dataset=dataset), self.delta)

    def parts(self, dataset: str) -> dict[str, list[DpEvent]]:
        """The dataset's events by the part they read (training: rounds and the size; test:
        evaluations); the parts compose in parallel."""
        with self._connect() as conn:
            return _parts(conn, dataset=dataset)

    def part_spent(self, dataset: str) -> dict[str, float]:
        """Each part's composed epsilon."""
        return {
            part: parallel_epsilon({part: events}, self.delta)
            for part, events in self.parts(dataset).items()
        }

    def study_spent(self, study_id: str, *, owner: str | None = None) -> float:
        """The study's own epsilon (what it cost, were it alone)."""
        with self._connect() as conn:
            if owner is not None:
                _study(conn, study_id, owner)
            return parallel_epsilon(_parts(conn, study_id=study_id), self.delta)

    def spent_rdp(self, dataset: str) -> float:
        """The same parts composed by Renyi DP: the cross-check of `spent` (never below)."""
        with self._connect() as conn:
            return parallel_epsilon(_parts(conn, dataset=dataset), self.delta, "rdp")

    def accountants(self) -> list[tuple[str, str, str]]:
        """Each accountant this ledger was kept with: (accountant, since, note), oldest first."""
        with self._connect() as conn:
            query = "SELECT accountant, since, note FROM accountants ORDER BY id"
            return [tuple(row) for row in conn.execute(query)]

    def cap(self, dataset: str) -> float:
        return float(self._caps.get(dataset, self._default_cap))


def _migrate(conn: sqlite3.Connection, delta: float) -> None:
    """Bring an older ledger to this schema, keeping every study and event as it was.

    Schema 1 (before plan digests) gains the column; its studies keep ''. Schema 2 and older
    summed all events by Renyi DP: the switch to `LEDGER_ACCOUNTING` is recorded with each
    dataset's figure before and after, the same events composed both ways. Studies registered then
    keep the noise they were calibrated with, which now costs them less than their target.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(studies)")}
    if "plan_sha256" not in columns:
        conn.execute("ALTER TABLE studies ADD COLUMN plan_sha256 TEXT NOT NULL DEFAULT ''")
    _migrate_pickles(conn)
    # Schema 3 and older: a registered study is its registrant's.
    conn.execute(
        "INSERT OR IGNORE INTO owners (study_id, owner, since) "
        "SELECT study_id, scientist, registered_at FROM studies"
    )
    current = conn.execute("SELECT accountant FROM accountants ORDER BY id DESC LIMIT 1")
    row = current.fetchone()
    if row is not None and row[0] == LEDGER_ACCOUNTING:
        return
    previous = row[0] if row is not None else "rdp"  # schema 2 and older: RDP, summed
    datasets = sorted(
        {d for (d,) in conn.execute("SELECT dataset FROM studies UNION SELECT dataset FROM sizes")}
    )
    old = ACCOUNTANTS[previous.split("/")[0]]
    figures = []
    for dataset in datasets:
        parts = _parts(conn, dataset=dataset)
        before = (
            parallel_epsilon(parts, delta, previous.split("/")[0])
            if "/" in previous
            else old([e for events in parts.values() for e in events], delta)
        )
        figures.append(f"{dataset} {before:.4f} -> {parallel_epsilon(parts, delta):.4f}")
    note = (f"from {previous}: " + ", ".join(figures)) if figures else "new ledger"
    conn.execute(
        "INSERT INTO accountants (accountant, since, note) VALUES (?, ?, ?)",
        (LEDGER_ACCOUNTING, _now(), note),
    )


def _migrate_pickles(conn: sqlite3.Connection) -> None:
    """Schema 3 and older pickled each release: rewrite them as plain data
    (`datasites.contract.stored`), reading each through an unpickler that builds arrays and
    containers only. A row that names anything else (a tampered file) is never run: the
    ledger refuses to open, in one sentence, until the operator restores a trusted copy
    (dropping the row would forget a charged release)."""
    rows = conn.execute("SELECT id, result FROM events WHERE substr(result, 1, 1) = x'80'")
    for event_id, raw in rows.fetchall():
        try:
            value = legacy_loads(raw)
        except StoredFormatError as error:
            raise LedgerError(
                f"the ledger's release {event_id} is not plain data ({error}); restore the "
                "ledger from a trusted copy."
            ) from None
        conn.execute("UPDATE events SET result = ? WHERE id = ?", (dumps(value), event_id))


def _study(conn: sqlite3.Connection, study_id: str, owner: str | None = None) -> StudyRecord | None:
    """The study of `study_id`; with `owner`, StudyOwned when another account holds it."""
    row = conn.execute(
        f"SELECT {_STUDY_COLUMNS} FROM studies WHERE study_id = ?", (study_id,)
    ).fetchone()
    study = None if row is None else StudyRecord(*row)
    if owner is not None:
        _check_owner(conn, study_id, owner)
        if study is not None and study.scientist != owner:
            raise _owned(study_id)
    return study


def _owner(conn: sqlite3.Connection, study_id: str) -> str | None:
    row = conn.execute("SELECT owner FROM owners WHERE study_id = ?", (study_id,)).fetchone()
    return None if row is None else str(row[0])


def _check_owner(conn: sqlite3.Connection, study_id: str, owner: str) -> None:
    bound = _owner(conn, study_id)
    if bound is not None and bound != owner:
        raise _owned(study_id)


def _owned(study_id: str) -> StudyOwned:
    # Which account holds the id is not the caller's business: only that it is not theirs.
    return StudyOwned(
        f"study id {study_id} belongs to another account at this hospital; submit your "
        "study under a new study id."
    )


def _dataset(conn: sqlite3.Connection, study_id: str) -> str:
    (dataset,) = conn.execute(
        "SELECT dataset FROM studies WHERE study_id = ?", (study_id,)
    ).fetchone()
    return str(dataset)


def _event_rows(
    conn: sqlite3.Connection, *, dataset: str | None = None, study_id: str | None = None
) -> list[tuple[str, str, int, DpEvent]]:
    where, args = [], []
    if dataset is not None:
        where.append("s.dataset = ?")
        args.append(dataset)
    if study_id is not None:
        where.append("e.study_id = ?")
        args.append(study_id)
    query = _EVENT_QUERY + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.id"
    rows = [
        (sid, kind, rnd, DpEvent(sigma, rate, steps))
        for sid, kind, rnd, sigma, rate, steps in conn.execute(query, args)
    ]
    return rows if study_id is not None else [*_size_rows(conn, dataset), *rows]


def _size_rows(
    conn: sqlite3.Connection, dataset: str | None
) -> list[tuple[str, str, int, DpEvent]]:
    """Each released dataset size as an event of the dataset (no study's)."""
    query = "SELECT noise_multiplier FROM sizes" + (" WHERE dataset = ?" if dataset else "")
    found = conn.execute(query, (dataset,) if dataset else ())
    return [("", SIZE_KIND, 0, DpEvent(float(sigma), 1.0, 1)) for (sigma,) in found]


def size_event() -> DpEvent:
    """The DP event of one dataset-size release."""
    return DpEvent(noise_multiplier=SIZE_NOISE_MULTIPLIER, sample_rate=1.0, steps=1)


def size_upper_bound(released: int) -> int:
    """A public upper bound on the true size behind a released one, wrong with probability
    at most SIZE_TAIL: the discrete Gaussian is subgaussian, P(X <= -t) <= exp(-t^2 / 2s^2)
    [Canonne, Kamath & Steinke 2020], so the margin is s sqrt(2 ln(1 / SIZE_TAIL)) plus one
    (381 rows)."""
    scale = SIZE_NOISE_MULTIPLIER * DISCRETE_NOISE_FACTOR
    return released + math.ceil(scale * math.sqrt(2.0 * math.log(1.0 / SIZE_TAIL))) + 1


def _parts(
    conn: sqlite3.Connection, *, dataset: str | None = None, study_id: str | None = None
) -> dict[str, list[DpEvent]]:
    """The events by the part of the dataset they read (both parts always present)."""
    parts: dict[str, list[DpEvent]] = {TRAIN_PART: [], TEST_PART: []}
    for _, kind, _, event in _event_rows(conn, dataset=dataset, study_id=study_id):
        parts[PART_OF[kind]].append(event)
    return parts


def _merge(*parts: dict[str, list[DpEvent]]) -> dict[str, list[DpEvent]]:
    merged: dict[str, list[DpEvent]] = {TRAIN_PART: [], TEST_PART: []}
    for each in parts:
        for part, events in each.items():
            merged[part].extend(events)
    return merged
