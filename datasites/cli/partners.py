"""`python -m datasites partners list|add|remove`: who this hospital runs secure studies with.

A secure study's plan names its partner hospitals by datasite verify key; this hospital
takes part only with the ones registered here (`datasites.site.partners`). Operators
exchange keys out of band: each reads its own with `partners list` (first line) or from
`init`'s output, and adds the others'. Files only: the datasite may be stopped or running
(the runtime reads the registry on every call).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasites.cli.terminal import say
from datasites.site.identity import Identity
from datasites.site.partners import PartnerError, load_partners, register_partner, remove_partner
from datasites.site.paths import IDENTITY_FILE

DEFAULT_DATA_DIR = ".datasites"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("partners", help="the hospitals this one runs secure studies with")
    actions = parser.add_subparsers(dest="partners_command", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help)
        sub.add_argument("--hospital", required=True, help="this hospital's name")
        sub.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
        return sub

    action("list", "this hospital's own verify key, then each registered partner's")
    add = action("add", "register a partner hospital by its datasite verify key")
    add.add_argument("name", help="the partner's hospital name, e.g. hospital-b")
    add.add_argument("key", help="its datasite verify key (64 hex digits)")
    remove = action("remove", "forget a partner; its secure studies are refused from now on")
    remove.add_argument("name")


def run(args: argparse.Namespace) -> int:
    root = Path(args.data_dir).resolve() / args.hospital
    if not (root / IDENTITY_FILE).exists():
        say(f"error: {root} holds no datasite; check --data-dir and --hospital.", file=sys.stderr)
        return 2
    try:
        return _act(args, root)
    except (PartnerError, ValueError) as error:
        say(f"error: {error}", file=sys.stderr)
        return 2


def _act(args: argparse.Namespace, root: Path) -> int:
    if args.partners_command == "list":
        own = Identity.load_or_create(root / IDENTITY_FILE, args.hospital).verify_key
        say(f"{args.hospital}  {own}  (this hospital)")
        for name, key in load_partners(root).items():
            say(f"{name}  {key}")
    elif args.partners_command == "add":
        changed = register_partner(root, args.hospital, args.name, args.key)
        done = "registered" if changed else "was already registered"
        say(f"{args.hospital}: {args.name} {done}.")
    else:
        gone = remove_partner(root, args.name)
        say(f"{args.hospital}: {args.name} {'removed' if gone else 'was not a partner'}.")
    return 0
