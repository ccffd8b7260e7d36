"""The operator's budget and audit trail as typed values: the same figures as the ledger
and the log, a one-line repr, and notebook tables that escape the scientist's text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasites.governance.operator import Operator
from datasites.privacy.ledger import Ledger
from datasites.site.audit import AuditLog, Event
from datasites.site.paths import LEDGER_FILE
from tests.unit.test_ledger import study


def operator(root: Path) -> Operator:
    """An operator of a hospital folder with no datasite running: the budget and the audit
    trail are read from the folder's files alone."""
    return Operator(root, client=None, name="ops")


def test_budget_holds_the_ledgers_figures(tmp_path: Path) -> None:
    root = tmp_path / "hospital-a"
    root.mkdir()
    ledger = Ledger(root / LEDGER_FILE, cap=10.0)
    record = ledger.register_study(study("s-one", scientist="<script>x</script>"))
    ledger.record("s-one", "train", 1, record.budget().train, b"w1")

    budget = operator(root).budget()

    ehr = budget["ehr"]
    assert ehr.spent == pytest.approx(ledger.spent("ehr")) and ehr.cap == ledger.cap("ehr")
    assert ehr.remaining == pytest.approx(ehr.cap - ehr.spent)
    assert [s.study_id for s in ehr.studies] == ["s-one"] and len(ehr.events) == 1
    assert ehr.events[0].kind == "train" and ehr.events[0].round == 1
    assert budget.to_dict()["ehr"]["remaining"] == pytest.approx(ehr.remaining)
    # What `budget --json` prints reads back equal to the typed value's dict.
    assert json.loads(json.dumps(budget.to_dict())) == budget.to_dict()
    assert list(budget) == ["ehr", "pathmnist"]
    text = repr(budget)
    assert "\n" not in text and text.startswith("Budget(hospital-a: ehr ")
    assert "<table>" in budget._repr_html_()


def test_audit_trail_reads_entries_and_verification_together(tmp_path: Path) -> None:
    root = tmp_path / "hospital-a"
    log = AuditLog.open(root)
    log.append(Event.DENIED, request="r1", reason="<b>no</b>")
    log.append(Event.APPROVED, request="r2")

    trail = operator(root).audit()

    assert len(trail) == 2 and trail.verification.ok
    assert [e["event"] for e in trail] == ["denied", "approved"]
    assert repr(trail) == "AuditTrail(hospital-a: 2 entries, intact)"
    page = trail._repr_html_()
    assert "<b>no</b>" not in page and "&lt;b&gt;no&lt;/b&gt;" in page

    lines = log.path.read_text().splitlines()
    log.path.write_text(lines[1] + "\n" + lines[0] + "\n")
    broken = operator(root).audit()
    assert not broken.verification.ok and "FAILED verification" in repr(broken)
