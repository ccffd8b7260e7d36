"""`python -m datasites partners`: registering the hospitals a secure study may name."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from datasites.cli import partners
from datasites.site.audit import AuditLog
from datasites.site.identity import Identity
from datasites.site.partners import load_partners

KEY_B = "ab" * 32


def run(data_dir: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    partners.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["partners", *argv[:1], "--hospital", "hospital-a",
                              "--data-dir", str(data_dir), *argv[1:]])  # fmt: skip
    return partners.run(args)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    Identity.load_or_create(tmp_path / "hospital-a" / "identity.json", "hospital-a")
    return tmp_path


def entries(data_dir: Path) -> list[dict]:
    lines = (data_dir / "hospital-a" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_add_list_remove_are_audited_and_owner_only(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = data_dir / "hospital-a"
    assert run(data_dir, "add", "hospital-b", KEY_B.upper()) == 0
    assert load_partners(root) == {"hospital-b": KEY_B}
    assert stat.S_IMODE((root / "partners.json").stat().st_mode) == 0o600
    assert run(data_dir, "add", "hospital-b", KEY_B) == 0  # the same again changes nothing
    assert run(data_dir, "list") == 0
    own = Identity.load_or_create(root / "identity.json", "hospital-a").verify_key
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"hospital-a  {own}  (this hospital)", f"hospital-b  {KEY_B}"]
    assert run(data_dir, "remove", "hospital-b") == 0
    assert load_partners(root) == {}
    events = [(e["event"], e.get("partner")) for e in entries(data_dir)]
    assert events == [("partner_added", "hospital-b"), ("partner_removed", "hospital-b")]
    assert AuditLog.open(root).verify().ok


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("add", "hospital-a", KEY_B), "cannot register itself"),
        (("add", "Hospital\x1b[2J", KEY_B), "lowercase letters"),
        (("add", "hospital-b", "12345"), "64 hex digits"),
        (("add", "hospital-b", "zz" * 32), "64 hex digits"),
    ],
)
def test_bad_partners_are_refused_in_one_sentence(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], words: str
) -> None:
    assert run(data_dir, *argv) == 2
    err = capsys.readouterr().err
    assert words in err and "\x1b" not in err and len(err.strip().splitlines()) == 1
    assert load_partners(data_dir / "hospital-a") == {}


def test_one_key_cannot_stand_for_two_hospitals(data_dir: Path) -> None:
    assert run(data_dir, "add", "hospital-b", KEY_B) == 0
    assert run(data_dir, "add", "hospital-c", KEY_B) == 2
    assert load_partners(data_dir / "hospital-a") == {"hospital-b": KEY_B}


def test_a_folder_without_a_datasite_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "list") == 2
    assert "holds no datasite" in capsys.readouterr().err
