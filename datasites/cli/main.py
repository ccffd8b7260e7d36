"""The hospital's command line: `python -m datasites <command> --hospital H [--data-dir D]`.

`init` sets up one hospital on its own machine from its own files (or generated data):
its datasite provisioned, its policy defaults, its TLS certificate. `serve` runs one
datasite in the foreground (launch.py starts one per hospital on loopback; any other
address is served only over TLS);
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
from typing import TYPE_CHECKING

from datasites.cli import partners, scientists
from datasites.cli.terminal import say
from datasites.site.paths import DEFAULT_TLS_PORT, LOOPBACK

if TYPE_CHECKING:
    from datasites.local.setup import InitResult

DEFAULT_DATA_DIR = ".datasites"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasites", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--hospital", required=True, help="hospital name, e.g. hospital-a")
        sub.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
        return sub

    _init_parser(command("init", "set up one hospital from its own files, with its TLS files"))
    serve = command("serve", "run one hospital datasite (loopback, or TLS on any address)")
    where = "(default: what init recorded in site.json, else 127.0.0.1)"
    serve.add_argument("--host", help=f"address to serve on {where}")
    serve.add_argument("--port", type=int, help="port (default: what init recorded)")
    _tls_arguments(serve)
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
    scientists.add_parser(commands)
    partners.add_parser(commands)
    return parser


def _tls_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--tls-cert", type=Path, help="the hospital's own certificate (PEM)")
    sub.add_argument("--tls-key", type=Path, help="its private key (PEM, unencrypted)")


def _init_parser(init: argparse.ArgumentParser) -> None:
    init.add_argument("--ehr-csv", type=Path, help="the hospital's EHR extract (UCI schema)")
    init.add_argument("--pathmnist-npz", type=Path, help="its slide patches (MedMNIST npz)")
    init.add_argument("--host", default=LOOPBACK, help="address it will be served on")
    init.add_argument("--port", type=int, default=DEFAULT_TLS_PORT, help="port (8443)")
    _tls_arguments(init)
    init.add_argument(
        "--dns-name",
        action="append",
        default=[],
        dest="dns_names",
        help="a DNS name it is reached at (repeatable; the first is its URL's host)",
    )
    init.add_argument("--scale", default="small", help="generated data: small, medium or full")
    init.add_argument("--seed", type=int, default=0, help="seed of generated data and splits")
    init.add_argument("--alpha", type=float, default=0.5, help=argparse.SUPPRESS)


def _init(args: argparse.Namespace) -> int:
    from datasites.local.process import DatasiteStartError
    from datasites.local.setup import InitSettings, SetupError, init_hospital
    from synthetic.errors import DataFormatError

    try:
        settings = InitSettings(
            hospital=args.hospital,
            data_dir=args.data_dir,
            ehr_csv=args.ehr_csv,
            pathmnist_npz=args.pathmnist_npz,
            host=args.host,
            port=args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            dns_names=tuple(args.dns_names),
            scale=args.scale,
            seed=args.seed,
            alpha=args.alpha,
        )
        result = init_hospital(settings, log=say)
    except (SetupError, DataFormatError) as error:
        say(f"error: {error}", file=sys.stderr)
        return 2
    except DatasiteStartError as error:
        say(f"error: {error}", file=sys.stderr)
        return 1
    for line in _init_lines(result):
        say(line)
    return 0


def _init_lines(result: InitResult) -> list[str]:
    """What the operator hands on: the verify key to partners, the fingerprint (and the
    certificate) to scientists, and how to serve."""
    config, tls = result.config, result.tls
    datasets = ", ".join(
        f"{dataset} {assets['train']['rows']:,}+{assets['test']['rows']:,} rows"
        for dataset, assets in result.manifest.items()
    )
    origin = "the operator's own" if result.own_certificate else "self-signed"
    return [
        f"{config.name} is set up in {config.root}: {datasets}.",
        f"  URL: {result.site.url}",
        f"  datasite verify key: {result.verify_key}",
        f"  TLS certificate ({origin}): {config.tls_cert_path}, valid until "
        f"{tls.not_after:%Y-%m-%d}, for {', '.join(tls.names())}",
        f"  certificate SHA-256 fingerprint: {tls.fingerprint}",
        f"serve it with: python -m datasites serve --hospital {config.name} --data-dir "
        f"{config.data_dir} --host {config.host} --port {config.port}",
    ]


def _recorded_address(args: argparse.Namespace) -> str | None:
    """Fill `--host`/`--port` left out from the hospital's site.json (written by init);
    an error sentence if the port is still unknown."""
    from datasites.site.paths import HospitalConfig, SiteSettings

    recorded = None
    if args.host is None or args.port is None:
        try:
            probe = HospitalConfig(name=args.hospital, port=1, data_dir=args.data_dir)
            recorded = SiteSettings.read(probe)
        except ValueError:
            recorded = None
    if args.host is None:
        args.host = recorded.host if recorded else LOOPBACK
    if args.port is None:
        if recorded is None:
            return "--port is needed: this hospital has no site.json from init to take it from."
        args.port = recorded.port
    return None


def _serve(args: argparse.Namespace) -> int:
    from datasites.site.tls import install_pair, serving_config

    missing = _recorded_address(args)
    if missing:
        say(f"error: {missing}", file=sys.stderr)
        return 2
    try:
        config, given = serving_config(
            args.hospital, args.data_dir, args.host, args.port, args.tls_cert, args.tls_key
        )
    except ValueError as error:  # TLSError is one: every refusal comes before any bind
        say(f"error: {error}", file=sys.stderr)
        return 2
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # private from the start
    if given is not None:
        install_pair(config, given)

    from datasites.server.serve import serve

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
        say(
            json.dumps(review.to_dict(), indent=2)
            if args.json
            else report.review_text(review, op.root)
        )
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
    if args.command == "init":
        return _init(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "scientists":
        return scientists.run(args)
    if args.command == "partners":
        return partners.run(args)
    if args.command == "rotate-keys":  # the datasite is stopped: no operator login
        from datasites.server.rotate import cli

        return cli(args.data_dir, args.hospital)
    from datasites.governance.operator import OperatorError

    try:
        return _operate(args)
    except OperatorError as error:
        say(f"error: {error}", file=sys.stderr)
        return 2
