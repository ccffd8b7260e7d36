"""The hospital's audit log: what was asked of it, what its operator decided, what left.

One JSON object per line in `<hospital root>/audit.jsonl`, append-only. Each entry carries
`seq` (0, 1, 2, ...), a UTC `time`, an `event` and the caller's fields, then `prev`, the
hash of the entry before it (`GENESIS` for the first), and `hash`, the SHA-256 of the
entry's canonical JSON without its `hash` key (sort_keys, compact separators, UTF-8). A
second file, `audit.head` (0600 like the log), holds the seq and hash of the last entry
written and is rewritten under the same lock by every append.

What the chain protects against: editing any part of a line (its hash no longer matches),
editing a line and recomputing its hash (the next entry, or the head, recorded the old
hash), deleting, inserting or reordering lines (`seq` no longer counts up by one, or a
`prev` no longer matches), a corrupt or half-written line, and deleting the last entries
(the log then ends before the entry the head records). `AuditLog.verify` names the first
entry that fails.

What it does not protect against: the hashes carry no key, so an insider who can write
the hospital's folder can rewrite the chain from the first entry they change onwards,
rewrite the head to match, and `verify` will pass. The chain makes tampering evident, not
impossible. Copying the last hash (`Verification.last_hash`) somewhere that insider cannot
reach (a ticket, a message to the ethics board or the scientist) pins everything up to
it: a later rewrite of any earlier entry changes the hash stored for that seq.

Several processes append at once (the datasite running approved studies, the operator's
commands), so each append holds an exclusive `flock` on the log while it finds the end of
the chain, writes its line to an O_APPEND descriptor, fsyncs and rewrites the head.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from datasites.contract.files import atomic_write
from datasites.site.paths import AUDIT_FILE

HEAD_SUFFIX = ".head"
GENESIS = "0" * 64


class Event(StrEnum):
    """Every kind of entry the log holds; `append` refuses any other, so a typo in a new
    caller fails its first test instead of writing an event no reader looks for."""

    REQUEST_RECEIVED = "request_received"  # syft accepted a code request (server.guard)
    REQUEST_SHOWN = "request_shown"  # an operator read a request in full
    APPROVED = "approved"
    DENIED = "denied"
    POLICY_DECISION = "policy_decision"  # the watcher applied the site policy
    ROUND_EXECUTED = "round_executed"  # trained weights left the hospital
    EVALUATION_RELEASED = "evaluation_released"  # noised evaluation counts left
    SECURE_PHASE = "secure_phase"  # a secure study's phase answered (what left: its digest)
    REPEAT_SERVED = "repeat_served"  # a repeated call got the recorded release again
    REFUSED = "refused"  # a call, login or request refused at any layer
    INCIDENT = "incident"  # an unexpected error inside the runtime (details in the log)
    ACCOUNT_REGISTERED = "account_registered"
    ACCOUNT_ADDED = "account_added"  # `scientists add` (the email, never the password)
    ACCOUNT_REMOVED = "account_removed"  # `scientists remove`: login and every call refused
    PASSWORD_RESET = "password_reset"  # `scientists reset-password`: the old password refused
    KEYS_ROTATED = "keys_rotated"  # new keys written, applied at the next start
    KEYS_APPLIED = "keys_applied"
    STORE_PERMISSIONS_FIXED = "store_permissions_fixed"  # a widened folder was made private
    PARTNER_ADDED = "partner_added"  # a hospital registered for secure studies (partners.json)
    PARTNER_REMOVED = "partner_removed"


RESERVED = ("seq", "time", "event", "prev", "hash")
_SHORT_DIGEST = 12
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LAST_LINE_CHUNK = 4096
_CANNOT_RULE_OUT = "deletions from the end of the log cannot be ruled out because"

_EVENT_NAMES = frozenset(e.value for e in Event)


@dataclass(frozen=True)
class Verification:
    """What `AuditLog.verify` found.

    `first_bad` is the 0-based line index of the first entry that fails; for a log cut
    short, or whose end cannot be vouched for (no head), it is the index where the next
    entry belongs. `last_hash` is the hash of the last entry when the log verifies: copy
    it elsewhere to pin the log as it is now.
    """

    ok: bool
    entries: int
    first_bad: int | None
    problem: str
    last_hash: str = ""


@dataclass(frozen=True)
class _Head:
    """The last entry written: what `audit.head` records and what the next entry follows."""

    seq: int
    hash: str


_NO_HEAD = _Head(seq=-1, hash=GENESIS)
# Entries held by `AuditLog.grouped` in this thread: log path -> (log, entries).
_GROUPED: ContextVar[dict[Path, tuple[AuditLog, list[dict[str, Any]]]] | None] = ContextVar(
    "audit_grouped", default=None
)


class AuditLog:
    """The audit log in one file; cheap to create, safe to share between processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(HEAD_SUFFIX)

    @classmethod
    def open(cls, root: Path) -> AuditLog:
        """The audit log of the hospital whose folder is `root`."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root / AUDIT_FILE)

    def append(self, event: str, /, **fields: Any) -> dict[str, Any]:
        """Append one entry and return it as it was written.

        The entry follows the one `audit.head` records, not whatever the file ends with: if
        lines were deleted from the end or the last one was edited, the new entry does not
        paper over it, and `verify` keeps reporting the break. The one exception is a log
        exactly one valid entry ahead of its head, which is what a crash between writing a
        line and rewriting the head leaves behind. `event` is positional-only so that a
        field named `event` is refused as reserved instead of colliding with it.
        """
        entry = {"time": _now(), **_new_entry(event, fields)}
        pending = _GROUPED.get()
        if pending is not None:  # written with the others at the end of `grouped`
            pending.setdefault(self.path, (self, []))[1].append(entry)
            return entry
        return self._write([entry])[0]

    @contextmanager
    def grouped(self) -> Iterator[None]:
        """Entries appended in this block, by this thread to any log, are written at its
        end together: one flush and one head update per log instead of one per entry. The
        caller ends the block before anything it records leaves the hospital (a call's
        phases are audited together before its reply is returned). Nested blocks join
        the outermost one."""
        if _GROUPED.get() is not None:
            yield
            return
        token = _GROUPED.set({})
        try:
            yield
        finally:
            pending = _GROUPED.get() or {}
            _GROUPED.reset(token)
            for log, entries in pending.values():
                log._write(entries)

    def _write(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain `entries` after the head, append them, flush once, then move the head."""
        with _locked(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, fcntl.LOCK_EX) as fd:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            size = os.fstat(fd).st_size
            after = _chain_end(_last_line(fd, size), _head_or_none(self.head_path))
            chained, lines = [], []
            for entry in entries:
                time_, rest = entry["time"], {k: v for k, v in entry.items() if k != "time"}
                entry = {"seq": after.seq + 1, "time": time_, **rest, "prev": after.hash}
                entry["hash"] = _digest(entry)
                after = _Head(entry["seq"], entry["hash"])
                chained.append(entry)
                lines.append(_dumps(entry) + "\n")
            text = "".join(lines)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                text = "\n" + text  # keep a half-written line apart from these
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
            _write_head(self.head_path, after)
        return chained

    def entries(self) -> list[dict[str, Any]]:
        """Every line that is a JSON object, in file order; `verify` reports the others."""
        data, _ = self._snapshot()
        parsed = (_parse(line) for line in _lines(data))
        return [entry for entry in parsed if entry is not None]

    def verify(self) -> Verification:
        """Check the chain line by line, then its end against `audit.head`."""
        data, head = self._snapshot()
        return _verify(_lines(data), head)

    def _snapshot(self) -> tuple[bytes, bytes | None]:
        """The log and head as one consistent pair: appends wait while they are read."""
        try:
            with _locked(self.path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
                return _read_all(fd), _read_optional(self.head_path)
        except FileNotFoundError:
            return b"", _read_optional(self.head_path)


def weights_digest(weights: Mapping[str, Any]) -> str:
    """SHA-256 of model weights, so an entry can say exactly which weights left.

    For each name in sorted order the digest takes one header line, the UTF-8 of
    `json.dumps({"dtype": a.dtype.str, "name": name, "nbytes": a.nbytes,
    "shape": list(a.shape)}, sort_keys=True, separators=(",", ":"))` and a newline, then
    the raw bytes of the C-contiguous array. The header fixes how the bytes are read, so
    equal values in another dtype, byte order or shape give another digest, and the
    format is simple enough for the scientist to recompute from what they received.
    """
    names = [name for name in weights if not isinstance(name, str)]
    if names:
        raise ValueError(f"weight names must be str, found {names[0]!r}.")
    digest = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(np.asarray(weights[name]))
        if array.dtype.hasobject:
            raise ValueError(f"weight {name} holds Python objects; pass a numeric array.")
        header = {
            "dtype": array.dtype.str,
            "name": name,
            "nbytes": array.nbytes,
            "shape": list(array.shape),
        }
        digest.update(_canonical(header) + b"\n")
        digest.update(array.tobytes())
    return digest.hexdigest()


def format_entry(entry: Mapping[str, Any]) -> str:
    """One line for the operator: time, seq, event, then the fields as key=value."""
    fields = " ".join(
        f"{key}={_show(key, value)}" for key, value in entry.items() if key not in RESERVED
    )
    line = f"{entry.get('time', '?')}  #{entry.get('seq', '?')}  {entry.get('event', '?')}"
    return f"{line}  {fields}" if fields else line


# -- entries ---------------------------------------------------------------------------


def _new_entry(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's part of an entry, checked and reduced to what JSON gives back."""
    if event not in _EVENT_NAMES:
        raise ValueError(
            f"unknown audit event {str(event)[:40]!r}; record one of the kinds in "
            "datasites.site.audit.Event."
        )
    reserved = [name for name in RESERVED if name in fields]
    if reserved:
        listed = ", ".join(reserved)
        which = f"field {listed} is" if len(reserved) == 1 else f"fields {listed} are"
        raise ValueError(
            f"{which} reserved by the audit log ({', '.join(RESERVED)}); record the value "
            "under another name."
        )
    return {
        "event": str(Event(event).value),
        **{name: _plain(value, name) for name, value in fields.items()},
    }


def _plain(value: Any, where: str) -> Any:
    """`value` as json.loads would return it, so the entry returned equals the one read back.

    numpy scalars and arrays become Python numbers and lists; anything else JSON cannot
    store faithfully (NaN, bytes, objects) is refused rather than stringified, because an
    audit record that silently changed a value is worse than none.
    """
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"field {where} is {value}, which JSON cannot store; record it as a string."
            )
        return float(value)
    if isinstance(value, Mapping):
        keys = [key for key in value if not isinstance(key, str)]
        if keys:
            raise ValueError(f"field {where} has a non-str key {keys[0]!r}; use str keys.")
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"field {where} holds a {type(value).__name__}, which JSON cannot store; pass str, "
        "int, float, bool, None, or lists and dicts of them."
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _digest(entry: Mapping[str, Any]) -> str:
    """The entry's hash: SHA-256 of its canonical JSON without the `hash` key."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _dumps(entry: Mapping[str, Any]) -> str:
    """The line as written: canonical JSON except that keys keep the entry's order."""
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _show(key: str, value: Any) -> str:
    if key == "weights_sha256" and isinstance(value, str):
        return value[:_SHORT_DIGEST]
    if isinstance(value, str) and value and not any(c.isspace() or c in '="' for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- reading and checking --------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    """The log's lines; a last line without its newline is kept (and fails to parse)."""
    lines = data.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _well_formed(entry: Mapping[str, Any]) -> bool:
    seq, time, event = entry.get("seq"), entry.get("time"), entry.get("event")
    return (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and isinstance(time, str)
        and isinstance(event, str)
        and bool(event)
        and all(
            isinstance(entry.get(k), str) and _HEX64.fullmatch(entry[k]) for k in ("prev", "hash")
        )
    )


def _hash_holds(entry: Mapping[str, Any]) -> bool:
    try:
        return entry["hash"] == _digest(entry)
    except ValueError:  # NaN or Infinity typed into the file
        return False


def _entry_problem(
    i: int, entry: Mapping[str, Any] | None, previous: Mapping[str, Any] | None
) -> tuple[int, str] | None:
    """(index to blame, sentence) for the first way line `i` breaks the chain, if any."""
    if entry is None:
        return i, f"entry {i} is not valid JSON (line {i + 1} of the file)."
    if not _well_formed(entry):
        return i, (
            f"entry {i} is not an audit entry (it lacks a valid seq, time, event, prev or hash)."
        )
    if not _hash_holds(entry):
        return i, f"entry {i} was edited (its hash does not match its content)."
    if entry["seq"] != i:
        return i, (
            f"entry {i} holds seq {entry['seq']} instead of {i}, so it does not follow "
            f"entry {i - 1} (entries before it were deleted, inserted or reordered)."
        )
    if previous is None:
        if entry["prev"] != GENESIS:
            return i, "entry 0 does not start the chain (its prev is not the genesis hash)."
    elif entry["prev"] != previous["hash"]:
        return i - 1, (
            f"entry {i - 1} was edited and its hash recomputed (entry {i} recorded a "
            "different hash for it)."
        )
    return None


def _verify(lines: list[bytes], head_text: bytes | None) -> Verification:
    entries: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        entry = _parse(line)
        found = _entry_problem(i, entry, entries[-1] if entries else None)
        if found is not None:
            return Verification(False, len(lines), *found)
        assert entry is not None
        entries.append(entry)
    found = _end_problem(entries, head_text)
    if found is not None:
        return Verification(False, len(lines), *found)
    return Verification(True, len(lines), None, "", entries[-1]["hash"] if entries else GENESIS)


def _end_problem(entries: list[dict[str, Any]], head_text: bytes | None) -> tuple[int, str] | None:
    """How an intact chain disagrees with `audit.head`, if it does."""
    n = len(entries)
    last = _Head(n - 1, entries[-1]["hash"]) if entries else _NO_HEAD
    try:
        head = _NO_HEAD if head_text is None else _parse_head(head_text)
    except ValueError:
        return n, f"{_CANNOT_RULE_OUT} audit.head is corrupt."
    if last == head or (last.seq == head.seq + 1 and entries[-1]["prev"] == head.hash):
        return None  # at most one append was cut short before it rewrote the head
    if head_text is None:
        return n, f"{_CANNOT_RULE_OUT} audit.head is missing."
    if last.seq < head.seq:
        where = "the log is empty" if not entries else f"the log ends at entry {last.seq}"
        return n, f"{where} but entry {head.seq} was written: entries were deleted from the end."
    if entries[head.seq]["hash"] != head.hash:
        return head.seq, (
            f"entry {head.seq} was edited and its hash recomputed (audit.head recorded a "
            "different hash for it)."
        )
    return head.seq + 1, (
        f"audit.head records entry {head.seq} as the last written but the log runs on to "
        f"entry {last.seq} (entries were added by hand or the head was replaced by an old copy)."
    )


def _parse_head(text: bytes) -> _Head:
    value = _parse(text)
    if value is None:
        raise ValueError("audit.head is not a JSON object.")
    seq, digest = value.get("seq"), value.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("audit.head has no valid seq.")
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise ValueError("audit.head has no valid hash.")
    return _Head(seq, digest)


def _head_or_none(path: Path) -> _Head:
    """The head an append follows; missing or corrupt counts as none, which `verify` flags."""
    text = _read_optional(path)
    try:
        return _NO_HEAD if text is None else _parse_head(text)
    except ValueError:
        return _NO_HEAD


def _chain_end(last_line: bytes, head: _Head) -> _Head:
    """The entry the next append follows: the head, or a valid entry one past it."""
    last = _parse(last_line)
    if (
        last is not None
        and _well_formed(last)
        and _hash_holds(last)
        and last["seq"] == head.seq + 1
        and last["prev"] == head.hash
    ):
        return _Head(last["seq"], last["hash"])
    return head


# -- files -----------------------------------------------------------------------------


@contextmanager
def _locked(path: Path, flags: int, operation: int) -> Iterator[int]:
    """A descriptor on `path` holding a flock; closing it releases the lock."""
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield fd
    finally:
        os.close(fd)


def _last_line(fd: int, size: int) -> bytes:
    """The file's last line without its newline, read from the end so appends stay cheap."""
    end = size - 1 if size and os.pread(fd, 1, size - 1) == b"\n" else size
    tail = b""
    while end > 0:
        start = max(0, end - _LAST_LINE_CHUNK)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        newline = tail.rfind(b"\n")
        if newline >= 0:
            return tail[newline + 1 :]
    return tail


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_head(path: Path, head: _Head) -> None:
    """Replace the head atomically, 0600 from the start, and on disk before the lock goes."""
    data = _canonical({"seq": head.seq, "hash": head.hash}) + b"\n"
    atomic_write(path, lambda handle: handle.write(data), mode=0o600)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
