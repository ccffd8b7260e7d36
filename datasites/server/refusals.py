"""Refused calls from one source become one audit entry per interval, not one each.

Anyone who reaches the port can be refused, and the audit log is append-only and hashed, so
an entry per refusal let a stranger grow it without bound (300 entries in 1.7 s). Here a
refusal is first written in full, as before; further refusals of the same kind within
`interval` seconds are only counted, and when the interval closes one entry records how
many there were (`count`), when the first and the last came (`first`, `last`) and the first
one's fields. A source is the caller's verified account if it has one (set by
`datasites.server.gate`), else its network address. A stranger's
kind is (address, layer, path, claimed user); a verified account's refusals are each written
in full, up to four times `kinds_per_source` an interval, since they name what it tried. A
source may open at most `kinds_per_source` kinds an interval, and everything past that is
counted under one kind of its own ("*"), so a stranger cannot open new kinds by claiming
other emails or paths. At most `MAX_SOURCES` sources are tracked at once; the rest
share one bucket. A stranger's address therefore adds at most 2 * (kinds_per_source + 1)
entries an interval, whatever it sends. The hospital's own operator, and anything outside a
request, is written in full as before.

`RefusalAudit` is an `AuditLog` whose `append` does this for `Event.REFUSED` (every other
event is written at once), so the guard, syft's own refusals and the login routes need no
change: the datasite hands them this log (`datasites.server.serve.build_app`).
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasites.site.audit import AuditLog, Event

log = logging.getLogger("datasites.server.refusals")

# Who sent the request being handled: "account:<email>" once the gate verified its
# signature ("operator:<email>" for the hospital's admin, whose refusals are always written
# in full), else "address:<ip>"; empty outside a request (written in full too). Set by the
# gate for each request; the threads syft runs a call in inherit it (Starlette and anyio
# copy the context).
SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("datasites_source", default="")
DEFAULT_INTERVAL = 60.0
KINDS_PER_SOURCE = 16
MAX_SOURCES = 4096
OVERFLOW_SOURCE = "many sources"
FIELD_CHARS = 200
# What a folded entry lists of the refusals it counts (distinct values, at most so many).
NAMED_FIELDS = {"study": "studies", "path": "paths", "reason": "reasons"}
NAMED_PER_FIELD = 16
# What makes two refusals of a stranger (an address) the same kind.
KIND_FIELDS = ("layer", "path", "user")
# A verified account's refusals are each written in full, up to this many times
# `kinds_per_source` an interval: they name what it tried (and its request budget and
# account bound it); past that they are counted like a stranger's.
ACCOUNT_FACTOR = 4


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class _Kind:
    """One kind of refusal in its open interval: the first entry was written in full."""

    opened: float
    fields: dict[str, Any]
    count: int = 0  # refusals after the first, not written yet
    first: str = ""
    last: str = ""
    # What the folded refusals named (a few of each): an account cannot hide which studies
    # or paths it probed behind the first one's fields.
    named: dict[str, list[str]] = field(default_factory=dict)

    def note(self, fields: dict[str, Any]) -> None:
        for name in NAMED_FIELDS:
            value = fields.get(name)
            if value is None:
                continue
            seen = self.named.setdefault(name, [])
            text = str(value)[:FIELD_CHARS]
            if text not in seen and len(seen) < NAMED_PER_FIELD:
                seen.append(text)


@dataclass
class _Source:
    opened: float
    kinds: set[tuple[str, ...]] = field(default_factory=set)


class RefusalAudit(AuditLog):
    """The hospital's audit log, with refusals aggregated per source and interval."""

    def __init__(
        self,
        path: Path,
        interval: float = DEFAULT_INTERVAL,
        kinds_per_source: int = KINDS_PER_SOURCE,
    ) -> None:
        super().__init__(path)
        self.interval = float(interval)
        self.kinds_per_source = int(kinds_per_source)
        self._lock = threading.Lock()
        self._kinds: dict[tuple[str, ...], _Kind] = {}
        self._sources: dict[str, _Source] = {}
        self._summaries: list[tuple[dict[str, Any], _Kind]] = []
        self._flusher: threading.Thread | None = None
        self._stopped = threading.Event()

    @classmethod
    def wrapping(cls, audit: AuditLog, interval: float = DEFAULT_INTERVAL) -> RefusalAudit:
        return cls(audit.path, interval)

    def append(self, event: str, /, **fields: Any) -> dict[str, Any]:
        if event != Event.REFUSED:
            return super().append(event, **fields)
        source = SOURCE.get()
        if not source or source.startswith("operator:"):
            return super().append(event, **fields)  # the hospital's own, or no request
        fields = {**fields, "source": source} if "source" not in fields else fields
        written = self._count(source, fields)
        if written is not None:
            return written
        return super().append(event, **fields)

    def _count(self, source: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """None when this refusal opens its kind (the caller writes it in full), else the
        counted entry as it stands (nothing written now)."""
        now = time.monotonic()
        stamp = _now()
        with self._lock:
            self._start_flusher()
            self._close_due(now)
            if source not in self._sources and len(self._sources) >= MAX_SOURCES:
                source = OVERFLOW_SOURCE
            opened = self._sources.setdefault(source, _Source(now))
            if source.startswith("account:"):
                # Each is written in full up to the budget: they name what it tried.
                key = (source, str(len(opened.kinds)))
                full = len(opened.kinds) >= self.kinds_per_source * ACCOUNT_FACTOR
            else:
                key = (source, *(str(fields.get(k, ""))[:FIELD_CHARS] for k in KIND_FIELDS))
                full = len(opened.kinds) >= self.kinds_per_source
            if full and key not in self._kinds and key not in opened.kinds:
                key = (source, "*", "*", "*")
            kind = self._kinds.get(key)
            if kind is None:
                opened.kinds.add(key)
                shown = dict(fields)
                if key[1] == "*":
                    shown.update(layer="*", path="*", user="*", source=source)
                self._kinds[key] = _Kind(now, shown, first=stamp, last=stamp)
                return None if key[1] != "*" else self._counted(self._kinds[key], stamp, fields)
            return self._counted(kind, stamp, fields)

    @staticmethod
    def _counted(kind: _Kind, stamp: str, fields: dict[str, Any]) -> dict[str, Any]:
        if kind.count == 0:
            kind.first = stamp
        kind.count += 1
        kind.note(fields)
        kind.last = stamp
        return {"event": Event.REFUSED.value, **kind.fields, "count": kind.count, "pending": True}

    def _close_due(self, now: float) -> None:
        """Forget the kinds (and sources) whose interval closed, keeping their summaries
        for `flush` to write; called with the lock held."""
        for key, kind in list(self._kinds.items()):
            if now - kind.opened >= self.interval:
                del self._kinds[key]
                if kind.count:
                    self._summaries.append((kind.fields, kind))
        for name, source in list(self._sources.items()):
            if now - source.opened >= self.interval:
                del self._sources[name]

    def flush(self, everything: bool = False) -> int:
        """Write the summaries of closed intervals (of all open ones too with `everything`);
        the number written."""
        with self._lock:
            self._close_due(float("inf") if everything else time.monotonic())
            due, self._summaries = self._summaries, []
        for fields, kind in due:
            try:
                super().append(
                    Event.REFUSED,
                    **{**fields, "count": kind.count, "first": kind.first, "last": kind.last},
                    **{NAMED_FIELDS[name]: values for name, values in kind.named.items()},
                )
            except Exception:
                log.exception("could not write the audit summary of refused calls")
        return len(due)

    def _start_flusher(self) -> None:
        if self._flusher is not None:
            return
        self._flusher = threading.Thread(target=self._flush_loop, name="refusal-audit", daemon=True)
        self._flusher.start()
        atexit.register(self.close)

    def _flush_loop(self) -> None:
        pause = max(0.2, min(1.0, self.interval / 4))
        while not self._stopped.wait(pause):
            self.flush()

    def close(self) -> None:
        """Write every open interval's summary (at exit: nothing counted is lost)."""
        self._stopped.set()
        self.flush(everything=True)


# -- unexpected failures in the log ----------------------------------------------------------

TRACE_EVERY_S = 60.0
_TRACES_KEPT = 1024
_TRACED: dict[tuple[str, str, str], float] = {}
_TRACED_LOCK = threading.Lock()


def log_unexpected(
    logger: logging.Logger, message: str, error: BaseException, every: float = TRACE_EVERY_S
) -> bool:
    """Log an unexpected failure (call it where the exception is handled): with its
    traceback at most once every `every` seconds per (logger, message, kind of error), a
    one-line warning naming the kind otherwise, so that hostile input sent again and again
    cannot grow the datasite's log by a traceback a call. True when the traceback was
    written."""
    kind = type(error).__name__
    key = (logger.name, message, kind)
    now = time.monotonic()
    with _TRACED_LOCK:
        due = now - _TRACED.get(key, -every) >= every
        if due:
            if len(_TRACED) >= _TRACES_KEPT:
                _TRACED.clear()
            _TRACED[key] = now
    if due:
        logger.error(message, exc_info=(type(error), error, error.__traceback__))
    else:
        logger.warning("%s (%s again)", message, kind)
    return due
