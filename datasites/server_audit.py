"""Audit entries for what scientists try at the syft layer, before any study code runs.

Most attacks on a datasite never reach `datasites.runtime`: syft itself refuses reading a
private asset, running code nobody approved, a login with the wrong password or a
registration while it is off. The operator should still see each attempt. The datasite
wraps syft's API dispatcher (every signed API call passes through
`handle_api_call_with_unsigned_result`) and its login and register routes, and appends one
audit entry per refusal and one per new code request. Calls by the hospital's own admin are
not recorded (the operator's commands record their own decisions).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from datasites.audit import AuditLog

if TYPE_CHECKING:
    from fastapi import FastAPI, Request, Response
    from syft.server.datasite import Datasite

log = logging.getLogger("datasites.server")
REQUEST_PATHS = frozenset({"code.request_code_execution"})
MESSAGE_CHARS = 200


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:MESSAGE_CHARS] if lines else ""


def _message(error: Any) -> str:
    return _first_line(getattr(error, "public_message", None) or getattr(error, "message", error))


def _who(worker: Datasite, credentials: Any) -> tuple[str, bool]:
    """(email, is_admin) of the caller; ("unknown", False) for a key with no account."""
    from syft.service.user.user_roles import ServiceRole

    try:
        user = worker.services.user.stash.get_by_verify_key(
            credentials=worker.verify_key, verify_key=credentials
        ).unwrap()
    except Exception:
        return "unknown", False
    return str(user.email), user.role.value >= ServiceRole.DATA_OWNER.value


def audit_api_calls(worker: Datasite, audit: AuditLog) -> None:
    """Record refused API calls and new code requests of non-admin callers."""
    from syft.service.response import SyftError

    original = worker.handle_api_call_with_unsigned_result

    def handle(api_call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = original(api_call, *args, **kwargs)
        except Exception as error:
            _record(worker, audit, api_call, refused=_message(error))
            raise
        if isinstance(result, SyftError):
            _record(worker, audit, api_call, refused=_message(result))
        else:
            _record(worker, audit, api_call, result=result)
        return result

    worker.handle_api_call_with_unsigned_result = handle


def _record(worker: Datasite, audit: AuditLog, api_call: Any, *, refused: str | None = None,
            result: Any = None) -> None:  # fmt: skip
    """Never fails the call: an audit problem is logged, the scientist sees syft's answer."""
    try:
        path = str(getattr(api_call.message, "path", ""))
        if refused is None and path not in REQUEST_PATHS:
            return
        email, admin = _who(worker, api_call.credentials)
        if admin:
            return
        if refused is not None:
            audit.append("refused", layer="syft", path=path, user=email, reason=refused)
        else:
            request = getattr(result, "value", result)
            audit.append("request_received", request=str(getattr(request, "id", "")),
                         user=email)  # fmt: skip
    except Exception:
        log.exception("could not write the audit entry for an API call")


def audit_auth_routes(app: FastAPI, worker: Datasite, audit: AuditLog, prefix: str) -> None:
    """Record refused logins and registrations (syft answers them with a serialized error)."""
    routes = {f"{prefix}/login": "login", f"{prefix}/register": "register"}

    @app.middleware("http")
    async def audit_auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        kind = routes.get(request.url.path)
        if kind is None:
            return await call_next(request)
        email = await _email_of(request, kind)
        response = await call_next(request)
        body = b"".join([chunk async for chunk in response.body_iterator])
        _record_auth(audit, kind, email, body)
        from fastapi import Response as PlainResponse

        return PlainResponse(content=body, status_code=response.status_code,
                             headers=dict(response.headers))  # fmt: skip


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


def _record_auth(audit: AuditLog, kind: str, email: str, body: bytes) -> None:
    from syft.serde.deserialize import _deserialize
    from syft.service.response import SyftError

    try:
        answer = _deserialize(body, from_bytes=True)
    except Exception:
        answer = None
    try:
        if isinstance(answer, SyftError):
            audit.append("refused", layer="syft", path=kind, user=email, reason=_message(answer))
        elif kind == "register":
            audit.append("account_registered", user=email)
    except Exception:
        log.exception("could not write the audit entry for a %s", kind)
