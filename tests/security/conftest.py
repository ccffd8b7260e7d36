"""A federation of its own for the attack-path suite: two hospitals with a tight budget.

The attacks need a cap they can actually reach (attack 7) and a clean audit log to read
their traces from, without spending the budget the main session's studies rely on. The
datasites start once per test run, like the main session's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datasites.governance.operator import Operator
from datasites.site.audit import AuditLog
from scientist import Federation
from tests.conftest import EARLY, Launch, Starting, admin_login, begin_launch

# Overridable, as the main session's FEDERATION_TEST_BASE_PORT, for two runs on one machine.
GUARDED_BASE_PORT = int(os.environ.get("GUARDED_TEST_BASE_PORT", "18481"))
GUARDED_CAP = 1.8
HOSPITALS = ("hospital-a", "hospital-b")
POLICY = f"""
[budget]
epsilon_cap = {GUARDED_CAP}

[study]
max_epsilon = 1.5
"""


def begin_guarded(tmp_path_factory: pytest.TempPathFactory) -> Starting:
    """Start the guarded federation's launch.py, without waiting for it."""
    data_dir = tmp_path_factory.mktemp("guarded") / "datasites"
    for name in HOSPITALS:
        (data_dir / name).mkdir(parents=True)
        (data_dir / name / "policy.toml").write_text(POLICY)
    return begin_launch(
        "--hospitals",
        str(len(HOSPITALS)),
        "--base-port",
        str(GUARDED_BASE_PORT),
        "--seed",
        "11",
        data_dir=data_dir,
    )


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """Started once per run: begun in the background when the session federation came up
    (tests/conftest.py, EARLY), or here when this run has no session federation."""
    starting = EARLY.pop("guarded", None) or begin_guarded(tmp_path_factory)
    launch = starting.wait()
    yield launch
    launch.stop()


@pytest.fixture(scope="session")
def scientist(guarded: Launch, tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """The attacker: the data scientist's own accounts, nothing more."""
    return Federation.connect(guarded.data_dir, workdir=tmp_path_factory.mktemp("attacks"))


@pytest.fixture(scope="session")
def operators(guarded: Launch) -> dict[str, Operator]:
    return {name: Operator.open(guarded.data_dir, name, name="ops") for name in HOSPITALS}


@pytest.fixture(scope="session")
def admins(guarded: Launch) -> dict[str, Any]:
    """Operator logins, used only to learn private values the attacks must not get."""
    return {name: admin_login(guarded, name) for name in HOSPITALS}


@pytest.fixture
def audit_since(guarded: Launch) -> Callable[[str], Callable[[], list[dict[str, Any]]]]:
    """audit_since(hospital)() -> the entries that hospital logged after this call."""

    def mark(hospital: str) -> Callable[[], list[dict[str, Any]]]:
        log = AuditLog.open(Path(guarded.data_dir) / hospital)
        start = len(log.entries())
        return lambda: log.entries()[start:]

    return mark
