"""What a mock looks like, so every side can tell it from private data.

The datasite publishes a mock next to each private asset (`datasites.server.assets`); the
scientist explores them, and syft runs approved code a second time on them, which the
runtime recognizes and answers without spending anything.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

MOCK_ID_START = 900_000_000  # EHR mock encounter ids start here; real ones stay below
MOCK_MARK = "mock"  # key set to True in image mocks


def is_mock(asset: Any) -> bool:
    """Whether `asset` is one of these mocks (EHR ids in the mock range, or the image
    mock's mark). syft runs approved code a second time on the mocks, to give the twin
    result a mock half; the runtime recognizes that run and spends nothing on it."""
    if isinstance(asset, dict):
        return asset.get(MOCK_MARK) is True
    ids = getattr(asset, "get", lambda _: None)("encounter_id")
    if ids is None or not len(ids):
        return False
    return bool(pd.to_numeric(ids, errors="coerce").ge(MOCK_ID_START).all())
