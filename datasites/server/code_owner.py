"""Tell the runtime whose code it runs: the account that submitted it, as syft verified it.

syft runs approved code through `execute_byte_code(code_item, kwargs, context)`, where
`code_item.user_verify_key` is the key that signed the code's submission (the guard checks
that the request approving it came from the same key, and key rotation rewrites it). This
wraps that one function so the run happens `acting_as` the account of that key
(`datasites.site.caller`); the runtime keys everything by it. A code whose key has no
account (its user was removed) runs for nobody, and the runtime refuses it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from datasites.site.caller import acting_as

_MARK = "_datasites_owner_hook"


def install() -> None:
    """Wrap syft's `execute_byte_code` where the action service calls it (idempotent)."""
    from syft.service.action import action_service

    original = action_service.execute_byte_code
    if getattr(original, _MARK, False):
        return

    def execute_byte_code(code_item: Any, kwargs: dict[str, Any], context: Any) -> Any:
        email = owner_email(context, code_item.user_verify_key)
        scope = acting_as(email) if email else contextlib.nullcontext()
        with scope:
            return original(code_item, kwargs, context)

    setattr(execute_byte_code, _MARK, True)
    action_service.execute_byte_code = execute_byte_code


def owner_email(context: Any, verify_key: Any) -> str | None:
    """The email of the account holding `verify_key`, or None if none does."""
    server = context.server
    try:
        user = server.services.user.stash.get_by_verify_key(
            credentials=server.verify_key, verify_key=verify_key
        ).unwrap()
    except Exception:
        return None
    return str(user.email) or None
