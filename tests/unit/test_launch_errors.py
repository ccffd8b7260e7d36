"""Bad input to launch.py: one clear sentence, and nothing left running or half-written.

These inputs are refused before any process starts, so launch.py's `main` runs in this
process (`launch_in_process`); the refusal that needs a started datasite is in
tests/integration/test_launch_failure.py.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from synthetic.ehr import generate_ehr
from synthetic.pathology import generate_pathmnist
from tests.conftest import launch_in_process as run_launch

# Overridable, as the session's FEDERATION_TEST_BASE_PORT, for two runs on one machine.
BASE_PORT = int(os.environ.get("LAUNCH_ERRORS_TEST_BASE_PORT", "18381"))


def assert_refused(result, *needles: str, code: int = 2) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in message, message


def assert_nothing_written(data_dir: Path) -> None:
    left = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []
    assert not [n for n in left if n.startswith("hospital-") or n.endswith(".json")], left


def args(data_dir: Path, *extra: str) -> list[str]:
    return ["--base-port", str(BASE_PORT), "--hospitals", "2", "--data-dir", str(data_dir), *extra]


def test_hospitals_below_one(tmp_path: Path) -> None:
    result = run_launch(*args(tmp_path / "d"), "--hospitals", "0")
    assert_refused(result, "--hospitals must be at least 1")
    assert not (tmp_path / "d").exists()


def test_unknown_population_is_refused_with_the_names(tmp_path: Path) -> None:
    result = run_launch(*args(tmp_path / "d"), "--population", "nowhere\x1b[2J")
    assert_refused(result, "--population must be one of default, weak")
    assert "\x1b" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_a_population_shapes_the_synthetic_tables() -> None:
    from datasites.local.seeding import DataPlan, synthetic_ehr

    def early_share(population: str) -> float:
        plan = DataPlan(hospitals=2, scale="small", seed=3, alpha=0.5, population=population)
        table = synthetic_ehr(plan, 0)
        return float((table["readmitted"] == "<30").mean())

    assert early_share("common") > early_share("default") + 0.03
    assert early_share("rare") < early_share("default")


def test_the_demo_scale_triples_the_ehr_tables_only() -> None:
    from datasites.local.seeding import DataPlan

    small = DataPlan(hospitals=5, scale="small", seed=0, alpha=0.5).totals()
    medium = DataPlan(hospitals=5, scale="medium", seed=0, alpha=0.5).totals()
    assert medium["encounters"] == 3 * small["encounters"] == 60_000
    assert {k: v for k, v in medium.items() if k != "encounters"} == {
        k: v for k, v in small.items() if k != "encounters"
    }


def test_demo_defaults_to_the_medium_scale_and_a_named_scale_wins() -> None:
    from launch import parse_args

    assert parse_args(["--demo"])[0].scale == "medium"
    assert parse_args(["--demo", "--scale", "small"])[0].scale == "small"
    assert parse_args([])[0].scale == "small"


def test_unknown_scale_is_refused_with_the_choices(tmp_path: Path) -> None:
    result = run_launch(*args(tmp_path / "d", "--scale", "huge\x1b[2J"))
    assert_refused(result, "--scale must be one of small, medium, full")
    assert "\x1b" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_csv_missing_columns_are_named(tmp_path: Path) -> None:
    csv = tmp_path / "diabetic_data.csv"
    frame = generate_ehr(50, seed=1, identifiers=False).drop(columns=["race", "A1Cresult"])
    frame.to_csv(csv, index=False, na_rep="?")
    result = run_launch(*args(tmp_path / "d", "--ehr-csv", str(csv)))
    assert_refused(result, "race", "A1Cresult")
    assert_nothing_written(tmp_path / "d")


def _npz(path: Path, **overrides: np.ndarray) -> Path:
    images, labels = generate_pathmnist(20, seed=1)
    arrays = {
        f"{s}_{k}": v
        for s in ("train", "val", "test")
        for k, v in (("images", images), ("labels", labels))
    }
    arrays.update(overrides)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD_NPZ = {
    "missing key": ({"test_labels": None}, "test_labels"),
    "wrong shape": ({"train_images": np.zeros((20, 32, 32, 3), np.uint8)}, "train_images"),
    "wrong dtype": ({"train_images": np.zeros((20, 28, 28, 3), np.float32)}, "uint8"),
    "label out of range": ({"train_labels": np.full((20, 1), 9, np.uint8)}, "0-8"),
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_bad_npz_is_refused(tmp_path: Path, case: str) -> None:
    overrides, needle = BAD_NPZ[case]
    npz = _npz(tmp_path / "pathmnist.npz", **overrides)
    result = run_launch(*args(tmp_path / "d", "--pathmnist-npz", str(npz)))
    assert_refused(result, needle)
    assert_nothing_written(tmp_path / "d")


def test_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", BASE_PORT + 1))
        taken.listen()
        result = run_launch(*args(tmp_path / "d"))
    assert_refused(result, f"port {BASE_PORT + 1}", "hospital-b")
    assert_nothing_written(tmp_path / "d")


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_launch(*args(blocker / "d"))
    assert_refused(result, "cannot write to data dir", "--data-dir")


def test_missing_input_file(tmp_path: Path) -> None:
    result = run_launch(*args(tmp_path / "d", "--ehr-csv", str(tmp_path / "nope.csv")))
    assert_refused(result, "nope.csv", "does not exist")


def test_relaunch_with_other_data_options_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "launch.json").write_text(
        json.dumps(
            {
                "hospitals": 2,
                "scale": "small",
                "seed": 0,
                "alpha": 0.5,
                "ehr_csv": None,
                "pathmnist_npz": None,
            }
        )
    )
    result = run_launch(*args(data_dir, "--seed", "5"))
    assert_refused(result, "--seed", "--reset")
    assert not list(data_dir.glob("hospital-*"))


def test_csv_with_text_in_integer_column(tmp_path: Path) -> None:
    frame = generate_ehr(30, seed=2, identifiers=False)
    frame["time_in_hospital"] = frame["time_in_hospital"].astype(object)
    frame.loc[3, "time_in_hospital"] = "four"
    csv = tmp_path / "bad.csv"
    frame.to_csv(csv, index=False, na_rep="?")
    result = run_launch(*args(tmp_path / "d", "--ehr-csv", str(csv)))
    assert_refused(result, "time_in_hospital")
    assert "four" not in result.stderr
    assert_nothing_written(tmp_path / "d")
