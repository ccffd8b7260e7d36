"""The datasite's route for a secure study's light phases, beside syft's API.

A secure round's advertise, share, confirm and unmask phases read no private row; through
syft's code execution each cost about half a second of syft's own work, so a secure round of
a light model took twice a plain one (issue 26). The scientist signs them as one JSON call
(`datasites.contract.phase_call`) and posts it to `POST /api/v2/secure_phase`, which the
gate bounds like any small body and charges to the caller's address. Here, in order:

1. the envelope is well formed, signed by the key it names, for this datasite, and current;
2. the key is a scientist's account here (no guest, no operator, no removed account);
3. that account has a code for the study whose syft status at this datasite is approved,
   whose policies are syft's built-in ones (`guard.builtin_policies_refusal`), and whose
   source is exactly the study template of its own literal plan
   (`contract.template.template_plan`): so these phases run exactly what syft would;
4. the phases run through the runtime's own entry (`runtime.execute.execute_light`), for
   that account (`site.caller.acting_as`), answered once, refused and audited as through
   syft.

Every refusal before the runtime is one sentence, the same whether a study does not exist,
is another account's or is not approved here (no oracle), and is audited as a refusal of
this route. The mask phase, which reads the rows syft hands to approved code, stays a syft
call.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from datasites.contract.phase_call import PhaseCall, PhaseCallError, open_call, reply_body
from datasites.contract.template import function_name, template_plan
from datasites.runtime.execute import execute_light
from datasites.server.gate import Buckets
from datasites.server.guard import builtin_policies_refusal
from datasites.server.refusals import SOURCE, log_unexpected
from datasites.site.audit import AuditLog, Event
from datasites.site.caller import acting_as

if TYPE_CHECKING:
    from fastapi import APIRouter
    from syft.server.datasite import Datasite

PATH = "/secure_phase"
MAX_CODES = 8  # of one account with one study's function name, newest first
MAX_SOURCE_CHARS = 64 * 1024  # a study template is a few kB
MAX_PLANS = 256
# Phase calls an account may keep up (a round makes two per hospital).
ACCOUNT_RATE, ACCOUNT_BURST = 20.0, 100.0
_ACCOUNTS = Buckets(ACCOUNT_RATE, ACCOUNT_BURST)
_PLANS: OrderedDict[tuple[str, str], dict[str, Any] | None] = OrderedDict()
_PLANS_LOCK = threading.Lock()
NO_STUDY = "no approved study of yours by that id at this hospital; submit it and ask its operator"
log = logging.getLogger("datasites.server.phase_route")


class Refusal(Exception):
    """The call is refused before the runtime; `reason` is one sentence for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def phase_router(worker: Datasite, audit: AuditLog) -> APIRouter:
    """The FastAPI router serving `PATH` (mounted under the API prefix); the work runs in
    the server's thread pool, as syft's own calls do, not on its event loop."""
    from fastapi import APIRouter, Response
    from starlette.concurrency import run_in_threadpool

    async def secure_phase(request: Any) -> Response:
        body = await request.body()  # the gate has bounded it
        reply = await run_in_threadpool(answer, worker, audit, body)
        return Response(content=reply_body(reply), media_type="application/json")

    router = APIRouter()
    # A plain Starlette route: the handler reads the raw body, nothing is injected.
    router.add_route(PATH, secure_phase, methods=["POST"])
    return router


def answer(worker: Datasite, audit: AuditLog, body: bytes) -> dict[str, Any]:
    """The reply to one posted call: the runtime's, or a refusal with `error`."""
    name, who = worker.name, {"user": "guest"}
    try:
        call = open_call(body, str(worker.verify_key))
        who["study"] = call.study
        email = _scientist(worker, call.key)
        who["user"] = email
        SOURCE.set(f"account:{email}")  # this thread's refusals are the account's
        with _PLANS_LOCK:  # the buckets are not thread-safe on their own
            allowed = _ACCOUNTS.take(email)
        if not allowed:
            raise Refusal("too many phase calls from this account; try again in a moment")
        plan = _approved_plan(worker, call)
    except (PhaseCallError, Refusal) as error:
        reason = (error.reason if isinstance(error, Refusal) else str(error)).rstrip(".")
        _refused(audit, reason, who)
        return {
            "hospital": name,
            "error": f"refused by this hospital: {reason}.",
            "refused": "Route",
        }
    except Exception as error:
        _log_unexpected(error)
        _refused(audit, "the call could not be checked", who)
        return {"hospital": name, "error": "the call could not be checked.", "refused": "Route"}
    with acting_as(email):
        return execute_light(plan, {"batch": call.batch})


def _scientist(worker: Datasite, key: str) -> str:
    """The email of the scientist account holding `key`; Refusal for anyone else."""
    from syft.server.credentials import SyftVerifyKey
    from syft.service.user.user_roles import ServiceRole

    verify_key = SyftVerifyKey.from_string(key)
    role = worker.get_role_for_credentials(credentials=verify_key)
    if role != ServiceRole.DATA_SCIENTIST:
        raise Refusal("this route serves scientists' accounts at this hospital only")
    try:
        user = worker.services.user.stash.get_by_verify_key(
            credentials=worker.verify_key, verify_key=verify_key
        ).unwrap()
    except Exception:
        raise Refusal("this route serves scientists' accounts at this hospital only") from None
    return str(user.email)


def _approved_plan(worker: Datasite, call: PhaseCall) -> dict[str, Any]:
    """The literal plan of the caller's approved template code for the study.

    Only the caller's own codes of that name are read (syft's permission filter, as the
    caller), newest first and at most `MAX_CODES`; a code's source is parsed only once it
    is approved here, and each parse is kept (a pending code of any size costs nothing)."""
    from syft.server.credentials import SyftVerifyKey
    from syft.service.context import AuthedServiceContext

    key = SyftVerifyKey.from_string(call.key)
    name = function_name(call.study)
    codes = worker.services.user_code.stash.get_all(
        credentials=key,
        filters={"service_func_name": name},
        sort_order="desc",
        limit=MAX_CODES,
    ).unwrap()
    context = AuthedServiceContext(server=worker, credentials=worker.verify_key)
    for code in codes:
        if code.user_verify_key != key or builtin_policies_refusal(code) is not None:
            continue
        if not code.get_status(context).unwrap().get_is_approved(context):
            continue
        plan = _template(str(code.id), code.raw_code, name)
        if plan is not None and plan.get("study_id") == call.study:
            return plan
    raise Refusal(NO_STUDY)


def _template(code_id: str, source: Any, name: str) -> dict[str, Any] | None:
    """`template_plan` of an approved code's source, parsed once per code and source."""
    if not isinstance(source, str) or len(source) > MAX_SOURCE_CHARS:
        return None
    key = (code_id, hashlib.sha256(source.encode("utf-8", "replace")).hexdigest())
    with _PLANS_LOCK:
        if key in _PLANS:
            _PLANS.move_to_end(key)
            return copy.deepcopy(_PLANS[key])
    plan = template_plan(source, name)
    with _PLANS_LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > MAX_PLANS:
            _PLANS.popitem(last=False)
    return copy.deepcopy(plan)


def _refused(audit: AuditLog, reason: str, who: dict[str, str]) -> None:
    try:
        audit.append(Event.REFUSED, layer="route", path="secure_phase", reason=reason[:300], **who)
    except Exception:
        log.exception("could not write the audit entry for a refused phase call")


def _log_unexpected(error: Exception) -> None:
    """Log an unexpected failure: with its traceback at most once a minute per kind, so
    that hostile input cannot grow the datasite's log by a traceback a call."""
    log_unexpected(log, "could not check a secure phase call; refused", error)
