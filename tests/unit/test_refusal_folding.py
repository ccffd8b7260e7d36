"""A folded refusal entry names what it folded (found live: past 64 refusals a minute, an
account's probes of another study were counted under a decoy's study id, never named)."""

from __future__ import annotations

from pathlib import Path

from datasites.server.refusals import NAMED_PER_FIELD, SOURCE, RefusalAudit
from datasites.site.audit import AuditLog, Event


def test_a_folded_entry_lists_the_studies_and_reasons_it_counts(tmp_path: Path) -> None:
    audit = RefusalAudit(tmp_path / "audit.jsonl", interval=3600, kinds_per_source=1)
    token = SOURCE.set("account:mallory@evil.org")
    try:
        for i in range(6):  # 4 written in full (1 kind x 4 for an account), then folded
            audit.append(Event.REFUSED, layer="route", study=f"decoy-{i}", reason="no study")
        for _ in range(3):
            audit.append(Event.REFUSED, layer="route", study="victim-study", reason="unmask")
    finally:
        SOURCE.reset(token)
    audit.close()
    entries = [e for e in AuditLog.open(tmp_path).entries() if e["event"] == "refused"]
    folded = [e for e in entries if "count" in e]
    assert len(folded) == 1, entries
    assert "victim-study" in folded[0]["studies"], folded[0]
    assert set(folded[0]["reasons"]) == {"no study", "unmask"}, folded[0]
    assert len(folded[0]["studies"]) <= NAMED_PER_FIELD
