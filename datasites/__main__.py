"""The hospital's command line: `python -m datasites <command>`.

`serve` runs one datasite in the foreground (launch.py starts one per hospital); the
operator commands for reviewing requests build on the same entry point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasites.config import HospitalConfig

DEFAULT_DATA_DIR = ".datasites"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasites", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one hospital datasite on 127.0.0.1")
    serve.add_argument("--hospital", required=True, help="hospital name, e.g. hospital-a")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from datasites.server import serve

        try:
            config = HospitalConfig(name=args.hospital, port=args.port, data_dir=args.data_dir)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
