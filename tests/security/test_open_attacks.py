"""Attacks the last live audit found BROKEN and no fix has closed yet (issue 27).

Each test asserts what the hospital must guarantee and is marked as a strict expected
failure: it fails the suite the day the fix lands (remove the mark then), and meanwhile
documents the hole with a test that can run it.
"""

from __future__ import annotations

import secrets
import urllib.request
from urllib.error import HTTPError

import pytest

from tests.conftest import Launch

HOSPITAL = "hospital-a"


@pytest.mark.xfail(
    strict=True,
    reason="issue 27: a malformed API-map request gets a 500 and a 13 KB traceback in "
    "datasite.log per call, so a guest can grow the log without bound",
)
def test_a_guest_cannot_grow_the_datasite_log(guarded: Launch) -> None:
    url = guarded.hospital(HOSPITAL)["url"]
    log = guarded.data_dir / HOSPITAL / "datasite.log"
    before = log.stat().st_size
    statuses = []
    for _ in range(30):
        query = f"verify_key={secrets.token_hex(32)}&communication_protocol=x"
        try:
            with urllib.request.urlopen(f"{url}/api/v2/api?{query}", timeout=10) as reply:
                statuses.append(reply.status)
        except HTTPError as error:
            statuses.append(error.code)
    grown = log.stat().st_size - before
    assert 500 not in statuses, statuses
    assert grown < 30 * 200, f"datasite.log grew by {grown} bytes for 30 refused calls"
