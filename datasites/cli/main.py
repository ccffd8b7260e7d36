"""The hospital's command line: `python -m datasites <command> --hospital H [--data-dir D]`.

`serve` runs one datasite in the foreground (launch.py starts one per hospital);
`requests`, `show`, `approve`, `deny`, `budget`, `audit` and `watch` are the operator's
commands, the same as the `Operator` class offers in Python. Everything they print goes
through `datasites.cli.terminal.say`: much of it was written by the scientist, and an escape
sequence in it must be shown, not obeyed. `rotate-keys` (datasite stopped) gives the
hospital new signing keys and passwords, applied at its next start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasites.cli.terminal import say
from datasites.site.paths import HospitalConfig

DEFAULT_DATA_DIR = ".datasites"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasites", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--hospital", required=True, help="hospital name, e.g. hospital-a")
        sub.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
        return sub

    command("serve", "run one hospital datasite on 127.0.0.1").add_argument(
        "--port", type=int, required=True
    )
    command("requests", "list code requests with their verdicts and plans")
    show = command("show", "everything about one request: verdict, plan, cost, code, diff")
    show.add_argument("id", help="request id (or prefix)")
    show.add_argument("--json", action="store_true")
    approve = command("approve", "approve a request (refused for custom code, policy, cap)")
    approve.add_argument("id", help="request id (or prefix)")
    custom_help = "approve code that is not the vetted template (the override is recorded)"
    approve.add_argument("--allow-custom-code", action="store_true", help=custom_help)
    deny = command("deny", "deny a request, with a reason the scientist sees")
    deny.add_argument("id", help="request id (or prefix)")
    deny.add_argument("--reason", required=True)
    command("budget", "epsilon cap, spent and remaining per dataset").add_argument(
        "--json", action="store_true"
    )
    audit = command("audit", "print the audit log; --verify checks its hash chain")
    audit.add_argument("--verify", action="store_true")
    audit.add_argument("--json", action="store_true", help="entries as JSON lines")
    watch = command("watch", "approve what policy.toml allows, leave the rest for a person")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    watch.add_argument("--once", action="store_true", help="decide pending requests, then exit")
    command("rotate-keys", "new signing keys and passwords for a stopped datasite")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from datasites.server.serve import serve

    try:
        config = HospitalConfig(name=args.hospital, port=args.port, data_dir=args.data_dir)
    except ValueError as error:
        say(f"error: {error}", file=sys.stderr)
        return 2
    serve(config)
    return 0


def _operate(args: argparse.Namespace) -> int:
    from datasites.cli import report
    from datasites.governance.operator import Operator

    if args.command == "audit":  # reads the hospital's files; the datasite may be down
        return report.audit(args.data_dir / args.hospital, args.verify, args.json)
    op = Operator.open(args.data_dir, args.hospital)
    if args.command == "requests":
        views = op.requests()
        if not views:
            say(f"{args.hospital}: no requests.")
        for v in views:
            say(f"{v.id[:12]}  {v.status:<8}  {v.scientist:<28}  {v.summary()}")
    elif args.command == "show":
        review = op.show(args.id)
        say(json.dumps(review.to_dict(), indent=2) if args.json else report.review_text(review))
    elif args.command == "approve":
        say(op.approve_line(args.id, allow_custom_code=args.allow_custom_code))
    elif args.command == "deny":
        v = op.deny(args.id, args.reason)
        say(f"{args.hospital} denied {v.id[:12]} from {v.scientist}: {args.reason}")
    elif args.command == "budget":
        budget = op.budget()
        say(json.dumps(budget.to_dict(), indent=2) if args.json else report.budget(budget))
    elif args.command == "watch":
        return report.watch(op, args.hospital, args.interval, args.once)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "rotate-keys":  # the datasite is stopped: no operator login
        from datasites.server.rotate import cli

        return cli(args.data_dir, args.hospital)
    from datasites.governance.operator import OperatorError

    try:
        return _operate(args)
    except OperatorError as error:
        say(f"error: {error}", file=sys.stderr)
        return 2
