"""Each account's storage, pending requests and submissions are bounded (issue 27, finding 4).

The live attack stored three 100 MB objects with `action.set` (the store grew 13 -> 282 MB),
filed 25 code requests in 19 s, and got a deposit for a 1 TB `blob_storage.allocate`. The
site policy's `[quota]` bounds each account, the guard refuses a call past it before syft
stores anything (one sentence, audited), and `python -m datasites scientists quota` raises
the limits for one scientist. Everything here runs as fresh accounts of its own.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datasites.contract.invitation import read_invitation
from datasites.governance.accounts import Accounts
from datasites.governance.operator import Operator
from datasites.server.quotas import Usage, usage_of
from datasites.site.audit import AuditLog
from datasites.site.policy import QuotaPolicy
from scientist import Federation, StudyConfig
from tests.conftest import Launch, datasites_cli, one_round_ehr

HOSPITAL = "hospital-b"
MB = 2**20
DEFAULTS = QuotaPolicy()


@pytest.fixture(scope="module")
def made(operators: dict[str, Operator]) -> Any:
    emails: list[str] = []
    yield emails
    accounts = Accounts(operators[HOSPITAL])
    for email in emails:
        with contextlib.suppress(Exception):
            accounts.remove(email, "test cleanup")


def account(
    who: str, guarded: Launch, operators: dict[str, Operator], made: list[str], tmp: Path
) -> tuple[str, Federation]:
    email = f"{who}-quota@uni-research.org"
    issued = Accounts(operators[HOSPITAL]).add(email, out=tmp / f"{who}.invite.json")
    made.append(email)
    invitation = read_invitation(issued.invitation)
    fed = Federation.connect(
        [invitation.url], email=email, password=invitation.password, workdir=tmp / who
    )
    return email, fed


def scientists(guarded: Launch, *argv: str) -> Any:
    return datasites_cli(guarded.data_dir, HOSPITAL, "scientists", *argv)


def store(client: Any, megabytes: float) -> Any:
    """Store `megabytes` the way syft stores data: allocate a blob of that size, then write
    it. The refusal (a SyftError or an exception), or the write's reply."""
    from syft.types.blob_storage import CreateBlobStorageEntry

    size = int(megabytes * MB)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            deposit = client.api.services.blob_storage.allocate(
                CreateBlobStorageEntry(file_size=size, type_=bytes)
            )
            if refusal(deposit):
                return deposit
            return deposit.write(io.BytesIO(b"x" * size))
        except Exception as error:
            return error


def inline_set(client: Any, megabytes: float) -> Any:
    """A hand-made `action.set` whose message itself carries `megabytes` (syft's client
    never inlines data, a hostile one may): the reply, or the exception raised."""
    from syft.client.api import SyftAPICall
    from syft.service.action.action_object import ActionObject

    obj = ActionObject.from_obj(np.ones(4))
    padding = b"x" * int(megabytes * MB)
    call = SyftAPICall(
        server_uid=client.id,
        path="action.set",
        args=[],
        kwargs={"action_object": obj, "add_storage_permission": True, "padding": padding},
    )
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            signed = client.api.connection.make_call(call.sign(client.api.signing_key))
            return signed.message.data
        except Exception as error:
            return error


def zeros_set(client: Any, mebibytes: float) -> tuple[Any, Any]:
    """A hand-made `action.set` of an array of zeros carried in the message itself (about a
    thousandfold smaller once syft compresses it): (the object's id, the reply)."""
    from syft.client.api import SyftAPICall
    from syft.service.action.action_object import ActionObject

    obj = ActionObject.from_obj(np.zeros(int(mebibytes * MB) // 8))
    obj.syft_action_saved_to_blob_store = False  # inline, as the attacker sent it
    call = SyftAPICall(
        server_uid=client.id,
        path="action.set",
        args=[],
        kwargs={"action_object": obj, "add_storage_permission": True, "ignore_detached_objs": True},
    )
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            signed = client.api.connection.make_call(call.sign(client.api.signing_key))
            return obj.id, signed.message.data
        except Exception as error:
            return obj.id, error


def refusal(reply: Any) -> str:
    """The one sentence a refused call carried; '' when it went through."""
    from syft.service.response import SyftError
    from syft.types.result import Err, Ok

    if isinstance(reply, Ok | Err):  # syft's Result
        reply = reply.err() if reply.is_err() else reply.ok()
    if isinstance(reply, SyftError | Exception):
        text = str(getattr(reply, "public_message", None) or getattr(reply, "message", reply))
        return text.strip()
    return ""


def refused_entries(guarded: Launch, start: int, email: str) -> list[dict[str, Any]]:
    entries = AuditLog.open(guarded.data_dir / HOSPITAL).entries()[start:]
    return [e for e in entries if e["event"] == "refused" and e.get("user") == email]


def audit_size(guarded: Launch) -> int:
    return len(AuditLog.open(guarded.data_dir / HOSPITAL).entries())


def test_an_object_above_the_per_object_quota_is_refused_before_it_is_stored(
    guarded: Launch, operators: dict[str, Operator], made: list[str], tmp_path: Path
) -> None:
    email, fed = account("olga", guarded, operators, made, tmp_path)
    start = audit_size(guarded)

    big = store(fed.client(HOSPITAL), DEFAULTS.max_object_mb + 6)

    message = refusal(big)
    assert "at most 64 MB" in message and "raise your quota" in message, repr(big)[:300]
    assert len(message.splitlines()) == 1
    assert refused_entries(guarded, start, email), "the refusal is audited"
    assert not refusal(store(fed.client(HOSPITAL), 1)), "a small object still goes through"
    inline = inline_set(fed.client(HOSPITAL), DEFAULTS.max_object_mb + 6)
    assert refusal(inline) or "413" in repr(inline), f"a 70 MB action.set got {inline!r}"[:300]


def test_an_account_total_is_bounded_and_an_operator_raises_it(
    guarded: Launch, operators: dict[str, Operator], made: list[str], tmp_path: Path
) -> None:
    email, fed = account("tomas", guarded, operators, made, tmp_path)
    lowered = scientists(guarded, "quota", email, "--stored-mb", "40")
    assert lowered.returncode == 0, lowered.stderr
    assert "40 MB stored in all" in lowered.stdout
    client = fed.client(HOSPITAL)
    start = audit_size(guarded)

    first, second, third = (store(client, 15) for _ in range(3))

    assert not refusal(first) and not refusal(second), (first, second)
    message = refusal(third)
    assert "may store at most 40 MB" in message, repr((first, second, third))[:500]
    assert refused_entries(guarded, start, email)
    raised = scientists(guarded, "quota", email, "--stored-mb", "100")
    assert raised.returncode == 0, raised.stderr
    assert not refusal(store(client, 15)), "raised by the operator, it goes through"
    shown = scientists(guarded, "quota", email)
    assert "100 MB stored in all" in shown.stdout, shown.stdout


def test_an_allocation_above_the_quota_is_refused_before_it_exists(
    guarded: Launch,
    operators: dict[str, Operator],
    admins: dict[str, Any],
    made: list[str],
    tmp_path: Path,
) -> None:
    from syft.types.blob_storage import CreateBlobStorageEntry

    email, fed = account("ugo", guarded, operators, made, tmp_path)
    client = fed.client(HOSPITAL)
    admin = admins[HOSPITAL]

    def entries() -> int:
        with contextlib.redirect_stdout(io.StringIO()):
            return len(admin.api.services.blob_storage.get_all())

    before = entries()
    start = audit_size(guarded)
    terabyte = CreateBlobStorageEntry(file_size=2**40, type_=bytes)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            deposit = client.api.services.blob_storage.allocate(terabyte)
        except Exception as error:
            deposit = error
    message = refusal(deposit)
    assert "at most 64 MB" in message, f"a 1 TB allocation got {deposit!r}"[:300]
    assert entries() == before, "nothing was allocated"
    assert refused_entries(guarded, start, email)

    small = CreateBlobStorageEntry(file_size=1024, type_=bytes)
    with contextlib.redirect_stdout(io.StringIO()):
        deposit = client.api.services.blob_storage.allocate(small)
        overflow = refusal(_write(deposit, b"x" * (2 * MB)))
    assert "more than the" in overflow and "allocated" in overflow, overflow


def _write(deposit: Any, data: bytes) -> Any:
    try:
        return deposit.write(io.BytesIO(data))
    except Exception as error:
        return error


def test_pending_requests_and_submissions_an_hour_are_bounded(
    guarded: Launch, operators: dict[str, Operator], made: list[str], tmp_path: Path
) -> None:
    email, fed = account("vito", guarded, operators, made, tmp_path)
    assert scientists(guarded, "quota", email, "--pending", "3").returncode == 0
    start = audit_size(guarded)

    def submit() -> str:
        try:
            fed.submit(StudyConfig(**one_round_ehr(epsilon=0.1)), hospitals=[HOSPITAL])
        except Exception as error:
            return str(error)
        return ""

    outcomes = [submit() for _ in range(4)]

    assert outcomes[:3] == ["", "", ""], outcomes
    assert "3 of your requests wait for this hospital's decision" in outcomes[3], outcomes[3]
    assert refused_entries(guarded, start, email)

    # raised pending, lowered rate: the three accepted count against the hour
    assert scientists(guarded, "quota", email, "--pending", "50", "--per-hour", "4").returncode == 0
    assert submit() == ""
    late = submit()
    assert "submitted 4 requests in the last hour" in late, late

    op = operators[HOSPITAL]
    request = next(v for v in op.requests() if v.scientist == email)
    shown = datasites_cli(guarded.data_dir, HOSPITAL, "show", request.id)
    assert shown.returncode == 0, shown.stderr
    quota = next(line for line in shown.stdout.splitlines() if line.startswith("quota"))
    assert "50 pending requests" in quota and "4 submissions an hour (4 in the last" in quota


def test_a_compressible_object_counts_what_it_decodes_to(
    guarded: Launch,
    operators: dict[str, Operator],
    admins: dict[str, Any],
    made: list[str],
    tmp_path: Path,
) -> None:
    """The live attack: `action.set` of `np.zeros(200 MiB)` sent about 2 MB and was stored
    whole (the datasite grew by 600 MB). Its arrays count what they decode to, and one past
    the per-object quota is refused before it is decoded."""
    from syft.serde.serialize import _serialize
    from syft.service.action.action_object import ActionObject

    sent = len(_serialize(ActionObject.from_obj(np.zeros(200 * MB // 8)), to_bytes=True))
    assert sent < 2 * MB, "the attack's message is small"
    email, fed = account("wim", guarded, operators, made, tmp_path)
    client = fed.client(HOSPITAL)
    root = guarded.data_dir / HOSPITAL
    start = audit_size(guarded)

    uid, big = zeros_set(client, 200)

    message = refusal(big)
    assert "at most 64 MB" in message and "raise your quota" in message, repr(big)[:300]
    assert len(message.splitlines()) == 1
    assert refused_entries(guarded, start, email), "the refusal is audited"
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            stored = admins[HOSPITAL].api.services.action.get(uid=uid)
        except Exception as error:  # syft's client raises "ActionObject: not found"
            stored = error
    assert refusal(stored), f"the refused array was stored: {stored!r}"[:300]
    assert (usage_of(root, email) or Usage(0, 0)).stored_bytes == 0

    # under the per-object quota it goes through, counted at what it decodes to
    _, small = zeros_set(client, 8)
    assert not refusal(small), repr(small)[:300]
    usage = usage_of(root, email)
    assert usage is not None and usage.stored_bytes >= 8 * MB, usage

    # the same zeros written to a blob (syft decodes it whenever the object is read)
    from syft.types.blob_storage import CreateBlobStorageEntry

    serialized = _serialize(np.zeros(200 * MB // 8), to_bytes=True)
    with contextlib.redirect_stdout(io.StringIO()):
        deposit = client.api.services.blob_storage.allocate(
            CreateBlobStorageEntry(file_size=len(serialized), type_=bytes)
        )
        written = refusal(_write(deposit, serialized))
    assert "at most 64 MB" in written and "once decoded" in written, written

    # and the total bounds them too: 8 + 8 of 20 MB, the third is refused
    assert scientists(guarded, "quota", email, "--stored-mb", "20").returncode == 0
    _, second = zeros_set(client, 8)
    _, third = zeros_set(client, 8)
    assert not refusal(second), repr(second)[:300]
    assert "may store at most 20 MB" in refusal(third), repr(third)[:300]


def test_a_decoded_array_is_charged_before_its_memory_is_taken() -> None:
    """Inside a budget, an array's decompressed size is charged before it is decompressed,
    and a tensor that names a wider dtype than its buffer is charged the wider size."""
    import pyarrow as pa
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    from datasites.server.syft_fixes import DecodeLimit, bound_decoding, decode_budget

    bound_decoding()
    zeros = _serialize(np.zeros(64 * MB // 8), to_bytes=True)
    with pytest.raises(DecodeLimit) as limit, decode_budget(16 * MB):
        _deserialize(zeros, from_bytes=True)
    assert limit.value.size == 64 * MB + 192  # the Arrow frame: nothing was decompressed
    with decode_budget(65 * MB) as budget:
        assert _deserialize(zeros, from_bytes=True).nbytes == 64 * MB
    assert 64 * MB <= budget.charged < 65 * MB

    # int8 elements named complex128: sixteen times the buffer once converted
    sink = pa.BufferOutputStream()
    pa.ipc.write_tensor(pa.Tensor.from_numpy(np.zeros(MB, dtype=np.int8)), sink)
    frame = sink.getvalue()
    packed = pa.compress(frame, asbytes=True, codec="zstd")
    lying = _serialize((packed, frame.size, "complex128"), to_bytes=True)
    from syft.serde.arrow import numpy_deserialize

    with pytest.raises(DecodeLimit), decode_budget(4 * MB):
        numpy_deserialize(lying)
    assert _deserialize(zeros, from_bytes=True).shape == (64 * MB // 8,)  # outside: unbounded
