"""A hospital's trusted code: its datasite, assets and mocks, the DP runtime, the privacy
ledger, the audit log and the operator's commands. Nothing here imports the scientist's
library.

`from datasites import Operator` is the notebook entry point for operators; it is imported
lazily so that starting a datasite does not pay for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Operator"]


def __getattr__(name: str) -> Any:
    if name == "Operator":
        from datasites.governance.operator import Operator

        return Operator
    raise AttributeError(f"module 'datasites' has no attribute {name!r}")
