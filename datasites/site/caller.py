"""Who is calling: the account a study's code runs for, set by the datasite, never by a plan.

A study is owned by the account syft authenticated: the one whose signing key submitted
the approved code. Everything the runtime keeps for a study (its ledger record, releases,
secure-phase answers, charges) is keyed by (owner, study id), and a plan's own `scientist`
field must name that same account (issue 27: a plan could name someone else, and a second
account reusing a study id got the first one's releases).

The datasite sets the account around each run of approved code
(`datasites.server.code_owner`); the runtime reads it with `current_account`. It is a
context variable, so concurrent calls in other threads each see their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACCOUNT: ContextVar[str | None] = ContextVar("datasites_account", default=None)


class NoAccount(RuntimeError):
    """Approved code ran without the datasite naming its account."""


@contextmanager
def acting_as(email: str) -> Iterator[None]:
    """Run the block for the account `email` (the datasite's hook; tests too)."""
    if not isinstance(email, str) or not email:
        raise ValueError("an account is a non-empty email string.")
    token = _ACCOUNT.set(email)
    try:
        yield
    finally:
        _ACCOUNT.reset(token)


def current_account() -> str:
    """The account the running code belongs to; NoAccount outside a datasite's code run."""
    account = _ACCOUNT.get()
    if account is None:
        raise NoAccount("the runtime runs only inside a datasite's run of approved code.")
    return account
