"""A datasite that fails to start stops the whole launch: nothing left listening or written."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.conftest import run_launch
from tests.unit.test_launch_errors import BASE_PORT, args, assert_refused


@pytest.mark.live
def test_a_datasite_that_fails_to_start_stops_the_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    broken = data_dir / "hospital-b" / "identity.json"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        json.dumps(
            {
                "server_uid": "0" * 32,
                "signing_key": "not-a-key",
                "admin_email": "a@b.org",
                "admin_password": "x" * 30,
                "scientist_email": "s@b.org",
                "scientist_password": "y" * 30,
            }
        )
    )
    result = run_launch(*args(data_dir))
    assert_refused(result, "hospital-b", "datasite.log", code=1)
    assert "stopped." in result.stdout
    listening = [
        c
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in (BASE_PORT, BASE_PORT + 1)
    ]
    assert not listening
    assert not (data_dir / "credentials.json").exists()
