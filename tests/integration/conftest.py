"""Fixtures shared by the integration tests (the session federation is in tests/conftest)."""

from __future__ import annotations

import pytest

from datasites.governance.operator import Operator
from tests.conftest import Launch


@pytest.fixture(scope="module")
def operators(federation: Launch) -> dict[str, Operator]:
    """Each session hospital's operator, opened on its folder (module-scoped)."""
    names = [h["name"] for h in federation.credentials()["hospitals"]]
    return {name: Operator.open(federation.data_dir, name) for name in names}
