"""What the operator reads back: the privacy budget and the audit trail, as typed values.

`Operator.budget()` and `Operator.audit()` return these instead of nested dicts, so a
notebook shows a table (`_repr_html_`), code reads attributes with types, and the command
line prints or dumps (`to_dict`) the same object.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from datasites.site.audit import Verification, format_entry


@dataclass(frozen=True)
class StudySpend:
    """One approved study on a dataset: what it asked for and what it has spent so far."""

    study_id: str
    scientist: str
    epsilon: float
    rounds: int
    noise_multiplier: float
    spent: float


@dataclass(frozen=True)
class LedgerEvent:
    """One charged release: a study's training round, evaluation or size release."""

    study_id: str
    kind: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class DatasetBudget:
    """One dataset's budget: the cap, what is spent (PLD; RDP as a cross-check; each part,
    which compose in parallel), what remains, and the studies and events behind it."""

    dataset: str
    cap: float
    spent: float
    spent_rdp: float
    parts: Mapping[str, float]
    studies: tuple[StudySpend, ...]
    events: tuple[LedgerEvent, ...]

    @property
    def remaining(self) -> float:
        return self.cap - self.spent

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["dataset"]
        out["parts"] = dict(self.parts)
        out["studies"] = [asdict(s) for s in self.studies]  # JSON's lists, not tuples
        out["events"] = [asdict(e) for e in self.events]
        out["remaining"] = self.remaining
        return out


@dataclass(frozen=True)
class Budget:
    """Every dataset's budget at one hospital, by dataset name (`budget["ehr"]`)."""

    hospital: str
    datasets: Mapping[str, DatasetBudget]

    def __getitem__(self, dataset: str) -> DatasetBudget:
        return self.datasets[dataset]

    def __iter__(self) -> Iterator[str]:
        return iter(self.datasets)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain JSON values, as `python -m datasites budget --json` prints them."""
        return {name: d.to_dict() for name, d in self.datasets.items()}

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{d.dataset} {d.spent:.2f}/{d.cap:g} ({len(d.studies)} studies)"
            for d in self.datasets.values()
        )
        return f"Budget({self.hospital}: {shown})"

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (
                    d.dataset,
                    f"{d.cap:g}",
                    f"{d.spent:.3f}",
                    f"{d.remaining:.3f}",
                    len(d.studies),
                    len(d.events),
                )
            )
            + "</tr>"
            for d in self.datasets.values()
        )
        head = "".join(
            f"<th>{h}</th>" for h in ("dataset", "cap", "spent", "remaining", "studies", "events")
        )
        return (
            f"<p>privacy budget of {html.escape(self.hospital)}</p>"
            f"<table><tr>{head}</tr>{rows}</table>"
        )


@dataclass(frozen=True)
class AuditTrail:
    """The audit log's entries, read together with the check of their hash chain."""

    hospital: str
    entries: tuple[dict[str, Any], ...]
    verification: Verification

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries)

    def __repr__(self) -> str:
        state = "intact" if self.verification.ok else "FAILED verification"
        return f"AuditTrail({self.hospital}: {len(self.entries)} entries, {state})"

    def _repr_html_(self) -> str:
        state = (
            "intact"
            if self.verification.ok
            else f"FAILED verification at entry {self.verification.first_bad}: "
            f"{self.verification.problem}"
        )
        rows = "".join(
            f"<tr><td>{html.escape(format_entry(entry))}</td></tr>" for entry in self.entries[-50:]
        )
        return (
            f"<p>audit log of {html.escape(self.hospital)}: {len(self.entries)} entries, "
            f"{html.escape(state)} (the last 50 shown)</p><table>{rows}</table>"
        )
