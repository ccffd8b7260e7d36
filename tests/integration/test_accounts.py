"""Scientist accounts per person on a live datasite: invitations, isolation, removal,
password resets and their audit entries, through `python -m datasites scientists ...`.

Every account made here has its own email and is removed when the module ends, so the
session's other tests see only the launch's default scientist.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from syft.types.errors import SyftException
from syft.types.uid import UID

from datasites.cli import scientists
from datasites.contract.invitation import read_invitation
from datasites.contract.syft_io import quiet
from datasites.governance.accounts import REMOVED_REASON, AccountError, Accounts
from datasites.governance.operator import Operator
from datasites.governance.watch import decide
from datasites.site.audit import AuditLog
from datasites.site.policy import AutoApprovePolicy
from scientist import Federation, StudyConfig
from scientist.study import StudyError
from tests.conftest import Launch, login, one_round_ehr

HOSPITAL = "hospital-b"
STUDY = one_round_ehr(epsilon=0.5)


def new_email(who: str) -> str:
    return f"{who}-{secrets.token_hex(3)}@uni-research.org"


@dataclasses.dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def made(federation: Launch) -> Iterator[list[str]]:
    """Emails of the accounts this module adds; whatever is left is removed at the end."""
    emails: list[str] = []
    yield emails
    accounts = Accounts(Operator.open(federation.data_dir, HOSPITAL, name="test-cleanup"))
    for account in accounts.scientists():
        if account.email in emails:
            accounts.remove(account.email, "test cleanup")


@pytest.fixture
def cli(federation: Launch, made: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `python -m datasites scientists ...` in this process, on HOSPITAL."""
    parser = argparse.ArgumentParser()
    scientists.add_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> Ran:
        capsys.readouterr()
        where = ["--hospital", HOSPITAL, "--data-dir", str(federation.data_dir)]
        code = scientists.run(parser.parse_args(["scientists", *argv, *where]))
        captured = capsys.readouterr()
        if argv[0] == "add" and code == 0:
            made.append(argv[1])
        return Ran(code, captured.out, captured.err)

    return run


def url(federation: Launch) -> str:
    return federation.hospital(HOSPITAL)["url"]


def audit(federation: Launch) -> AuditLog:
    return AuditLog.open(federation.data_dir / HOSPITAL)


def invited(out: str) -> Path:
    line = next(x for x in out.splitlines() if x.startswith("invitation: "))
    return Path(line.removeprefix("invitation: ").split(" (")[0])


def connect(federation: Launch, path: Path, workdir: Path) -> Federation:
    invitation = read_invitation(path)
    return Federation.connect(
        [invitation.url],
        email=invitation.email,
        password=invitation.password,
        workdir=workdir,
    )


def test_add_writes_an_owner_only_invitation_whose_password_logs_in(
    federation: Launch, cli: Any
) -> None:
    email = new_email("ana")
    added = cli("add", email, "--name", "Ana Pereira")
    assert added.code == 0, added.err
    path = invited(added.out)
    assert path.parent == federation.data_dir / HOSPITAL / "invitations"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    invitation = read_invitation(path)
    assert (invitation.hospital, invitation.url, invitation.email, invitation.name) == (
        HOSPITAL,
        url(federation),
        email,
        "Ana Pereira",
    )
    assert invitation.certificate_pem is None  # a plain-HTTP loopback hospital
    assert invitation.password not in added.out + added.err
    assert "out of band" in added.out

    client = login(invitation.url, email, invitation.password)
    with quiet():
        assert str(client.account.email) == email
        assert client.account.role.name == "DATA_SCIENTIST"

    listed = cli("list")
    assert listed.code == 0, listed.err
    row = next(line for line in listed.out.splitlines() if line.startswith(email))
    assert row.split()[-2:] == ["DATA_SCIENTIST", "0"]
    assert "Ana Pereira" in row
    assert "admin@" not in listed.out  # the operator is not a scientist

    again = cli("add", email.upper())
    assert again.code == 2
    assert "already has an account" in again.err and len(again.err.strip().splitlines()) == 1


def test_two_scientists_see_only_their_own_requests_and_studies(
    federation: Launch, cli: Any, tmp_path: Path
) -> None:
    first, second = new_email("bea"), new_email("caio")
    feds = {}
    for email in (first, second):
        added = cli("add", email)
        assert added.code == 0, added.err
        feds[email] = connect(federation, invited(added.out), tmp_path / email)
    studies = {email: fed.submit(StudyConfig(**STUDY)) for email, fed in feds.items()}
    requests = {email: s.requests[HOSPITAL] for email, s in studies.items()}
    clients = {email: fed.client(HOSPITAL) for email, fed in feds.items()}

    with quiet():
        for email, client in clients.items():
            other = requests[second if email == first else first]
            assert [str(r.id) for r in client.requests] == [requests[email]]
            codes = client.api.services.code.get_all()
            assert [c.service_func_name for c in codes] == [studies[email].function]
            with pytest.raises(SyftException, match="not found"):
                client.api.services.request.get_by_uid(uid=UID(other))

    # The site policy trusts `first` only: the watcher approves first's and not second's.
    op = Operator.open(federation.data_dir, HOSPITAL, name="test-operator")
    policy = dataclasses.replace(
        op.hospital.policy,
        auto_approve=AutoApprovePolicy(enabled=True, scientists=(first,), max_epsilon=1.0),
    )
    op.__dict__["hospital"] = dataclasses.replace(op.hospital, policy=policy)
    trusted = decide(op, op.request(requests[first]))
    other = decide(op, op.request(requests[second]))
    assert trusted.approved, trusted.reasons
    assert not other.approved
    assert other.reasons == (f"{second} is not in auto_approve.scientists",)

    result = studies[first].run(progress=False)
    assert [h["round"] for h in result.rounds] == [0, 1]
    with quiet():
        outputs = clients[second].api.services.output.get_all()
        jobs = clients[second].api.services.job.get_all()
        assert not list(outputs) and not list(jobs)
        assert list(clients[first].api.services.output.get_all())
        # syft answers these two with the datasite's own key: the guard keeps only the
        # caller's own executions (datasites.server.guard.OWN_OUTPUT_PATHS).
        code = clients[first].api.services.code.get_all()[0]
        output = clients[first].api.services.output
        assert output.get_by_user_code_id(user_code_id=code.id)
        assert output.get_by_output_policy_id(output_policy_id=code.output_policy_id)
        output = clients[second].api.services.output
        assert output.get_by_user_code_id(user_code_id=code.id) == []
        assert output.get_by_output_policy_id(output_policy_id=code.output_policy_id) == []
    listed = cli("list").out
    for email in (first, second):
        row = next(line for line in listed.splitlines() if line.startswith(email))
        assert row.split()[-1] == "1"


def test_remove_refuses_login_denies_pending_and_stops_a_running_study(
    federation: Launch, cli: Any, tmp_path: Path
) -> None:
    email = new_email("davi")
    added = cli("add", email)
    assert added.code == 0, added.err
    path = invited(added.out)
    fed = connect(federation, path, tmp_path)
    running = fed.submit(StudyConfig(**{**STUDY, "rounds": 2}))
    pending = fed.submit(StudyConfig(**STUDY)).requests[HOSPITAL]
    op = Operator.open(federation.data_dir, HOSPITAL, name="test-operator")
    op.approve(running.requests[HOSPITAL])
    start = len(audit(federation).entries())

    def remove_after_first_round(entry: dict[str, Any]) -> None:
        if entry["round"] == 1:
            removed = cli("remove", email, "--reason", "left the project")
            assert removed.code == 0, removed.err
            assert "1 pending requests denied" in removed.out

    with pytest.raises(StudyError, match="needs an account at this hospital"):
        running.run(progress=False, on_round=remove_after_first_round)
    with pytest.raises(Exception, match="Invalid login"):
        login(url(federation), email, read_invitation(path).password)

    request = Operator.open(federation.data_dir, HOSPITAL).request(pending)
    assert request.status.name == "REJECTED"
    with quiet():
        assert request.deny_reason == f"{REMOVED_REASON}: left the project"
    entries = audit(federation).entries()[start:]
    removed = [e for e in entries if e["event"] == "account_removed"]
    assert [(e["user"], e["denied"]) for e in removed] == [(email, [pending])]
    denied = [e for e in entries if e["event"] == "denied" and e["request"] == pending]
    assert denied and denied[0]["scientist"] == email
    refused = [e for e in entries if e["event"] == "refused"]
    assert refused, "the refused round is audited"
    assert refused[0]["layer"] == "guard", refused  # refused before syft sees the call
    assert refused[0]["reason"].endswith(
        "needs an account at this hospital; ask its operator for one"
    )
    assert email not in cli("list").out

    for target, words in [
        (f"admin@{HOSPITAL}.federation.org", "not a scientist's"),
        (email, "has no account"),
    ]:
        refused = cli("remove", target)
        assert refused.code == 2 and words in refused.err
        assert len(refused.err.strip().splitlines()) == 1


def test_reset_password_refuses_the_old_password_and_issues_a_new_one(
    federation: Launch, cli: Any, tmp_path: Path
) -> None:
    email = new_email("eva")
    added = cli("add", email)
    assert added.code == 0, added.err
    old = read_invitation(invited(added.out)).password
    out = tmp_path / "eva.invite.json"
    reset = cli("reset-password", email, "--out", str(out))
    assert reset.code == 0, reset.err
    assert invited(reset.out) == out and stat.S_IMODE(out.stat().st_mode) == 0o600
    new = read_invitation(out).password
    assert new != old and new not in reset.out + reset.err
    with pytest.raises(Exception, match="Invalid login"):
        login(url(federation), email, old)
    with quiet():
        assert str(login(url(federation), email, new).account.email) == email


def test_account_changes_are_audited_without_passwords_and_the_chain_verifies(
    federation: Launch, cli: Any
) -> None:
    start = len(audit(federation).entries())
    email = new_email("fabio")
    added = cli("add", email)
    assert added.code == 0, added.err
    first = read_invitation(invited(added.out)).password
    assert cli("reset-password", email).code == 0
    second = read_invitation(invited(added.out)).password
    assert cli("remove", email).code == 0
    log = audit(federation)
    entries = [e for e in log.entries()[start:] if e.get("user") == email]
    assert [e["event"] for e in entries] == ["account_added", "password_reset", "account_removed"]
    assert all(e["operator"] for e in entries)
    assert entries[-1]["reason"] == REMOVED_REASON
    text = log.path.read_text()
    assert first not in text and second not in text
    assert log.verify().ok


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["add", "mallory\x1b[2J@uni-research.org"], "control or invisible characters"),
        (["add", "eve\u202egro.hcraeser@uni-research.org"], "control or invisible characters"),
        (["add", "not-an-email"], "email is not an email address"),
        (["add", "ok-name@uni-research.org", "--name", "Eve\x1b]0;pwned\x07"], "name must be"),
        (["add", "ok-name@uni-research.org", "--name", "Eve\nAdmin"], "name must be"),
        (["remove", "scientist@research.org", "--reason", "bye\x1b[1A"], "the reason must"),
    ],
)
def test_hostile_emails_and_names_are_refused_in_one_sentence(
    federation: Launch, cli: Any, argv: list[str], words: str
) -> None:
    refused = cli(*argv)
    assert refused.code == 2
    assert words in refused.err
    assert len(refused.err.strip().splitlines()) == 1 and refused.err.startswith("error: ")
    assert "\x1b" not in refused.err and "\u202e" not in refused.err and "\x07" not in refused.err
    assert refused.out == ""
    listed = cli("list").out
    assert "ok-name" not in listed and "mallory" not in listed
    assert "scientist@research.org" in listed  # the launch's scientist is untouched


def test_accounts_refuse_an_operator_without_a_url(federation: Launch) -> None:
    op = Operator.open(federation.data_dir, HOSPITAL)
    bare = Operator(op.root, op.client, "test")
    with pytest.raises(AccountError, match="URL"):
        Accounts(bare).add(new_email("gil"))
