"""`python -m datasites scientists add|list|remove|reset-password ... --hospital H`.

One account per scientist (`datasites.governance.accounts`). `add` and `reset-password`
write an invitation file holding the password and print only where it is: the password
never reaches the terminal, its scrollback or a shell log. Everything printed goes through
`datasites.cli.terminal.say`, because an email or name typed or pasted by someone else may
carry escape sequences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from datasites.cli.terminal import say

if TYPE_CHECKING:
    from datasites.governance.accounts import Accounts
    from datasites.server.quotas import Usage
    from datasites.site.policy import QuotaPolicy

DEFAULT_DATA_DIR = ".datasites"  # as datasites.cli.main


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `scientists` and its sub-commands to the `python -m datasites` parser."""
    parser = commands.add_parser(
        "scientists", help="scientist accounts: add, list, remove, quota, reset"
    )
    actions = parser.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help)
        sub.add_argument("--hospital", required=True, help="hospital name, e.g. hospital-a")
        sub.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
        return sub

    add = action("add", "create a scientist's account and write their invitation file")
    add.add_argument("email")
    add.add_argument("--name", default="", help="the scientist's name, shown to operators")
    add.add_argument("--out", type=Path, help="where to write the invitation (0600)")
    action("list", "the scientist accounts and how many requests each sent")
    remove = action("remove", "remove an account: login refused, pending requests denied")
    remove.add_argument("email")
    remove.add_argument("--reason", default="", help="added to the denial the scientist reads")
    quota = action("quota", "show one scientist's quotas, or raise (lower) them for that account")
    quota.add_argument("email")
    quota.add_argument("--stored-mb", type=float, help="bytes stored in all (action.set, blobs)")
    quota.add_argument("--object-mb", type=float, help="one stored object or blob")
    quota.add_argument("--pending", type=int, help="requests waiting for a decision")
    quota.add_argument("--per-hour", type=int, help="code and request submissions an hour")
    reset = action("reset-password", "a new password and invitation; the old one stops working")
    reset.add_argument("email")
    reset.add_argument("--out", type=Path, help="where to write the invitation (0600)")


def run(args: argparse.Namespace) -> int:
    """Carry out `scientists <action>`; 0 when done, 2 with one sentence when refused."""
    from datasites.governance.operator import OperatorError

    try:
        return _run(args)
    except OperatorError as error:
        say(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from datasites.governance.accounts import Accounts
    from datasites.governance.operator import Operator

    accounts = Accounts(Operator.open(args.data_dir, args.hospital))
    hospital = args.hospital
    if args.action == "add":
        issued = accounts.add(args.email, args.name, args.out)
        say(f"{hospital}: added scientist {issued.email}.")
        _handover(issued.invitation)
    elif args.action == "list":
        _list(accounts, hospital)
    elif args.action == "remove":
        removal = accounts.remove(args.email, args.reason)
        say(
            f"{hospital}: removed {removal.email}; its login and every call are refused, "
            f"{len(removal.denied)} pending requests denied."
        )
    elif args.action == "quota":
        quota = accounts.set_quota(
            args.email,
            max_stored_mb=args.stored_mb,
            max_object_mb=args.object_mb,
            max_pending_requests=args.pending,
            max_submissions_per_hour=args.per_hour,
        )
        say(f"{hospital}: quota of {args.email.lower()}: {quota_text(quota)}.")
    elif args.action == "reset-password":
        issued = accounts.reset_password(args.email, args.out)
        say(
            f"{hospital}: new password and signing key for {issued.email}; the old password "
            "no longer logs in, and every session opened before ends at its next call."
        )
        _handover(issued.invitation)
    return 0


def quota_text(quota: QuotaPolicy, usage: Usage | None = None) -> str:
    """A quota in words, with what the account used if known."""
    stored = f" ({usage.stored_bytes / 2**20:,.1f} used)" if usage else ""
    recent = f" ({usage.submissions_last_hour} in the last hour)" if usage else ""
    return (
        f"{quota.max_stored_mb:g} MB stored in all{stored}, {quota.max_object_mb:g} MB per "
        f"object, {quota.max_pending_requests} pending requests, "
        f"{quota.max_submissions_per_hour} submissions an hour{recent}"
    )


def _handover(path: Path) -> None:
    say(f"invitation: {path} (owner-only; it holds the password)")
    say(
        "hand it to the scientist out of band (in person, or an encrypted channel), "
        "then delete this copy."
    )


def _list(accounts: Accounts, hospital: str) -> None:
    found = accounts.scientists()
    if not found:
        say(f"{hospital}: no scientist accounts.")
        return
    say(f"{'email':<40}  {'name':<30}  {'role':<15}  requests")
    for a in found:
        say(f"{a.email:<40}  {a.name:<30}  {a.role:<15}  {a.requests}")
