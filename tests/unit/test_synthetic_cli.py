"""`python -m synthetic` writes files that the real-format loaders read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from synthetic.__main__ import main
from synthetic.ehr import EHR_COLUMNS, IDENTIFIER_COLUMNS, load_ehr_csv
from synthetic.pathology import load_pathmnist_npz
from tests.conftest import REPO, _in_process


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The command itself, in a second interpreter: the entry point's wiring."""
    return subprocess.run(
        [sys.executable, "-m", "synthetic", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_ehr_file(tmp_path: Path) -> None:
    out = tmp_path / "ehr.csv"
    result = run("ehr", "--out", str(out), "--rows", "300", "--seed", "5")
    assert result.returncode == 0, result.stderr
    frame = load_ehr_csv(out)
    assert len(frame) == 300
    assert list(frame.columns) == list(EHR_COLUMNS) + list(IDENTIFIER_COLUMNS)
    assert "?" in out.read_text()


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    """The same `main` in this process (its exit code and output, as `run` returns them),
    without a second interpreter importing pandas again for each case."""
    return _in_process(main, args)


def test_ehr_file_without_identifiers_is_the_public_schema(tmp_path: Path) -> None:
    out = tmp_path / "ehr.csv"
    assert run_main("ehr", "--out", str(out), "--rows", "50", "--no-identifiers").returncode == 0
    assert list(load_ehr_csv(out).columns) == list(EHR_COLUMNS)


def test_pathmnist_file(tmp_path: Path) -> None:
    out = tmp_path / "pathmnist.npz"
    result = run_main("pathmnist", "--out", str(out), "--rows", "400", "--seed", "5")
    assert result.returncode == 0, result.stderr
    splits = load_pathmnist_npz(out)
    assert set(splits) == {"train", "val", "test"}
    assert len(splits["train"][1]) == 400 and len(splits["test"][1]) == 32


def test_bad_arguments_get_one_sentence(tmp_path: Path) -> None:
    result = run_main("ehr", "--out", str(tmp_path / "missing" / "x.csv"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_main("pathmnist", "--out", str(tmp_path / "x.npz"), "--rows", "0")
    assert result.returncode == 2 and "at least 1" in result.stderr
