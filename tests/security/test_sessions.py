"""Sessions end when access changes (issue 27, finding 6).

syft authenticates every call by the signing key that signs it, not by the password: the
live attack kept a session working after `scientists reset-password`. Reset now rotates the
account's key too, so the open session's next call is answered as a guest's (refused and
audited), the new invitation logs in, and the account keeps what it owns.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from datasites.contract.invitation import read_invitation
from datasites.governance.accounts import Accounts
from datasites.governance.operator import Operator
from datasites.site.audit import AuditLog
from scientist import Federation, StudyConfig
from tests.conftest import Launch, datasites_cli, login, one_round_ehr

HOSPITAL = "hospital-b"


def _email(client: Any) -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        return str(client.api.services.user.get_current_user().email)


def _requests(client: Any) -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):
        return [str(r.id) for r in client.requests]


@pytest.mark.parametrize("action", ["reset-password", "remove"])
def test_an_open_session_ends_when_its_access_changes(
    guarded: Launch, operators: dict[str, Operator], tmp_path: Path, action: str
) -> None:
    email = f"sam-{action}@uni-research.org"
    op = operators[HOSPITAL]
    issued = Accounts(op).add(email, out=tmp_path / "sam.invite.json")
    old = read_invitation(issued.invitation)
    fed = Federation.connect(
        [old.url], email=email, password=old.password, workdir=tmp_path / "sam"
    )
    session = fed.client(HOSPITAL)
    study = fed.submit(StudyConfig(**one_round_ehr(epsilon=0.1)), hospitals=[HOSPITAL])
    assert _email(session) == email
    start = len(AuditLog.open(guarded.data_dir / HOSPITAL).entries())

    try:
        out = tmp_path / "sam.new.json"
        argv = [email, "--out", str(out)] if action == "reset-password" else [email]
        changed = datasites_cli(guarded.data_dir, HOSPITAL, "scientists", action, *argv)
        assert changed.returncode == 0, changed.stderr
        if action == "reset-password":
            assert "every session opened before ends" in changed.stdout, changed.stdout

        with pytest.raises(Exception, match="needs an account at this hospital"):
            _email(session)
        entries = AuditLog.open(guarded.data_dir / HOSPITAL).entries()[start:]
        # refusals from one source are folded into one entry an interval: any guest one
        everything = AuditLog.open(guarded.data_dir / HOSPITAL).entries()
        refused = [
            e
            for e in everything
            if e["event"] == "refused"
            and e.get("layer") == "guard"
            and e.get("path") == "user.get_current_user"
        ]
        assert refused, "the old session's call is refused by the guard and audited"

        if action == "reset-password":
            new = read_invitation(out)
            fresh = login(new.url, email, new.password)
            assert _email(fresh) == email
            assert _requests(fresh) == [study.requests[HOSPITAL]], "it keeps what it owns"
            reset = [e for e in entries if e["event"] == "password_reset"]
            assert reset and "sessions ended" in reset[0]["signing_key"]
    finally:
        with contextlib.suppress(Exception):
            Accounts(op).remove(email, "test cleanup")
