"""A call the guard cannot check is refused with at most one traceback a minute per kind
(issue 27, second attack): a scientist's signed call naming an unregistered type wrote a
traceback to datasite.log per call."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from datasites.server import refusals
from datasites.server.guard import Guard
from datasites.site.audit import AuditLog


def test_a_call_that_cannot_be_checked_writes_one_traceback_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refusals, "_TRACED", {})  # no other test's traceback counts

    def no_role(**_: Any) -> Any:
        raise KeyError("dicx")  # what an unregistered type name in the arguments raises

    guard = Guard(SimpleNamespace(get_role_for_credentials=no_role), AuditLog.open(tmp_path))
    call = SimpleNamespace(credentials="a key", serialized_message=b"")

    with caplog.at_level(logging.WARNING, logger="datasites.guard"):
        reasons = [guard.refusal(call) for _ in range(50)]

    assert set(reasons) == {"the call could not be checked"}
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == 1, f"{len(traced)} tracebacks for 50 calls"
    warned = [r for r in caplog.records if not r.exc_info]
    assert len(warned) == 49 and all(len(r.getMessage().splitlines()) == 1 for r in warned)
    assert "KeyError" in warned[0].getMessage()
