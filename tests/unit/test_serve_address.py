"""`serve` after `init` needs no address: it takes the one init recorded in site.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from datasites.cli.main import _parser, _recorded_address
from datasites.site.paths import HospitalConfig, SiteSettings


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["serve", "--hospital", "hospital-a", *argv])


def test_the_recorded_address_fills_what_is_left_out(tmp_path: Path) -> None:
    config = HospitalConfig(name="hospital-a", port=1, data_dir=tmp_path)
    config.root.mkdir()
    SiteSettings("198.18.0.11", 8443, True, ("datasite.example.org",)).write(config)
    args = parse("--data-dir", str(tmp_path))
    assert _recorded_address(args) is None
    assert (args.host, args.port) == ("198.18.0.11", 8443)
    given = parse("--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", "9000")
    assert _recorded_address(given) is None and (given.host, given.port) == ("127.0.0.1", 9000)


def test_without_site_json_the_port_is_asked_for(tmp_path: Path) -> None:
    args = parse("--data-dir", str(tmp_path))
    assert "--port is needed" in (_recorded_address(args) or "")
    args = parse("--data-dir", str(tmp_path), "--port", "8081")
    assert _recorded_address(args) is None and (args.host, args.port) == ("127.0.0.1", 8081)
