"""Launch from real-format files, stop with SIGINT, relaunch: state survives, nothing leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, Launch, admin_login, start_launch

# Overridable, as the session's FEDERATION_TEST_BASE_PORT, for two runs on one machine.
BASE_PORT = int(os.environ.get("LIFECYCLE_TEST_BASE_PORT", "18281"))
HOSPITALS = 2
PORTS = [BASE_PORT + i for i in range(HOSPITALS)]

pytestmark = pytest.mark.live  # its launches are its own


def listeners(ports: list[int]) -> dict[int, int]:
    return {
        c.laddr.port: c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
    }


def write_real_format_files(folder: Path) -> tuple[Path, Path]:
    csv, npz = folder / "diabetic_data.csv", folder / "pathmnist.npz"
    for kind, out, rows in (("ehr", csv, "3000"), ("pathmnist", npz, "1500")):
        extra = ["--no-identifiers"] if kind == "ehr" else []
        subprocess.run(
            [
                sys.executable,
                "-m",
                "synthetic",
                kind,
                "--out",
                str(out),
                "--rows",
                rows,
                "--seed",
                "3",
                *extra,
            ],
            check=True,
            cwd=REPO,
        )
    return csv, npz


def hosted(launch: Launch) -> dict[str, list[str]]:
    result = {}
    for h in launch.credentials()["hospitals"]:
        admin = admin_login(launch, h["name"])
        result[h["name"]] = sorted(d.name for d in admin.datasets.get_all())
    return result


def patients(launch: Launch) -> list[set[int]]:
    out = []
    for h in launch.credentials()["hospitals"]:
        admin = admin_login(launch, h["name"])
        out.append(set(admin.datasets["ehr"].assets["train"].data["patient_nbr"]))
    return out


def test_real_files_relaunch_and_sigint(tmp_path: Path) -> None:
    csv, npz = write_real_format_files(tmp_path)
    args = (
        "--hospitals",
        str(HOSPITALS),
        "--base-port",
        str(BASE_PORT),
        "--ehr-csv",
        str(csv),
        "--pathmnist-npz",
        str(npz),
    )
    data_dir = tmp_path / "state"

    first = start_launch(*args, "--reset", data_dir=data_dir)
    pids = listeners(PORTS)
    assert sorted(pids) == PORTS
    before = first.credentials()
    split = patients(first)
    assert all(split) and not split[0] & split[1]
    assert "real EHR, real images" in first.output
    assert first.stop(signal.SIGINT) == 0
    assert "stopped." in first.output
    assert not listeners(PORTS)
    assert not any(psutil.pid_exists(pid) for pid in pids.values())

    second = start_launch(*args, data_dir=data_dir)
    try:
        assert second.credentials() == before
        assert hosted(second) == {h["name"]: ["ehr", "pathmnist"] for h in before["hospitals"]}
        assert patients(second) == split
    finally:
        assert second.stop(signal.SIGTERM) == 0
    assert not listeners(PORTS)


# A launch started with SIGINT ignored (`nohup ... &` from a script) still stops on SIGINT:
# tests/security/test_store.py starts its launches that way, and each restart there asserts
# that SIGINT stopped the launch with exit code 0.
