"""The handle on one hospital's state: its name, folder, policy, ledger and audit log.

The runtime opens it for every call (reopened when the operator edits policy.toml), the
operator's projection reads the ledger and policy through it, and provisioning charges the
released dataset sizes to its ledger. It only opens files; it never runs a study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasites.privacy.ledger import Ledger
from datasites.site.audit import AuditLog
from datasites.site.paths import LEDGER_FILE
from datasites.site.policy import Policy


@dataclass(frozen=True)
class Hospital:
    """The datasite this process serves: its name, policy, ledger and audit log."""

    name: str
    root: Path
    policy: Policy
    ledger: Ledger
    audit: AuditLog

    @classmethod
    def open(cls, root: Path) -> Hospital:
        policy = Policy.load(root)
        ledger = Ledger(
            root / LEDGER_FILE, cap=policy.budget.epsilon_cap, delta=policy.budget.delta
        )
        audit = AuditLog.open(root)
        return cls(name=root.name, root=root, policy=policy, ledger=ledger, audit=audit)
