"""`python -m datasites scientists ...` without a datasite: the parser, the invitation's
default path, and input refused before any login."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from datasites.cli import scientists
from datasites.governance.accounts import invitation_path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    scientists.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["scientists", *argv])


def test_every_action_takes_the_hospital_and_data_dir() -> None:
    args = parse("add", "a@uni.org", "--name", "A", "--hospital", "hospital-a", "--data-dir", "d")
    assert (args.action, args.email, args.name, args.out) == ("add", "a@uni.org", "A", None)
    assert (args.hospital, args.data_dir) == ("hospital-a", Path("d"))
    assert parse("list", "--hospital", "h").data_dir == Path(".datasites")
    assert parse("remove", "a@uni.org", "--reason", "r", "--hospital", "h").reason == "r"
    reset = parse("reset-password", "a@uni.org", "--out", "x.json", "--hospital", "h")
    assert reset.out == Path("x.json")
    with pytest.raises(SystemExit):
        parse("list")  # --hospital is required


def test_the_default_invitation_path_is_one_safe_file_name(tmp_path: Path) -> None:
    root = tmp_path / "hospital-a"
    path = invitation_path(root, "Ana.P+x%y@Uni-Research.org")
    assert path == root / "invitations" / "hospital-a-ana.p_x_y-at-uni-research.org.invite.json"


def test_a_missing_datasite_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = scientists.run(parse("list", "--hospital", "hospital-a", "--data-dir", str(tmp_path)))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
