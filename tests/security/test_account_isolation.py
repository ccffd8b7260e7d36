"""One account never reads another's objects, through any endpoint its role may call (issue 27).

The live attack: a scientist called `migration._get_object(uid=<another user's uid>,
object_type=User)` and got that user's signing key, bcrypt hash and salt (syft creates
every user with ALL_READ); `notifications.resolve_object` with a LinkedObject naming the
User did the same. Here a victim account fills a hospital with objects of every kind (its
user, a study's code, request, code status and output policy, an output and a job from a
real run, an action object, a blob, notifications), and a second scientist, then a guest,
calls EVERY path its allow-list (`datasites.server.guard`) lets through with the victim's
ids, signed as itself, bypassing the client's API map as an attacker would. Nothing of the
victim's may come back: none of its ids (beyond those the attacker sent), secrets, email or
code, and no "yes" from an existence oracle. The cases are keyed by path and the tests are
parametrized by the allow-lists themselves, so a path added to a list without a case here
fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datasites.contract.syft_io import quiet
from datasites.governance.accounts import Accounts
from datasites.governance.operator import Operator
from datasites.server.guard import ACTION_UID_PATHS, GUEST_PATHS, SCIENTIST_PATHS
from datasites.site.audit import AuditLog
from scientist import Federation, StudyConfig
from tests.conftest import Launch, one_round_ehr

HOSPITAL = "hospital-a"
STUDY = one_round_ehr(epsilon=0.05)
# Paths a scientist used to reach that read any stored object by uid; still attacked here.
CLOSED_GETTERS = ("migration._get_object",)


@dataclass
class Victim:
    """The first scientist and every kind of object it owns at HOSPITAL."""

    email: str
    client: Any
    user: Any  # syft UID of its User
    secrets: dict[str, str]  # signing key, bcrypt hash and salt, verify key, email
    function: str  # its study's function name, in its code's source
    code: Any = None  # the stored UserCode (read back by the victim)
    request: Any = None
    job: Any = None  # a job's UID, or a fresh one
    action: Any = None  # UID of an action object it stored
    blob: Any = None  # UID of a blob it stored
    blob_bytes: bytes = b""
    uids: dict[str, Any] = field(default_factory=dict)  # name -> UID, everything above


def _store_row(guarded: Launch, email: str) -> dict[str, Any]:
    """The victim's User row as syft stores it (to know the secrets that must not leak)."""
    (db,) = (guarded.data_dir / HOSPITAL / "syft").glob("*/db/*_json.db")
    with contextlib.closing(sqlite3.connect(db)) as con:
        for (fields,) in con.execute('SELECT fields FROM "User"'):
            row = json.loads(fields)
            if row.get("email") == email:
                return row
    raise AssertionError(f"no User row for {email}")


def _invited(op: Operator, who: str, tmp: Path) -> tuple[str, Any, Federation]:
    """A fresh scientist account at HOSPITAL: (email, syft client, Federation)."""
    from datasites.contract.invitation import read_invitation

    email = f"{who}-isolation@uni-research.org"
    issued = Accounts(op).add(email, out=tmp / f"{who}.invite.json")
    invitation = read_invitation(issued.invitation)
    fed = Federation.connect(
        [invitation.url], email=email, password=invitation.password, workdir=tmp / who
    )
    return email, fed.client(HOSPITAL), fed


@pytest.fixture(scope="module")
def accounts(
    guarded: Launch, operators: dict[str, Operator], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    tmp = tmp_path_factory.mktemp("isolation")
    op = operators[HOSPITAL]
    made = [_invited(op, who, tmp) for who in ("vera", "mallet")]
    yield made
    accounts = Accounts(op)
    for email, _, _ in made:
        with contextlib.suppress(Exception):
            accounts.remove(email, "test cleanup")


@pytest.fixture(scope="module")
def victim(guarded: Launch, operators: dict[str, Operator], accounts: Any) -> Victim:
    """vera: a study submitted, approved and run (an output), an action object and a blob
    stored; every id collected. (A scientist cannot start a job here: the guard refuses the
    worker pool reads it needs; any job it has is collected too.)"""
    import syft as sy
    from syft.types.blob_storage import CreateBlobStorageEntry

    email, client, fed = accounts[0]
    row = _store_row(guarded, email)
    secrets = {k: str(row[k]) for k in ("signing_key", "hashed_password", "salt", "verify_key")}
    secrets["email"] = email
    study = fed.submit(StudyConfig(**STUDY), hospitals=[HOSPITAL])
    operators[HOSPITAL].approve(study.requests[HOSPITAL])
    study.run(progress=False)
    v = Victim(email, client, sy.UID(row["id"]), secrets, study.function)
    with quiet():
        v.code = next(c for c in client.code.get_all() if c.service_func_name == study.function)
        v.request = next(r for r in client.requests if str(r.id) == study.requests[HOSPITAL])
        pointer = sy.ActionObject.from_obj(np.arange(64) + 0.5).send(client)
        v.action = pointer.id.id
        v.blob_bytes = b"vera's blob " * 64
        deposit = client.api.services.blob_storage.allocate(
            CreateBlobStorageEntry.from_obj(v.blob_bytes, file_size=len(v.blob_bytes))
        )
        deposit.write(io.BytesIO(v.blob_bytes))
        v.blob = deposit.blob_storage_entry_id
        own = Attack(client, None)
        outputs = _value(own("output.get_all"))
        notes = _value(own("notifications.get_all_sent")) + _value(own("notifications.get_all"))
    assert outputs, "the victim's run left an output"
    v.uids = {
        "user": v.user,
        "code": v.code.id,
        "code status": v.code.status_link.object_uid,
        "output policy": v.code.output_policy_id,
        "request": v.request.id,
        "action object": v.action,
        "blob": v.blob,
        **{f"output {i}": o.id for i, o in enumerate(outputs)},
        **{f"notification {i}": n.id for i, n in enumerate(notes)},
    }
    jobs = _value(own("job.get_all"))
    v.uids.update({f"job {i}": j.id for i, j in enumerate(jobs)})
    v.job = jobs[0].id if jobs else sy.UID()  # scientists start no jobs here (worker.get_all)
    return v


def _value(reply: Any) -> list[Any]:
    """The list a raw reply carries (syft wraps it in a SyftSuccess)."""
    value = getattr(reply, "value", reply)
    assert isinstance(value, list), f"not a list: {str(reply)[:200]}"
    return value


@pytest.fixture(scope="module")
def mallet(accounts: Any) -> Any:
    return accounts[1][1]


@pytest.fixture(scope="module")
def guest(guarded: Launch) -> Any:
    import syft as sy

    host, port = guarded.hospital(HOSPITAL)["url"].rsplit(":", 1)
    with contextlib.redirect_stdout(io.StringIO()):
        return sy.login_as_guest(url=host, port=int(port))


# -- the attacker's calls ------------------------------------------------------------------


class Attack:
    """Calls any path as `client`, signed with its key, past the client's own API map (what
    a modified client sends); remembers every id it sent, which may come back echoed."""

    def __init__(self, client: Any, victim: Victim | None) -> None:
        self.client = client
        self.v = victim
        self.sent: list[Any] = []

    def __call__(self, path: str, *args: Any, **kwargs: Any) -> Any:
        from syft.client.api import SyftAPICall

        self.sent += [*args, *kwargs.values()]
        call = SyftAPICall(
            server_uid=self.client.api.server_uid,
            path=path,
            args=list(args),
            kwargs=kwargs,
            blocking=True,
        )
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                return self.client.api.make_call(call)
            except Exception as error:
                return error


def _linked(uid: Any, kind: str, server: Any) -> Any:
    from syft.service.code.user_code import UserCode
    from syft.service.code.user_code_service import UserCodeService
    from syft.service.request.request import Request
    from syft.service.request.request_service import RequestService
    from syft.service.user.user import User
    from syft.service.user.user_service import UserService
    from syft.store.linked_obj import LinkedObject

    types = {
        "user": (User, UserService),
        "code": (UserCode, UserCodeService),
        "request": (Request, RequestService),
    }
    object_type, service = types[kind]
    return LinkedObject.from_uid(uid, object_type, service_type=service, server_uid=server)


def _get_object(a: Attack) -> list[Any]:
    from syft.service.code.user_code import UserCode
    from syft.service.request.request import Request
    from syft.service.user.user import User

    v = a.v
    return [
        a("migration._get_object", uid=v.user, object_type=User),
        a("migration._get_object", uid=v.request.id, object_type=Request),
        a("migration._get_object", uid=v.code.id, object_type=UserCode),
    ]


def _resolve(a: Attack) -> list[Any]:
    v = a.v
    server = a.client.api.server_uid
    found = []
    for uid, kind in ((v.user, "user"), (v.code.id, "code"), (v.request.id, "request")):
        linked = _linked(uid, kind, server)
        found.append(a("notifications.resolve_object", linked_obj=linked))
    return found


def _action_set(a: Attack) -> Any:
    """Overwrite the victim's action object under its id."""
    from syft.service.action.action_object import ActionObject

    forged = ActionObject.from_obj(np.zeros(64), id=a.v.action)
    return a("action.set", action_object=forged, add_storage_permission=True)


def _allocate(a: Attack) -> Any:
    """Allocate a blob entry under the victim's blob id."""
    from syft.types.blob_storage import CreateBlobStorageEntry

    entry = CreateBlobStorageEntry(id=a.v.blob, file_size=16, type_=bytes)
    return a("blob_storage.allocate", obj=entry)


def _request_execution(a: Attack) -> Any:
    """Ask to run the victim's stored code as one's own."""
    return a("code.request_code_execution", code=a.v.code, reason="")


def _submit(a: Attack) -> Any:
    """A request approving the victim's code, named by its ids only."""
    from syft.service.code.status_service import UserCodeStatusService
    from syft.service.code.user_code import UserCodeStatus, UserCodeStatusCollection
    from syft.service.request.request import SubmitRequest, UserCodeStatusChange
    from syft.store.linked_obj import LinkedObject

    server = a.client.api.server_uid
    status = LinkedObject.from_uid(
        a.v.code.status_link.object_uid,
        UserCodeStatusCollection,
        service_type=UserCodeStatusService,
        server_uid=server,
    )
    change = UserCodeStatusChange(
        value=UserCodeStatus.APPROVED,
        linked_obj=status,
        linked_user_code=_linked(a.v.code.id, "code", server),
    )
    return a("request.submit", request=SubmitRequest(changes=[change]))


def _call(a: Attack) -> Any:
    ids = {}
    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
        assets = a.client.api.services.dataset.get_all()
        ehr = next(d for d in assets if d.name == STUDY["task"])
        ids = {"train": ehr.assets["train"].action_id, "test": ehr.assets["test"].action_id}
    return a("code.call", uid=a.v.code.id, **ids, weights=a.v.action)


Case = Callable[[Attack], Any]
CASES: dict[str, Case] = {
    "metadata": lambda a: a("metadata"),
    "metadata.get_metadata": lambda a: a("metadata.get_metadata"),
    "user.get_current_user": lambda a: a("user.get_current_user"),
    "settings.welcome_show": lambda a: a("settings.welcome_show"),
    "dataset.get_all": lambda a: a("dataset.get_all"),
    "dataset.search": lambda a: a("dataset.search", name=STUDY["task"]),
    "dataset.get_assets_by_action_id": lambda a: a(
        "dataset.get_assets_by_action_id", uid=a.v.action
    ),
    "action.get": lambda a: a("action.get", uid=a.v.action),
    "action.get_mock": lambda a: a("action.get_mock", uid=a.v.action),
    "action.set": _action_set,
    "action.exists": lambda a: a("action.exists", obj_id=a.v.action),
    "action.is_resolved": lambda a: a("action.is_resolved", uid=a.v.action),
    "action.has_storage_permission": lambda a: a("action.has_storage_permission", uid=a.v.action),
    "action.get_pointer": lambda a: a("action.get_pointer", uid=a.v.action),
    "blob_storage.read": lambda a: a("blob_storage.read", uid=a.v.blob),
    "blob_storage.allocate": _allocate,
    "blob_storage.write_to_disk": lambda a: a(
        "blob_storage.write_to_disk", uid=a.v.blob, data=b"overwritten"
    ),
    "blob_storage.mark_write_complete": lambda a: a(
        "blob_storage.mark_write_complete", uid=a.v.blob, etags=[], no_lines=0
    ),
    "code.request_code_execution": _request_execution,
    "code.call": _call,
    "code.get_all": lambda a: a("code.get_all"),
    "code.get_all_for_user": lambda a: a("code.get_all_for_user"),
    "code.get_by_id": lambda a: a("code.get_by_id", uid=a.v.code.id),
    "code.get_by_service_func_name": lambda a: a(
        "code.get_by_service_func_name", service_func_name=a.v.function
    ),
    "code_status.get_by_uid": lambda a: a(
        "code_status.get_by_uid", uid=a.v.code.status_link.object_uid
    ),
    "request.submit": _submit,
    "request.get_all": lambda a: a("request.get_all"),
    "request.get_by_uid": lambda a: a("request.get_by_uid", uid=a.v.request.id),
    "request.get_all_approved": lambda a: a("request.get_all_approved"),
    "request.get_all_pending": lambda a: a("request.get_all_pending"),
    "request.get_all_rejected": lambda a: a("request.get_all_rejected"),
    "job.get": lambda a: a("job.get", uid=a.v.job),
    "job.get_all": lambda a: a("job.get_all"),
    "job.get_by_user_code_id": lambda a: a("job.get_by_user_code_id", user_code_id=a.v.code.id),
    "output.get": lambda a: [a("output.get", id=a.v.uids[k]) for k in a.v.uids if "output" in k],
    "output.get_all": lambda a: a("output.get_all"),
    "output.get_by_user_code_id": lambda a: a(
        "output.get_by_user_code_id", user_code_id=a.v.code.id
    ),
    "output.get_by_output_policy_id": lambda a: a(
        "output.get_by_output_policy_id", output_policy_id=a.v.code.output_policy_id
    ),
    "output.has_output_read_permissions": lambda a: [
        a(
            "output.has_output_read_permissions",
            user_code_id=a.v.code.id,
            user_verify_key=a.v.code.user_verify_key,
        ),
        a(
            "output.has_output_read_permissions",
            user_code_id=a.v.code.id,
            user_verify_key=a.client.credentials.verify_key,
        ),
    ],
    "notifications.resolve_object": _resolve,
    "notifications.get_all": lambda a: a("notifications.get_all"),
    "notifications.get_all_read": lambda a: a("notifications.get_all_read"),
    "notifications.get_all_unread": lambda a: a("notifications.get_all_unread"),
    "notifications.get_all_sent": lambda a: a("notifications.get_all_sent"),
    "migration._get_object": _get_object,
}


# -- what counts as finding something of the victim's -----------------------------------------


def _uid_forms(uid: Any) -> list[bytes]:
    from syft.types.uid import UID

    uid = getattr(uid, "id", uid)
    if not isinstance(uid, UID):
        return []
    return [uid.value.bytes, uid.no_dash.encode(), str(uid).encode()]


def _text_of(result: Any) -> bytes:
    """Everything a reply carries: syft's own serialization and its repr."""
    from syft.serde.serialize import _serialize

    parts = [repr(result).encode("utf-8", "replace")]
    with contextlib.suppress(Exception):
        parts.append(_serialize(result, to_bytes=True))
    with contextlib.suppress(Exception):
        parts.append(json.dumps(result, default=str).encode())
    return b"\n".join(parts)


def _is_refusal(result: Any) -> bool:
    """A refusal, or a case's list of calls that were all refused."""
    from syft.service.response import SyftError

    if isinstance(result, list) and result and all(_is_reply(r) for r in result):
        return all(_is_refusal(r) for r in result)
    return isinstance(result, SyftError | Exception)


def found(result: Any, attack: Attack) -> list[str]:
    """What of the victim's `result` carries: names of ids and secrets, or an oracle's yes."""
    if isinstance(result, list) and result and all(_is_reply(r) for r in result):
        return [hit for r in result for hit in found(r, attack)]
    if result is True or getattr(result, "value", None) is True:  # syft wraps a bare yes
        return ["a yes about the victim's object"]
    v = attack.v
    text = _text_of(result)
    sent = {form for value in attack.sent for form in _uid_forms(value)}
    hits = [name for name, secret in v.secrets.items() if secret.encode() in text]
    if v.function.encode() in text and v.function not in map(str, attack.sent):
        hits.append("the victim's code")
    if not _is_refusal(result):  # a refusal may name the id it was sent
        for name, uid in v.uids.items():
            if any(form in text for form in _uid_forms(uid) if form not in sent):
                hits.append(f"the victim's {name}")
    return hits


def _is_reply(value: Any) -> bool:
    """A list built by a case of several calls (each one reply), not one reply's list."""
    from syft.service.response import SyftError

    return isinstance(value, bool | SyftError | Exception) or type(value).__name__ in (
        "User",
        "UserView",
        "Request",
        "UserCode",
        "ExecutionOutput",
        "SyftSuccess",
    )


# -- the tests ------------------------------------------------------------------------------


def test_every_allowed_path_has_a_case() -> None:
    """A path added to an allow-list needs its isolation case here first."""
    missing = sorted((SCIENTIST_PATHS | GUEST_PATHS) - set(CASES))
    assert not missing, f"no isolation case for {missing}"


@pytest.mark.parametrize("path", sorted(SCIENTIST_PATHS | set(CLOSED_GETTERS)))
def test_a_second_scientist_finds_nothing_of_the_first(
    path: str, victim: Victim, mallet: Any, admins: dict[str, Any]
) -> None:
    attack = Attack(mallet, victim)
    result = CASES[path](attack)
    assert found(result, attack) == [], f"{path} answered {str(result)[:300]}"
    _victim_intact(victim, admins[HOSPITAL])


@pytest.mark.parametrize("path", sorted(GUEST_PATHS | SCIENTIST_PATHS | set(CLOSED_GETTERS)))
def test_a_guest_finds_nothing_of_a_scientist(
    path: str, victim: Victim, guest: Any, admins: dict[str, Any]
) -> None:
    attack = Attack(guest, victim)
    result = CASES[path](attack)
    assert found(result, attack) == [], f"{path} answered {str(result)[:300]}"
    if path not in GUEST_PATHS:
        assert _is_refusal(result), f"a guest reached {path}: {str(result)[:200]}"
    _victim_intact(victim, admins[HOSPITAL])


def _victim_intact(v: Victim, admin: Any) -> None:
    """The writes among the cases changed nothing of the victim's."""
    with quiet():
        stored = admin.api.services.action.get(uid=v.action)
        data = getattr(stored, "syft_action_data", stored)
        np.testing.assert_array_equal(np.asarray(data), np.arange(64) + 0.5)
        blob = admin.api.services.blob_storage.read(uid=v.blob)
        assert blob.read(_deserialize=False) == v.blob_bytes


# Every by-uid read of the action store a scientist may call (all of `action.*` but `set`).
ACTION_READS = sorted(p for p in SCIENTIST_PATHS if p.startswith("action.") and p != "action.set")


def test_every_action_read_is_answered_by_ownership() -> None:
    """An action path added to the scientist's list needs its place in the guard first."""
    assert set(ACTION_READS) <= set(ACTION_UID_PATHS), set(ACTION_READS) - set(ACTION_UID_PATHS)


def _without(text: str, uid: Any) -> str:
    for form in _uid_forms(uid):
        text = text.replace(form.decode("latin-1"), "<uid>")
    return text


@pytest.mark.parametrize("path", ACTION_READS)
def test_anothers_action_object_is_answered_as_a_missing_one(
    path: str, victim: Victim, mallet: Any
) -> None:
    """The live attack: `action.get_pointer` (and `get_mock`) returned a pointer to another
    account's object, with its type, blob id and creation time. Asked for another's object,
    every action read answers exactly as for an id that does not exist: nothing, no oracle."""
    import syft as sy

    name, _ = ACTION_UID_PATHS[path]
    attack = Attack(mallet, victim)
    missing = sy.UID()

    theirs = attack(path, **{name: victim.action})
    nothing = attack(path, **{name: missing})

    assert _without(repr(theirs), victim.action) == _without(repr(nothing), missing), (
        f"{path}: {str(theirs)[:200]} against {str(nothing)[:200]}"
    )
    assert type(theirs) is type(nothing)
    assert _is_refusal(theirs) or getattr(theirs, "value", theirs) is False, str(theirs)[:200]
    message = str(getattr(theirs, "message", "")).strip()
    assert len(message.splitlines()) <= 1 and "Traceback" not in message
    mine = victim.action
    if path == "action.get_mock":  # the victim's array has no mock; an asset has
        with quiet():
            mine = victim.client.api.services.dataset.get_all()[0].asset_list[0].action_id
    own = Attack(victim.client, victim)(path, **{name: mine})
    assert not _is_refusal(own) and getattr(own, "value", own) is not False, str(own)[:200]


def test_the_user_read_of_the_live_attack_is_refused_and_audited(
    guarded: Launch, victim: Victim, mallet: Any
) -> None:
    """The finding itself: `migration._get_object` on a User, and `resolve_object` on its
    link, refused in one sentence with nothing of it, and audited."""
    log = AuditLog.open(guarded.data_dir / HOSPITAL)
    attack = Attack(mallet, victim)
    for result in [*_get_object(attack)[:1], *_resolve(attack)[:1]]:
        assert _is_refusal(result), str(result)[:300]
        message = str(getattr(result, "message", result)).strip()
        assert len(message.splitlines()) == 1, message
        assert not found(result, attack)
    # refusals from one source are folded into one entry an interval: any entry will do
    paths = {
        e.get("path")
        for e in log.entries()
        if e["event"] == "refused" and e.get("layer") == "guard" and "mallet" in e.get("user", "")
    }
    assert {"migration._get_object", "notifications.resolve_object"} <= paths, paths


def test_users_are_readable_by_themselves_and_the_admin_only(
    guarded: Launch, victim: Victim
) -> None:
    """syft's store: no User row carries ALL_READ; each names its own key (issue 27)."""
    (db,) = (guarded.data_dir / HOSPITAL / "syft").glob("*/db/*_json.db")
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = list(con.execute('SELECT fields, permissions FROM "User"'))
    for fields, permissions in rows:
        row, granted = json.loads(fields), json.loads(permissions)
        assert "ALL_READ" not in granted, row["email"]
        assert f"{row['verify_key']}_READ" in granted, row["email"]
    with quiet():
        assert str(victim.client.api.services.user.get_current_user().email) == victim.email


def test_the_victims_own_reads_still_work(victim: Victim) -> None:
    """What the library needs of these getters answers for the owner (study status)."""
    from datasites.contract.syft_io import request_status

    with quiet():
        request = next(r for r in victim.client.requests if r.id == victim.request.id)
        assert request_status(request) == "approved"
        assert request.code.id == victim.code.id
