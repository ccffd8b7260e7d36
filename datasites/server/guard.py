"""The syft surface this hospital does not use, closed inside its datasite process.

syft 0.9.5 gives a caller with no account (a "guest") about 62 endpoints, writes included
(`code.submit`, `request.submit`, `action.set`, `blob_storage.allocate`, `network.add_peer`,
`output.create`, notifications); accepts a request with any list of changes from any caller
(code approvals, READ permissions on private assets, role changes) and applies every one of
them when an admin approves; and runs the source of a request's custom policy classes inside
the datasite. A hospital uses a small part of syft, so everything else is refused here,
before syft's dispatcher sees the call, and every refusal is an audit entry:

- what a caller may call follows from its role: a guest only reads the server's metadata,
  the data scientist gets what the scientist library uses, the admin everything;
- a code submission must use the built-in policies the scientist library generates;
  a custom policy class would run its own code in here, so it never gets in;
- a request by anyone but the admin is applied only if it holds exactly one change, the
  approval of its own code; permission and role changes are the admin's alone;
- every request and code submission is recorded with its requester, the number and kinds
  of its changes and the SHA-256 of each code it carries;
- one scientist never reads another's execution history (`OWN_OUTPUT_PATHS`); syft keeps
  their requests, codes, jobs and results apart itself (tests/integration/test_accounts.py);
- the by-uid getters the library needs (`OWN_OBJECT_PATHS`: a request's status reads the
  request and its code) answer only for the caller's own requests and codes, and the
  existence checks (`ACTION_ORACLE_PATHS`) say yes only for the caller's own objects and the
  hospital's assets; syft's by-uid reads of action objects (`ACTION_UID_PATHS`: a
  pointer, a mock, the object itself) answer another account's object exactly as one that
  does not exist, before syft looks it up; syft creates every user readable by all
  (ALL_READ), here only by itself and the admin, and existing users are made so at every
  start (tests/security/test_account_isolation.py calls every allowed path on another's
  objects);
- each account's storage, pending requests and submissions per hour are bounded by the site
  policy's `[quota]` (`datasites.server.quotas`), checked and reserved in one step before
  syft stores anything (and given back if syft refuses the call); a call's arrays and
  tables count what they decode to, not the (compressed) bytes sent, and are refused
  before they are decoded past the caller's per-object quota (a table: flat numbers only);
- a blob write answers for the caller's own blob entries only: another's reads exactly as
  one that does not exist (its existence and size were an oracle).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasites.server.audit_hooks import caller
from datasites.server.quotas import QuotaBook
from datasites.server.refusals import log_unexpected
from datasites.server.syft_fixes import DecodeLimit, DecodeRefused, bound_decoding, decode_budget
from datasites.site.audit import AuditLog, Event
from datasites.site.paths import POLICY_FILE
from datasites.site.policy import MB, QUOTAS_FILE, Policy, QuotaPolicy

if TYPE_CHECKING:
    from syft.server.datasite import Datasite

log = logging.getLogger("datasites.guard")

# A caller with no account: enough to see that a datasite answers, nothing else.
GUEST_PATHS = frozenset({"metadata", "metadata.get_metadata"})
# What the scientist library calls (measured over a whole study: explore the mocks, submit,
# status, run, resume), and the reads that go with them. Pointer arithmetic, projects,
# peers, worker pools, logs, custom API endpoints and account edits are not used.
SCIENTIST_PATHS = frozenset(
    {
        "metadata",
        "metadata.get_metadata",
        "user.get_current_user",
        "settings.welcome_show",
        "dataset.get_all",
        "dataset.search",
        "dataset.get_assets_by_action_id",
        "action.get",
        "action.get_mock",
        "action.set",
        "action.exists",
        "action.is_resolved",
        "action.has_storage_permission",
        "action.get_pointer",
        "blob_storage.read",
        "blob_storage.allocate",
        "blob_storage.write_to_disk",
        "blob_storage.mark_write_complete",
        "code.request_code_execution",
        "code.call",
        "code.get_all",
        "code.get_all_for_user",
        "code.get_by_id",
        "code.get_by_service_func_name",
        "code_status.get_by_uid",
        "request.submit",
        "request.get_all",
        "request.get_by_uid",
        "request.get_all_approved",
        "request.get_all_pending",
        "request.get_all_rejected",
        "job.get",
        "job.get_all",
        "job.get_by_user_code_id",
        "output.get",
        "output.get_all",
        "output.get_by_user_code_id",
        "output.get_by_output_policy_id",
        "output.has_output_read_permissions",
        "notifications.resolve_object",
        "notifications.get_all",
        "notifications.get_all_read",
        "notifications.get_all_unread",
        "notifications.get_all_sent",
        "migration._get_object",
    }
)
# syft's generic getters: `migration._get_object` fetches any stashed object by uid and
# `notifications.resolve_object` any linked one, each with the caller's permissions (and
# syft made every user readable by all: a scientist read another's signing key). A
# request's status (`Request.status`, `Request.code`) calls both for the caller's own
# request and code, so they stay, for those two types and the caller's own objects only.
OWN_OBJECT_PATHS = frozenset({"migration._get_object", "notifications.resolve_object"})
OWNER_FIELDS = {"Request": "requesting_user_verify_key", "UserCode": "user_verify_key"}
# A code's status collection (what `code.status` resolves) is owned through its code.
STATUS_TYPE = "UserCodeStatusCollection"
# syft answers these for any uid, whoever owns it: yes only for the caller's own action
# objects and the hospital's assets (the input policy asks `exists` of an asset).
ACTION_ORACLE_PATHS = frozenset(
    {"action.exists", "action.has_storage_permission", "action.is_resolved"}
)
# The action store's by-uid reads a scientist may call, with their uid argument's name and
# position. syft's `get_pointer` and `get_mock` read the store ignoring permissions (a
# pointer to another account's object carried its type, blob id and creation time), and
# its errors told "not yours" from "not there". Here a uid that is neither the caller's
# nor an asset's is answered before syft looks it up, whether it exists or not: False from
# the oracles, `NO_OBJECT` from the getters.
ACTION_UID_PATHS = {
    "action.get": ("uid", 0),
    "action.get_pointer": ("uid", 0),
    "action.get_mock": ("uid", 0),
    "action.is_resolved": ("uid", 0),
    "action.has_storage_permission": ("uid", 0),
    "action.exists": ("obj_id", 0),
}
NO_OBJECT = "there is no object with this id among yours and the hospital's assets"
# The blob writes a scientist may call, on its own blob entries only. syft looks an entry
# up with the caller's read permission, and the guard compared a write's size with the
# entry before that: another account's entry (an asset's among them) told its existence
# and exact size. Any entry the caller did not allocate is answered before anything else
# looks at it, with syft's own words for a missing one.
BLOB_WRITE_PATHS = {"blob_storage.write_to_disk": ("uid", 0)}
BLOB_WRITE_PATHS["blob_storage.mark_write_complete"] = ("uid", 0)
NO_BLOB = "No blob storage entry exists for uid: {}, or you have no permissions to read it"
OUTPUT_PERMISSION_PATH = "output.has_output_read_permissions"
STORING_PATHS = frozenset({"action.set", "blob_storage.allocate", "blob_storage.write_to_disk"})
# syft answers these with the datasite's own key, not the caller's: any scientist who knows
# another's code (or output policy) id would read its execution history (who ran it, when,
# the ids of its inputs, results and jobs). A scientist keeps only their own executions.
OWN_OUTPUT_PATHS = frozenset({"output.get_by_user_code_id", "output.get_by_output_policy_id"})
CODE_PATHS = frozenset({"code.request_code_execution", "code.submit"})
SUBMISSION_PATHS = CODE_PATHS | {"request.submit"}
MESSAGE_CHARS = 200
# What the current call's arguments decoded to (arrays and tables), for its quota.
_DECODED: ContextVar[int] = ContextVar("datasites_decoded", default=0)
# What the current call reserved against its account's quota, settled once syft answered:
# ("stored", row) and ("submission", row) are given back if syft refused or failed the
# call, ("pending", account) ends when it returns (the request is then in syft's store).
_RESERVED: ContextVar[list[tuple[str, Any]] | None] = ContextVar("datasites_reserved", default=None)


def _role(worker: Datasite, credentials: Any) -> Any:
    return worker.get_role_for_credentials(credentials=credentials)


def is_admin(role: Any) -> bool:
    from syft.service.user.user_roles import ServiceRole

    return role.value >= ServiceRole.DATA_OWNER.value


def access_refusal(role: Any, path: str, own_server: bool) -> str | None:
    """Why a caller of `role` may not call `path` here; None when it may."""
    from syft.service.user.user_roles import ServiceRole

    if is_admin(role):
        return None
    if not own_server:
        return "this datasite forwards no calls to other servers"
    allowed = SCIENTIST_PATHS if role == ServiceRole.DATA_SCIENTIST else GUEST_PATHS
    if path in allowed:
        return None
    if role == ServiceRole.DATA_SCIENTIST:
        return f"{path} is not offered to scientists at this hospital"
    return f"{path} needs an account at this hospital; ask its operator for one"


def policy_refusal(code: Any) -> str | None:
    """Why a submitted code's policies are not the built-in ones the library generates."""
    from syft.service.code.user_code import SubmitUserCode

    if not isinstance(code, SubmitUserCode):
        return "code must be submitted as new source (SubmitUserCode), not as a stored object"
    return builtin_policies_refusal(code)


def builtin_policies_refusal(code: Any) -> str | None:
    """Why a code (submitted or stored) does not use the library's built-in policies."""
    from syft.service.policy.policy import MixedInputPolicy, OutputPolicyExecuteCount

    if code.input_policy_type is not MixedInputPolicy:
        return "the code's input policy is not syft's built-in MixedInputPolicy"
    if code.output_policy_type is not OutputPolicyExecuteCount:
        return "the code's output policy is not syft's built-in OutputPolicyExecuteCount"
    return None


def _submitted_code(api_call: Any) -> Any:
    message = api_call.message
    values = [*message.args, *message.kwargs.values()]
    return values[0] if values else None


def code_digest(source: Any) -> str:
    return hashlib.sha256(str(source or "").encode("utf-8")).hexdigest()


class Guard:
    """The datasite's gate in front of syft's API dispatcher and request approval."""

    def __init__(self, worker: Datasite, audit: AuditLog) -> None:
        self.worker = worker
        self.audit = audit
        # A quota's check and its reservation are one step (no two calls pass one check);
        # submissions syft is still storing count as pending, by account.
        self._quota_lock = threading.Lock()
        self._submitting: dict[str, int] = {}

    def install(self) -> None:
        original = self.worker.handle_api_call_with_unsigned_result

        def handle(api_call: Any, *args: Any, **kwargs: Any) -> Any:
            # unsigned: syft refuses it itself (`hasattr(.., "message")` would decode it)
            if not hasattr(api_call, "serialized_message"):
                return original(api_call, *args, **kwargs)
            token = _DECODED.set(0)
            reserved = _RESERVED.set([])
            failed = True  # until syft accepted the call: its reservations are given back
            try:
                refusal = self.refusal(api_call)
                if refusal is not None:
                    from syft.service.response import SyftError

                    self._refused(api_call, refusal)
                    return SyftError(message=f"refused by this hospital: {refusal}.")
                unseen = self.unseen_action(api_call)
                if unseen is not None:
                    return unseen
                result = original(api_call, *args, **kwargs)
                failed = _is_error(result)
                self._record_submission(api_call, result)
                result = self._own_objects(api_call, result)
                return self._own_outputs(api_call, result)
            finally:
                self._settle(failed)
                _RESERVED.reset(reserved)
                _DECODED.reset(token)

        bound_decoding()
        self.worker.handle_api_call_with_unsigned_result = handle
        self._guard_apply()
        users_readable_by_themselves()
        self.migrate_users()

    def refusal(self, api_call: Any) -> str | None:
        """Why the call is refused before syft sees it; never raises."""
        try:
            role = _role(self.worker, api_call.credentials)
            if not is_admin(role):
                reason = self.decode_refusal(api_call)
                if reason is not None:
                    return reason
            message = api_call.message
            path = str(message.path)
            reason = access_refusal(role, path, message.server_uid == self.worker.id)
            if reason is not None or is_admin(role):
                return reason
            if path in CODE_PATHS:
                reason = policy_refusal(_submitted_code(api_call))
            if reason is None and path in OWN_OBJECT_PATHS:
                reason = own_type_refusal(path, message)
            asked_for = _argument(message, "user_verify_key", 1)
            if (
                reason is None
                and path == OUTPUT_PERMISSION_PATH
                and asked_for != api_call.credentials
            ):
                reason = "it answers for your own account only; ask with your own key"
            if reason is None and path == "request.submit":
                reason = self.foreign_code_refusal(api_call)
            if reason is None and path in STORING_PATHS | SUBMISSION_PATHS:
                reason = self.quota_refusal(api_call, path)
            return reason
        except Exception as error:
            log_unexpected(log, "could not check an API call; refused", error)
            return "the call could not be checked"

    def decode_refusal(self, api_call: Any) -> str | None:
        """Decode the call's message (syft's `api_call.message`) with its arrays and tables
        bounded by the caller's per-object quota; why not, if they would exceed it. An
        action object of zeros compresses about a hundredfold, so the bytes sent say
        nothing of what syft would hold; the bound is checked before the memory is taken."""
        try:
            quota = self.quota(self._who(api_call.credentials))
        except Exception:  # a policy being edited: its defaults bound the decoding
            log.warning("could not read the caller's quota; the default bounds its call")
            quota = QuotaPolicy()
        try:
            with decode_budget(quota.object_bytes) as budget:
                api_call.message  # noqa: B018 - syft decodes and keeps it here
        except DecodeRefused as error:
            return error.reason
        except DecodeLimit as error:
            path = _peek_path(api_call.serialized_message)
            if path in STORING_PATHS:
                return (
                    f"one object may hold at most {quota.max_object_mb:g} MB here "
                    f"({_mb(error.size)} or more once decoded); store less, or ask the "
                    "hospital's operator to raise your quota"
                )
            return (
                f"a call's arguments may hold at most {quota.max_object_mb:g} MB here once "
                f"decoded ({_mb(error.size)} or more); send less, or store it first"
            )
        _DECODED.set(budget.charged)
        return None

    # -- another account's objects ---------------------------------------------------------

    def unseen_action(self, api_call: Any) -> Any:
        """For `ACTION_UID_PATHS` called by a scientist on a uid that is neither its own
        object nor an asset (whether it exists or not): the answer, given without asking
        syft; None for every other call."""
        path = str(api_call.message.path)
        if path in BLOB_WRITE_PATHS:
            return self._unseen_blob(api_call, path)
        if path not in ACTION_UID_PATHS:
            return None
        key = api_call.credentials
        if is_admin(_role(self.worker, key)):
            return None
        name, index = ACTION_UID_PATHS[path]
        try:
            visible = self._visible_action(_argument(api_call.message, name, index), key)
        except Exception:
            visible = False
        if visible:
            return None
        if path in ACTION_ORACLE_PATHS:
            return False
        from syft.service.response import SyftError

        self._refused(api_call, NO_OBJECT)
        return SyftError(message=f"refused by this hospital: {NO_OBJECT}.")

    def _unseen_blob(self, api_call: Any, path: str) -> Any:
        """syft's "no such entry" for a blob write on an entry the caller did not allocate,
        exactly as for one that does not exist; None (syft goes on) for its own."""
        from syft.service.response import SyftError
        from syft.types.uid import UID

        key = api_call.credentials
        if is_admin(_role(self.worker, key)):
            return None
        uid = _argument(api_call.message, *BLOB_WRITE_PATHS[path])
        if not isinstance(uid, UID) or self._own_blob(uid, key) is not None:
            return None  # not a uid: syft finds nothing for it either
        return SyftError(message=NO_BLOB.format(uid))

    def _own_blob(self, uid: Any, key: Any) -> Any:
        """The blob entry `uid` if the account of `key` allocated it; None otherwise
        (whether it exists or not)."""
        try:
            entry = self.worker.services.blob_storage.stash.get_by_uid(
                self.worker.verify_key, uid=uid
            ).unwrap()
        except Exception:
            return None
        return entry if getattr(entry, "uploaded_by", None) == key else None

    def _status_owner(self, status: Any) -> Any:
        return _linked_code_owner(self.worker, status)

    def _own_objects(self, api_call: Any, result: Any) -> Any:
        """`OWN_OBJECT_PATHS` answer with the caller's own object only, the oracles of
        `ACTION_ORACLE_PATHS` say yes for the caller's own objects and the assets only."""
        path = str(api_call.message.path)
        if path not in OWN_OBJECT_PATHS | ACTION_ORACLE_PATHS or _is_error(result):
            return result
        key = api_call.credentials
        if is_admin(_role(self.worker, key)):
            return result
        if path in ACTION_ORACLE_PATHS:  # an unseen uid was answered before syft's look-up
            name, index = ACTION_UID_PATHS[path]
            uid = _argument(api_call.message, name, index)
            return result if self._visible_action(uid, key) else False
        value = getattr(result, "value", result)
        owner = getattr(value, OWNER_FIELDS.get(type(value).__name__, ""), None)
        if type(value).__name__ == STATUS_TYPE:
            owner = self._status_owner(value)
        if owner is not None and owner == key:
            return result
        from syft.service.response import SyftError

        reason = "it reads only your own requests and codes, and this is not one of them"
        self._refused(api_call, reason)
        return SyftError(message=f"refused by this hospital: {path} {reason}.")

    def foreign_code_refusal(self, api_call: Any) -> str | None:
        """A scientist's request names only its own codes: syft's reply to a request naming
        another account's code carried that code (its name and status)."""
        request = _argument(api_call.message, "request", 0)
        stash = self.worker.services.user_code.stash
        for change in list(getattr(request, "changes", None) or []):
            linked = getattr(change, "linked_user_code", None)
            if linked is None:
                continue
            try:
                code = stash.get_by_uid(self.worker.verify_key, uid=linked.object_uid).unwrap()
            except Exception:
                code = None
            if code is None or code.user_verify_key != api_call.credentials:
                return "a change names a code that is not yours; request your own code only"
        return None

    def _visible_action(self, uid: Any, key: Any) -> bool:
        """The caller holds a permission of its own on the action object, or it is one of
        the hospital's assets (listed to every scientist)."""
        from syft.service.action.action_permissions import ActionObjectPermission, ActionPermission
        from syft.types.uid import UID

        uid = getattr(uid, "id", uid)
        if not isinstance(uid, UID):
            return False
        stash = self.worker.services.action.stash
        for permission in (
            ActionPermission.OWNER,
            ActionPermission.READ,
            ActionPermission.WRITE,
            ActionPermission.EXECUTE,
        ):
            grant = ActionObjectPermission(uid=uid, permission=permission, credentials=key)
            if stash.has_permissions([grant]):
                return True
        return uid in self._asset_ids()

    def _asset_ids(self) -> set[Any]:
        datasets = self.worker.services.dataset.stash.get_all(self.worker.verify_key).unwrap()
        return {a.action_id for d in datasets for a in d.asset_list}

    def migrate_users(self) -> int:
        """Make every existing user readable by itself and the admin only; how many were
        readable by all."""
        from syft.service.action.action_permissions import (
            ActionObjectPermission,
            ActionObjectREAD,
            ActionPermission,
        )

        stash = self.worker.services.user.stash
        users = stash.get_all(self.worker.verify_key, has_permission=True).unwrap()
        widened = 0
        for user in users:
            everyone = ActionObjectPermission(uid=user.id, permission=ActionPermission.ALL_READ)
            if stash.has_permissions([everyone]):
                widened += 1
                stash.remove_permission(everyone)
            stash.add_permission(ActionObjectREAD(uid=user.id, credentials=user.verify_key))
        if widened:
            log.info("%d accounts were readable by every account; now by themselves only", widened)
        return widened

    # -- quotas ---------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(self.audit.path).parent

    def _book(self) -> QuotaBook:
        book = getattr(self, "_quota_book", None)
        if book is None:
            book = self._quota_book = QuotaBook(self.root)
        return book

    def quota(self, account: str) -> QuotaPolicy:
        """The account's quota, read again whenever policy.toml or quotas.json changed
        (every call by an account needs it, for what its arguments may decode to)."""
        stamps = tuple(_mtime(self.root / name) for name in (POLICY_FILE, QUOTAS_FILE))
        cached = getattr(self, "_quotas", None)
        if cached is None or cached[0] != stamps:
            cached = self._quotas = (stamps, Policy.load(self.root), {})
        _, policy, accounts = cached
        if account not in accounts:
            accounts[account] = policy.quota_for(self.root, account)
        return accounts[account]

    def quota_refusal(self, api_call: Any, path: str) -> str | None:
        """Why this storing or submitting call would take the caller past its quota."""
        account = self._who(api_call.credentials)
        quota = self.quota(account)
        if path in SUBMISSION_PATHS:
            return self._submission_refusal(api_call, account, quota)
        size = self._stored_size(api_call, path)
        if size is None:
            return "a blob's size must be a whole number of bytes; allocate what you write"
        if size > quota.object_bytes:
            return (
                f"one object may hold at most {quota.max_object_mb:g} MB here ({_mb(size)} "
                "sent); store less, or ask the hospital's operator to raise your quota"
            )
        if path == "blob_storage.write_to_disk":
            if self._own_blob(_argument(api_call.message, "uid", 0), api_call.credentials) is None:
                return None  # answered as missing (`_unseen_blob`), its data never decoded
            return self._write_refusal(api_call, size) or self._blob_decode_refusal(
                api_call, account, quota
            )
        return self._reserve_stored(account, size, quota, path)

    def _reserve_stored(self, account: str, size: int, quota: QuotaPolicy, what: str) -> str | None:
        """Reserve `size` bytes of the account's storage, or why not (the check and the
        reservation are one transaction; `_settle` gives it back if syft does not store)."""
        with self._quota_lock:
            reservation, stored = self._book().reserve(account, size, quota.stored_bytes, what)
        if reservation is None:
            return (
                f"your account may store at most {quota.max_stored_mb:g} MB here and holds "
                f"{_mb(stored)}; ask the hospital's operator to raise your quota"
            )
        _reserved("stored", reservation)
        return None

    def _settle(self, failed: bool) -> None:
        """After syft answered (or the call ended otherwise): give back what a refused or
        failed call reserved, and end its in-flight submission; never raises."""
        for kind, value in _RESERVED.get() or []:
            try:
                if kind == "pending":
                    with self._quota_lock:
                        left = self._submitting.get(value, 1) - 1
                        if left > 0:
                            self._submitting[value] = left
                        else:
                            self._submitting.pop(value, None)
                elif failed and kind == "stored":
                    self._book().release(value)
                elif failed and kind == "submission":
                    self._book().release_submission(value)
            except Exception as error:
                log_unexpected(log, "could not settle a call's quota reservation", error)

    def _stored_size(self, api_call: Any, path: str) -> int | None:
        message = api_call.message
        if path == "action.set":  # what its arrays decode to, if more than was sent
            return max(len(api_call.serialized_message), _DECODED.get())
        if path == "blob_storage.allocate":
            size = getattr(_argument(message, "obj", 0), "file_size", None)
            ok = isinstance(size, int) and not isinstance(size, bool) and size >= 0
            return size if ok else None
        data = _argument(message, "data", 1)
        return len(data) if isinstance(data, bytes | bytearray) else None

    def _write_refusal(self, api_call: Any, size: int) -> str | None:
        """A blob write holds at most what was allocated for it (and counted). Only the
        caller's own entry is looked at: another's, or none, is answered as missing
        (`_unseen_blob`) whatever the write's size, so no size is compared with it."""
        entry = self._own_blob(_argument(api_call.message, "uid", 0), api_call.credentials)
        if entry is None:
            return None
        if size > int(entry.file_size or 0):
            return (
                f"the write holds {_mb(size)}, more than the {_mb(entry.file_size or 0)} "
                "allocated for it; allocate the size you write"
            )
        return None

    def _blob_decode_refusal(self, api_call: Any, account: str, quota: QuotaPolicy) -> str | None:
        """A blob holding a serialized object counts what it decodes to, as `action.set`
        does: syft decodes it whenever the object is read (a 2 MB blob of zeros became
        200 MB in the datasite's memory). Its allocation was counted; what it decodes to
        beyond that is counted here, and the per-object quota bounds the whole."""
        from syft.serde.deserialize import _deserialize

        data = bytes(_argument(api_call.message, "data", 1))
        try:
            with decode_budget(quota.object_bytes) as budget:
                _deserialize(data, from_bytes=True)
        except DecodeRefused as error:
            return error.reason
        except DecodeLimit as error:
            return (
                f"one object may hold at most {quota.max_object_mb:g} MB here "
                f"({_mb(error.size)} or more once decoded); store less, or ask the "
                "hospital's operator to raise your quota"
            )
        except Exception:
            return None  # not a syft object: it holds its bytes
        excess = budget.charged - len(data)  # its bytes were counted at the allocation
        if excess <= 0:
            return None
        return self._reserve_stored(account, excess, quota, "blob_storage.write_to_disk")

    def _submission_refusal(self, api_call: Any, account: str, quota: QuotaPolicy) -> str | None:
        """Count the submission against the hour's and the pending quota, or why not. Both
        are checked and reserved under one lock: a submission syft is still storing counts
        as pending (ten at once against 2 pending left 3 pending)."""
        with self._quota_lock:
            reservation, recent = self._book().reserve_submission(
                account, quota.max_submissions_per_hour
            )
            if reservation is None:
                return (
                    f"your account submitted {recent} requests in the last hour, the most "
                    "this hospital takes; submit again later, or ask its operator to raise "
                    "your quota"
                )
            pending = self._pending(api_call.credentials) + self._submitting.get(account, 0)
            if pending >= quota.max_pending_requests:
                self._book().release_submission(reservation)
                return (
                    f"{pending} of your requests wait for this hospital's decision, the most "
                    "it keeps per account; wait for its decisions, or ask its operator to "
                    "raise your quota"
                )
            if _RESERVED.get() is not None:  # inside a call: `_settle` ends it
                self._submitting[account] = self._submitting.get(account, 0) + 1
                _reserved("pending", account)
        _reserved("submission", reservation)
        return None

    def _pending(self, key: Any) -> int:
        from syft.service.context import AuthedServiceContext
        from syft.service.request.request import RequestStatus

        context = AuthedServiceContext(server=self.worker, credentials=self.worker.verify_key)
        requests = self.worker.services.request.stash.get_all_for_verify_key(
            self.worker.verify_key, verify_key=key
        ).unwrap()
        pending = 0
        for request in requests:
            try:
                status = request.get_status(context)
            except Exception:
                status = RequestStatus.PENDING
            pending += status == RequestStatus.PENDING
        return pending

    def _own_outputs(self, api_call: Any, result: Any) -> Any:
        """For `OWN_OUTPUT_PATHS` called by a scientist, only the caller's executions (syft
        wraps the list in a `SyftSuccess`)."""
        value = getattr(result, "value", None)
        if str(api_call.message.path) not in OWN_OUTPUT_PATHS or not isinstance(value, list):
            return result
        if is_admin(_role(self.worker, api_call.credentials)):
            return result
        key = api_call.credentials
        own = [o for o in value if getattr(o, "executing_user_verify_key", None) == key]
        return result.model_copy(update={"value": own})

    def _who(self, credentials: Any) -> str:
        return caller(self.worker, credentials, unknown="guest")[0]

    def _refused(self, api_call: Any, reason: str) -> None:
        try:
            path = _path_of(api_call)[:MESSAGE_CHARS]
            self.audit.append(
                Event.REFUSED,
                layer="guard",
                path=path,
                user=self._who(api_call.credentials),
                reason=reason,
            )
        except Exception as error:
            log_unexpected(log, "could not write the audit entry for a refused call", error)

    def _record_submission(self, api_call: Any, result: Any) -> None:
        """One `request_received` entry per request or code submission, never failing it."""
        try:
            path = str(api_call.message.path)
            if path not in SUBMISSION_PATHS or is_admin(_role(self.worker, api_call.credentials)):
                return
            value = getattr(result, "value", result)
            changes = list(getattr(value, "changes", []) or [])
            self.audit.append(
                Event.REQUEST_RECEIVED,
                path=path,
                request=str(getattr(value, "id", "")),
                user=self._who(api_call.credentials),
                changes=len(changes),
                kinds=[type(c).__name__ for c in changes],
                code_sha256=self._digests(api_call, changes),
                accepted=not _is_error(result),
            )
        except Exception as error:
            log_unexpected(log, "could not write the audit entry for a submission", error)

    def _digests(self, api_call: Any, changes: list[Any]) -> list[str]:
        code = _submitted_code(api_call)
        if str(api_call.message.path) in CODE_PATHS and hasattr(code, "code"):
            return [code_digest(code.code)]
        digests = []
        for change in changes:
            linked = getattr(change, "linked_user_code", None)
            if linked is not None:
                digests.append(code_digest(self._raw_code(linked.object_uid)))
        return digests

    def _raw_code(self, uid: Any) -> str:
        try:
            code = self.worker.services.user_code.stash.get_by_uid(
                credentials=self.worker.verify_key, uid=uid
            ).unwrap()
            return str(code.raw_code)
        except Exception:
            return ""

    def _guard_apply(self) -> None:
        """Patch `Request.apply`, the one place syft applies a request's changes."""
        from syft.service.request.request import Request
        from syft.types.errors import SyftException

        original = Request.apply
        if getattr(original, "guarded", False):
            return
        guard = self

        def apply(request: Any, context: Any) -> Any:
            reason = guard.apply_refusal(request, context)
            if reason is not None:
                guard.audit.append(
                    Event.REFUSED,
                    layer="guard",
                    path="request.apply",
                    request=str(request.id),
                    reason=reason,
                )
                raise SyftException(public_message=f"refused by this hospital: {reason}.")
            return original(request, context)

        apply.guarded = True  # type: ignore[attr-defined]
        Request.apply = apply

    def apply_refusal(self, request: Any, context: Any) -> str | None:
        """Why applying `request` is refused: anything but one code approval, unless the
        datasite's admin asked for it."""
        from syft.service.request.request import UserCodeStatusChange

        if is_admin(_role(self.worker, request.requesting_user_verify_key)):
            return None
        changes = list(request.changes)
        kinds = ", ".join(type(c).__name__ for c in changes) or "none"
        if len(changes) != 1 or type(changes[0]) is not UserCodeStatusChange:
            return (
                f"a scientist's request may carry exactly one change, the approval of its "
                f"code; this one carries {len(changes)} ({kinds})"
            )
        return self._code_change_refusal(request, changes[0], context)

    def _code_change_refusal(self, request: Any, change: Any, context: Any) -> str | None:
        code = change.linked_user_code.resolve_with_context(context).unwrap()
        if code.status_link is None or change.linked_obj.object_uid != code.status_link.object_uid:
            return "the change approves the status of another code than the one it names"
        if code.user_verify_key != request.requesting_user_verify_key:
            return "the code was submitted by another user than the requester"
        return builtin_policies_refusal(code)


def _reserved(kind: str, value: Any) -> None:
    """Note a reservation of the current call (see `_RESERVED`)."""
    reserved = _RESERVED.get()
    if reserved is not None:
        reserved.append((kind, value))


def _is_error(result: Any) -> bool:
    from syft.service.response import SyftError

    return isinstance(result, SyftError | Exception)


def _argument(message: Any, name: str, index: int) -> Any:
    """A call's argument by keyword, or by position."""
    if name in message.kwargs:
        return message.kwargs[name]
    args = list(message.args)
    return args[index] if len(args) > index else None


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _path_of(api_call: Any) -> str:
    """The call's path, without decoding its arguments if syft has not (a refused call's
    arguments may be too large to decode)."""
    decoded = getattr(api_call, "cached_deseralized_message", None)  # syft's spelling
    if decoded is not None:
        return str(decoded.path)
    return _peek_path(api_call.serialized_message)


def _peek_path(message: bytes) -> str:
    """A serialized `SyftAPICall`'s path, decoding nothing else ('' if it has none)."""
    from syft.serde.deserialize import _deserialize
    from syft.serde.recursive import combine_bytes, recursive_scheme

    try:
        words = len(message) // 8 + 1024
        with recursive_scheme.from_bytes(message, traversal_limit_in_words=words) as inner:
            for name, data in zip(inner.fieldsName, inner.fieldsData, strict=False):
                if name == "path":
                    path = _deserialize(combine_bytes(data), from_bytes=True)
                    return path if isinstance(path, str) else ""
    except Exception:
        return ""
    return ""


def _mb(size: int) -> str:
    return f"{size / MB:,.1f} MB" if size >= MB // 10 else f"{size:,} bytes"


def _linked_code_owner(worker: Any, status: Any) -> Any:
    """The key that submitted the code a status collection belongs to (None if unknown)."""
    try:
        uid = status.user_code_link.object_uid
        code = worker.services.user_code.stash.get_by_uid(
            credentials=worker.verify_key, uid=uid
        ).unwrap()
    except Exception:
        return None
    return code.user_verify_key


def own_type_refusal(path: str, message: Any) -> str | None:
    """`OWN_OBJECT_PATHS` read requests and codes only (a user, never)."""
    if path == "migration._get_object":
        kind = _argument(message, "object_type", 1)
    else:
        kind = getattr(_argument(message, "linked_obj", 0), "object_type", None)
    if getattr(kind, "__name__", None) in (*OWNER_FIELDS, STATUS_TYPE):
        return None
    return "it reads only your own requests and codes here"


def users_readable_by_themselves() -> None:
    """syft's `UserService._add_user` grants ALL_READ on every new user (its signing key,
    password hash and salt among the fields); here a user is readable by itself and the
    admin only. Idempotent."""
    from syft.service.action.action_permissions import ActionObjectREAD
    from syft.service.user.user_service import UserService
    from syft.store.document_store_errors import StashException
    from syft.types.result import as_result

    if getattr(UserService._add_user, "guarded", False):
        return

    @as_result(StashException)
    def _add_user(service: Any, credentials: Any, user: Any) -> Any:
        own = ActionObjectREAD(uid=user.id, credentials=user.verify_key)
        return service.stash.set(credentials=credentials, obj=user, add_permissions=[own]).unwrap()

    _add_user.guarded = True  # type: ignore[attr-defined]
    UserService._add_user = _add_user
