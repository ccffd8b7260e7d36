"""Scientist accounts, one per person: add, list, remove, reset a password.

A hospital gives each scientist their own syft account (role DATA_SCIENTIST) instead of one
shared login, so that every request, approval and audit entry names a person, the site
policy's `[auto_approve] scientists` list can trust one person and not another, and one
person's access can end without touching anyone else's. `python -m datasites scientists ...`
calls this module; a notebook can too, with an `Operator`.

- `add` creates the account with a random strong password and writes an invitation
  (`datasites.contract.invitation`): the hospital's name, URL and TLS certificate, the
  email and password, owner-only, for the operator to hand over out of band. The password
  is never printed, logged or audited; the invitation file is its only copy.
- `remove` deletes the syft account, so its login is refused and every call signed with its
  key (a session that logged in before) finds no account: the datasite's guard answers
  such a caller as a guest, which may only read the server's metadata
  (`datasites.server.guard`), so a running study is refused at its next call. Its pending
  requests are denied with the reason "scientist account removed". Only scientist accounts
  are removed here: the operator's (admin) account never is.
- `set_quota` raises (or lowers) one scientist's quotas (`policy.toml [quota]`: bytes stored,
  per object, pending requests, submissions an hour), kept in `<hospital>/quotas.json`.
- `reset_password` gives the account a new random password, a new signing key and a new
  invitation; the old password stops working at once, and so does every session opened
  before (syft authenticates calls by key, not password, so the key is rotated as
  `rotate-keys` does for the whole datasite, `datasites.server.rotate.rekey_account`): its
  next call is answered as a guest's. What the account owns follows the new key.

Emails are kept lowercase (syft lowercases the domain part itself), so one person cannot
get two accounts by changing case; write them lowercase in `policy.toml` too, which compares
them exactly. Every change is one entry in the hospital's audit log, with the email and
never the password.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasites.contract.invitation import INVITATION_SUFFIX, Invitation, InvitationError
from datasites.contract.syft_io import PENDING, quiet, request_status, syft_message
from datasites.contract.untrusted import shown
from datasites.governance.operator import OperatorError
from datasites.site.audit import Event
from datasites.site.identity import strong_password
from datasites.site.paths import INVITATIONS_DIR, TLS_CERT_FILE, TLS_DIR
from datasites.site.policy import QuotaPolicy

if TYPE_CHECKING:
    from datasites.governance.operator import Operator

SCIENTIST_ROLE = "DATA_SCIENTIST"
REMOVED_REASON = "scientist account removed"
MAX_REASON_CHARS = 300
_UNSAFE_IN_FILE_NAME = re.compile(r"[^a-z0-9._-]")


class AccountError(OperatorError):
    """An account change that was refused; one sentence says what was wrong and what to do."""


@dataclass(frozen=True)
class Account:
    """One scientist account as `scientists list` shows it."""

    email: str
    name: str
    role: str
    requests: int  # code requests this account sent, whatever their status


@dataclass(frozen=True)
class Issued:
    """An account that got a password (added or reset), and where its invitation is."""

    email: str
    invitation: Path


@dataclass(frozen=True)
class Removal:
    """A removed account and the pending requests that were denied with it."""

    email: str
    denied: tuple[str, ...]  # request ids


def invitation_path(root: Path, email: str) -> Path:
    """Where `add` writes an invitation by default: `<root>/invitations/<hospital>-<email>`,
    with every character a file name should not hold replaced by `_`."""
    safe = _UNSAFE_IN_FILE_NAME.sub("_", email.lower().replace("@", "-at-"))
    return root / INVITATIONS_DIR / f"{root.name}-{safe}{INVITATION_SUFFIX}"


class Accounts:
    """The scientist accounts of the hospital `op` operates."""

    def __init__(self, op: Operator) -> None:
        self.op = op

    @property
    def hospital(self) -> str:
        return self.op.root.name

    # -- reading -----------------------------------------------------------------------

    def scientists(self) -> list[Account]:
        """Every scientist account (never the operator's), by email, with its requests."""
        counts: dict[str, int] = {}
        with quiet():
            requests = list(self.op.client.requests)
        for request in requests:
            email = str(getattr(request, "requesting_user_email", "") or "").lower()
            counts[email] = counts.get(email, 0) + 1
        return [
            Account(_email(u), str(u.name), _role(u), counts.get(_email(u), 0))
            for u in sorted(self._users(), key=_email)
            if _role(u) == SCIENTIST_ROLE
        ]

    def _users(self) -> list[Any]:
        with quiet():
            users = self.op.client.users.get_all()
        if not isinstance(users, list):
            raise AccountError(f"{self.hospital} did not list its accounts: {_reason(users)}")
        return users

    def _user(self, email: str) -> Any | None:
        return next((u for u in self._users() if _email(u) == email), None)

    def _scientist(self, email: str) -> Any:
        """The scientist account of `email`; refused for none and for any other role."""
        email = _checked_email(email)
        user = self._user(email)
        if user is None:
            raise AccountError(
                f"{self.hospital} has no account {email}; see python -m datasites scientists list."
            )
        if _role(user) != SCIENTIST_ROLE:
            raise AccountError(
                f"{email} is {self.hospital}'s {_role(user).lower()} account, not a scientist's; "
                "only scientist accounts are managed with this command."
            )
        return user

    # -- changes -----------------------------------------------------------------------

    def add(self, email: str, name: str = "", out: Path | None = None) -> Issued:
        """Create the account and write its invitation (0600); the password is only there."""
        email = _checked_email(email)
        password = strong_password()
        invitation = self._invitation(email, password, name)
        if self._user(email) is not None:
            raise AccountError(
                f"{email} already has an account at {self.hospital}; use "
                "scientists reset-password for a new invitation."
            )
        path = self._target(email, out)
        self._create(email, name or email, password)
        try:
            invitation.write(path)
        except OSError as error:
            self._delete(self._scientist(email))
            raise AccountError(
                f"could not write the invitation {path} ({error.strerror}), so the account "
                "was not kept; choose a writable --out."
            ) from None
        self.op.audit_log.append(
            Event.ACCOUNT_ADDED,
            user=email,
            name=name,
            role=SCIENTIST_ROLE,
            operator=self.op.name,
            invitation=str(path),
        )
        return Issued(email, path)

    def reset_password(self, email: str, out: Path | None = None) -> Issued:
        """A new random password and a new invitation; the old password is refused from now."""
        user = self._scientist(email)
        email = _email(user)
        password = strong_password()
        invitation = self._invitation(email, password, str(user.name))
        path = self._target(email, out)
        with quiet():
            result = _call(
                lambda: self.op.client.api.services.user.update(uid=user.id, password=password)
            )
        if _failed(result):
            raise AccountError(f"{self.hospital} refused the new password: {_reason(result)}")
        self._rekey(email)
        invitation.write(path)
        self.op.audit_log.append(
            Event.PASSWORD_RESET,
            user=email,
            operator=self.op.name,
            invitation=str(path),
            signing_key="rotated: open sessions ended",
        )
        return Issued(email, path)

    def _rekey(self, email: str) -> None:
        """A new signing key for the account, so that sessions opened before end."""
        from datasites.server.rotate import RotationError, rekey_account

        try:
            done = rekey_account(self.op.root, email)
        except (RotationError, OSError) as error:
            done, why = False, str(error)
        else:
            why = "the account was not in its store"
        if not done:
            raise AccountError(
                f"{email} has a new password but its signing key was not rotated ({why}), so "
                "a session opened before may go on; run scientists reset-password again."
            )

    def set_quota(self, email: str, **values: float) -> QuotaPolicy:
        """Set the scientist's own quotas (policy.toml's `[quota]` keys); the others keep the
        policy's. Without values, only read them. The guard applies them at the next call."""
        from datasites.site.policy import PolicyError, write_quota

        email = _email(self._scientist(email))
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self.op.hospital.policy.quota_for(self.op.root, email)
        try:
            quota = write_quota(self.op.root, email, **values)
        except PolicyError as error:
            raise AccountError(f"the quota was not changed: {error}") from None
        self.op.audit_log.append(
            Event.POLICY_DECISION,
            change="quota",
            user=email,
            operator=self.op.name,
            **{k: values[k] for k in sorted(values)},
        )
        return quota

    def remove(self, email: str, reason: str = "") -> Removal:
        """Delete the account (its login and every call it signs are refused from now), then
        deny its pending requests with the reason."""
        reason = _checked_reason(reason)
        user = self._scientist(email)
        email = _email(user)
        self._delete(user)
        why = f"{REMOVED_REASON}: {reason}" if reason else REMOVED_REASON
        denied = tuple(self._deny_pending(email, why))
        self.op.audit_log.append(
            Event.ACCOUNT_REMOVED,
            user=email,
            operator=self.op.name,
            reason=why,
            denied=list(denied),
        )
        return Removal(email, denied)

    # -- helpers -----------------------------------------------------------------------

    def _invitation(self, email: str, password: str, name: str) -> Invitation:
        """The invitation, built (and so checked, every field) before syft is asked."""
        if not self.op.url:
            raise AccountError("this operator does not know its datasite's URL; use Operator.open.")
        try:
            return Invitation(
                hospital=self.hospital,
                url=self.op.url,
                email=email,
                password=password,
                certificate_pem=self._certificate(),
                name=name,
            )
        except InvitationError as error:
            raise AccountError(f"cannot invite {_shown(email)}: {error}") from None

    def _certificate(self) -> str | None:
        """The PEM a scientist must pin: the hospital's own for https, none for loopback HTTP."""
        if not self.op.url.startswith("https://"):
            return None
        path = self.op.root / TLS_DIR / TLS_CERT_FILE
        try:
            return path.read_text()
        except OSError:
            raise AccountError(
                f"{self.hospital} serves https but {path} cannot be read; put its certificate "
                "there (python -m datasites init creates one)."
            ) from None

    def _target(self, email: str, out: Path | None) -> Path:
        """The invitation's path; the default folder is created owner-only."""
        if out is not None:
            return Path(out)
        path = invitation_path(self.op.root, email)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)
        return path

    def _create(self, email: str, name: str, password: str) -> None:
        from syft.service.user.user_roles import ServiceRole

        with quiet():
            result = _call(
                lambda: self.op.client.users.create(
                    email=email,
                    name=name,
                    password=password,
                    password_verify=password,
                    role=ServiceRole.DATA_SCIENTIST,
                )
            )
        if _failed(result) or self._user(email) is None:
            raise AccountError(f"{self.hospital} refused the account {email}: {_reason(result)}")

    def _delete(self, user: Any) -> None:
        with quiet():
            result = _call(lambda: self.op.client.api.services.user.delete(uid=user.id))
        if _failed(result):
            raise AccountError(f"{self.hospital} did not remove {_email(user)}: {_reason(result)}")

    def _deny_pending(self, email: str, reason: str) -> list[str]:
        """Deny every pending request `email` sent; each denial is an audit entry."""
        denied = []
        with quiet():
            requests = list(self.op.client.requests)
        for request in requests:
            sender = str(getattr(request, "requesting_user_email", "") or "").lower()
            if sender != email or request_status(request) != PENDING:
                continue
            with quiet():
                result = _call(lambda r=request: r.deny(reason=reason))
            if _failed(result):
                raise AccountError(
                    f"{email} was removed but request {str(request.id)[:12]} was not denied "
                    f"({_reason(result)}); deny it with python -m datasites deny."
                )
            denied.append(str(request.id))
            self.op.audit_log.append(
                Event.DENIED,
                request=str(request.id),
                scientist=email,
                operator=self.op.name,
                reason=reason,
            )
        return denied


def _checked_email(email: str) -> str:
    """`email` lowercased; anything with a character a terminal acts on is refused here,
    before the invitation's own checks see it."""
    if not isinstance(email, str) or not email.isprintable() or not email:
        raise AccountError(
            f"{_shown(email)} is not an email address (it holds control or invisible "
            "characters); type the address again."
        )
    return email.lower()


def _checked_reason(reason: str) -> str:
    if not reason.isprintable() or len(reason) > MAX_REASON_CHARS:
        raise AccountError(
            f"the reason must be at most {MAX_REASON_CHARS} printable characters on one line; "
            "the scientist reads it."
        )
    return reason.strip()


def _shown(value: Any) -> str:
    return repr(shown(value, 60))


def _email(user: Any) -> str:
    return str(user.email).lower()


def _role(user: Any) -> str:
    return str(getattr(user.role, "name", user.role))


def _call(fn: Any) -> Any:
    """syft's answer: a value, a SyftError, or the exception it raised (returned)."""
    try:
        return fn()
    except Exception as error:
        return error


def _failed(result: Any) -> bool:
    from syft.service.response import SyftError

    return isinstance(result, SyftError | Exception)


def _reason(error: Any) -> str:
    text = syft_message(error).strip()
    first = text.splitlines()[0][:200] if text else type(error).__name__
    return first if first.endswith(".") else first + "."
