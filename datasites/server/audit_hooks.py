"""Audit entries for what scientists try at the syft layer, before any study code runs.

Most attacks on a datasite never reach `datasites.runtime.execute`: syft itself refuses reading a
private asset, running code nobody approved, a login with the wrong password or a
registration while it is off. The operator should still see each attempt. The datasite
wraps syft's API dispatcher (every signed API call passes through
`handle_api_call_with_unsigned_result`) and its login and register routes, and appends one
audit entry per refusal and one per new code request. Calls by the hospital's own admin are
not recorded (the operator's commands record their own decisions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from datasites.contract.syft_io import syft_message
from datasites.site.audit import AuditLog, Event

if TYPE_CHECKING:
    from fastapi import FastAPI, Request, Response
    from syft.server.datasite import Datasite

log = logging.getLogger("datasites.server.serve")
MESSAGE_CHARS = 200
LOGIN_FAILED_REPLY = "Invalid login: the email or the password is wrong."
PASSWORD_RESET_REPLY = (
    "Password resets are done by this hospital's operator; ask them for a new password."
)
# A failed login answers no sooner than this, so its timing tells no more than its text
# (syft hashes the password only for accounts that exist) and guessing is slow.
FAILED_LOGIN_SECONDS = 1.0


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:MESSAGE_CHARS] if lines else ""


def _message(error: Any) -> str:
    return _first_line(syft_message(error))


def caller(worker: Datasite, credentials: Any, *, unknown: str = "unknown") -> tuple[str, bool]:
    """(email, is_admin) of the caller; (`unknown`, False) for a key with no account."""
    from syft.service.user.user_roles import ServiceRole

    try:
        user = worker.services.user.stash.get_by_verify_key(
            credentials=worker.verify_key, verify_key=credentials
        ).unwrap()
    except Exception:
        return unknown, False
    return str(user.email), user.role.value >= ServiceRole.DATA_OWNER.value


def audit_api_calls(worker: Datasite, audit: AuditLog) -> None:
    """Record API calls of non-admin callers that syft itself refused."""
    from syft.service.response import SyftError

    original = worker.handle_api_call_with_unsigned_result

    def handle(api_call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = original(api_call, *args, **kwargs)
        except Exception as error:
            _record(worker, audit, api_call, _message(error))
            raise
        if isinstance(result, SyftError):
            _record(worker, audit, api_call, _message(result))
        return result

    worker.handle_api_call_with_unsigned_result = handle


def _record(worker: Datasite, audit: AuditLog, api_call: Any, refused: str) -> None:
    """Never fails the call: an audit problem is logged, the scientist sees syft's answer."""
    try:
        path = str(getattr(getattr(api_call, "message", api_call), "path", ""))
        email, admin = caller(worker, api_call.credentials)
        if not admin:
            audit.append(Event.REFUSED, layer="syft", path=path, user=email, reason=refused)
    except Exception:
        log.exception("could not write the audit entry for an API call")


def audit_auth_routes(app: FastAPI, worker: Datasite, audit: AuditLog, prefix: str) -> None:
    """Record refused logins and registrations, and answer them alike for every account.

    syft's replies tell an unknown email from a wrong password, and its password reset tells
    which accounts are admins (and notifies the admin on every call); here a failed login
    gets one reply whatever the cause, no sooner than `FAILED_LOGIN_SECONDS`, and password
    resets are the operator's business: one fixed reply for every email, nothing sent.
    """
    routes = {f"{prefix}/login": "login", f"{prefix}/register": "register"}
    resets = {
        f"{prefix}/forgot_password": "forgot_password",
        f"{prefix}/reset_password": "reset_password",
    }

    @app.middleware("http")
    async def audit_auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        from fastapi import Response as PlainResponse

        path = request.url.path
        if path in resets:
            email = await _email_of(request, "login") if path.endswith("forgot_password") else ""
            _append(
                audit,
                Event.REFUSED,
                layer="guard",
                path=resets[path],
                user=email,
                reason="password resets are done by the hospital's operator",
            )
            return PlainResponse(
                content=_error_bytes(PASSWORD_RESET_REPLY), media_type="application/octet-stream"
            )
        kind = routes.get(path)
        if kind is None:
            return await call_next(request)
        started = time.monotonic()
        email = await _email_of(request, kind)
        try:
            response = await call_next(request)
            body = b"".join([chunk async for chunk in response.body_iterator])
        except Exception:  # e.g. the admin, whose key syft no longer holds to hand out
            log.info("a %s failed inside syft", kind)
            response, body = PlainResponse(content=b"", status_code=200), b""
        failed = _record_auth(audit, kind, email, body)
        if failed and kind == "login":
            body = _error_bytes(LOGIN_FAILED_REPLY)
            await asyncio.sleep(max(0.0, FAILED_LOGIN_SECONDS - (time.monotonic() - started)))
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return PlainResponse(content=body, status_code=response.status_code, headers=headers)


def _error_bytes(message: str) -> bytes:
    from syft.serde.serialize import _serialize
    from syft.service.response import SyftError

    return _serialize(SyftError(message=message), to_bytes=True)


def _append(audit: AuditLog, event: str, **fields: Any) -> None:
    try:
        audit.append(event, **fields)
    except Exception:
        log.exception("could not write the audit entry for %s", event)


async def _email_of(request: Request, kind: str) -> str:
    """The email the caller claimed: JSON for login, a serialized UserCreate to register."""
    try:
        raw = await request.body()
        if kind == "login":
            import json

            return str(json.loads(raw).get("email", ""))[:254]
        from syft.serde.deserialize import _deserialize

        return str(getattr(_deserialize(raw, from_bytes=True), "email", ""))[:254]
    except Exception:
        return ""


def _record_auth(audit: AuditLog, kind: str, email: str, body: bytes) -> bool:
    """Record the outcome; True when syft refused the login or registration."""
    from syft.serde.deserialize import _deserialize
    from syft.service.response import SyftError

    try:
        answer = _deserialize(body, from_bytes=True)
    except Exception:
        answer = None
    try:
        if isinstance(answer, SyftError):
            audit.append(
                Event.REFUSED, layer="syft", path=kind, user=email, reason=_message(answer)
            )
        elif answer is None:
            audit.append(
                Event.REFUSED,
                layer="syft",
                path=kind,
                user=email,
                reason=f"the {kind} failed inside syft",
            )
        elif kind == "register":
            audit.append(Event.ACCOUNT_REGISTERED, user=email)
    except Exception:
        log.exception("could not write the audit entry for a %s", kind)
    return isinstance(answer, SyftError) or answer is None
