"""Every change a request would make if approved, and why each one disqualifies it.

syft's `request.submit` accepts any list of changes from any caller, and syft's
`Request.approve()` applies all of them: code approvals, READ permissions on private assets,
role changes, worker images. Reading `request.code` reviews only the first code change. A
request is therefore eligible for approval only if it carries exactly one change, the
approval of one code:

- its code is the vetted template (checked by `datasites.governance.vetting`, elsewhere);
- the change approves that code's own status, for the code's own submitter;
- its input policy is the one the scientist library generates: syft's `MixedInputPolicy`
  on this datasite, binding `train` and `test` to one dataset's own `train` and `test`
  assets and leaving only `weights` (a dict) to the caller;
- its output policy is syft's built-in `OutputPolicyExecuteCount` (a custom policy class
  is code that syft runs inside the datasite), with no nested codes, no datasite handle
  and the default worker pool.

Everything here reads syft objects as data on the operator's side; nothing is executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ARGUMENTS = ("train", "test", "weights")
DEFAULT_POOL = "default-pool"
OUTPUT_KWARGS = frozenset({"limit", "id"})
MAX_EXECUTIONS = 10_000


@dataclass(frozen=True)
class ChangeView:
    """One change of a request: what it would do, and what disqualifies it (None: nothing)."""

    kind: str
    summary: str
    problem: str | None = None

    def line(self) -> str:
        return f"{self.kind}: {self.summary}" + (f"  <- {self.problem}" if self.problem else "")


@dataclass(frozen=True)
class Site:
    """What the checks compare against: this datasite's id and its assets' action ids."""

    server_id: str
    assets: Mapping[str, tuple[str, str]]  # dataset -> (train action id, test action id)


@dataclass(frozen=True)
class RequestShape:
    """A request's changes, the one code change (if any) and the problems found."""

    changes: tuple[ChangeView, ...]
    code: Any  # the UserCode of the first code change, or None
    problems: tuple[str, ...]


def inspect_request(request: Any, site: Site, task: str | None) -> RequestShape:
    """Read every change of `request`; `task` is the plan's dataset, if a plan was found."""
    changes = list(getattr(request, "changes", None) or [])
    views: list[ChangeView] = []
    code = None
    for change in changes:
        view, found = _view(change, request, site, task)
        if found is not None and code is not None:
            view = ChangeView(
                view.kind,
                view.summary,
                "a second code approval; a request "
                "approves one code, reviewed as the request's code",
            )
        views.append(view)
        code = code if code is not None else found
    problems = [f"change {i + 1} ({v.kind}): {v.problem}" for i, v in enumerate(views) if v.problem]
    if len(changes) != 1:
        problems.insert(
            0,
            f"the request carries {len(changes)} changes; only a request with "
            "exactly one, the approval of its code, can be approved",
        )
    return RequestShape(tuple(views), code, tuple(problems))


def _view(change: Any, request: Any, site: Site, task: str | None) -> tuple[ChangeView, Any]:
    from syft.service.request.request import UserCodeStatusChange

    kind = type(change).__name__
    if type(change) is not UserCodeStatusChange:
        return ChangeView(kind, _describe(change), _foreign(change)), None
    try:
        code = change.code
    except Exception:
        return ChangeView(kind, "approves a code that cannot be read", "its code is missing"), None
    name = str(getattr(code, "service_func_name", "?"))
    problem = code_change_problem(change, code, request, site, task)
    return ChangeView(kind, f"approves the code {name}", problem), code


def _foreign(change: Any) -> str:
    """Why a change other than a code approval is never approved here."""
    kind = type(change).__name__
    if kind == "ActionStoreChange":
        return "it grants a permission on stored data; only the operator grants those"
    if kind in ("ObjectMutation", "EnumMutation"):
        return "it changes a stored object (for example a user's role); never by request"
    if kind == "SyncedUserCodeStatusChange":
        return "it is a low-side sync change; this datasite does not sync"
    return "it is not the approval of one code; only code approvals are reviewed here"


def _describe(change: Any) -> str:
    linked = getattr(change, "linked_obj", None)
    target = getattr(linked, "object_type", None)
    target_name = getattr(target, "__name__", str(target)) if target is not None else "?"
    uid = str(getattr(linked, "object_uid", "?"))
    if type(change).__name__ == "ActionStoreChange":
        permission = getattr(getattr(change, "apply_permission_type", None), "name", "?")
        return f"grants {permission} on {target_name} {uid}"
    attr = getattr(change, "attr_name", None)
    if attr is not None:
        return f"sets {attr} of {target_name} {uid}"
    return f"acts on {target_name} {uid}"


def code_change_problem(
    change: Any, code: Any, request: Any, site: Site, task: str | None
) -> str | None:
    """Why this code approval is not the one the scientist library generates; None if it is."""
    from syft.service.code.user_code import UserCodeStatus

    checks = (
        (change.value == UserCodeStatus.APPROVED, "it does not ask for approval"),
        (_same_uid(change.linked_user_code.object_uid, code.id), "it names another code"),
        (
            code.status_link is not None
            and _same_uid(change.linked_obj.object_uid, code.status_link.object_uid),
            "it approves the status of another code than the one it names",
        ),
        (
            code.user_verify_key == request.requesting_user_verify_key,
            "the code was submitted by another user than the requester",
        ),
        (
            list(code.input_kwargs or []) == list(ARGUMENTS),
            "the function's arguments are not (train, test, weights)",
        ),
        (not code.nested_codes, "the code launches nested codes"),
        (not getattr(code, "uses_datasite", False), "the code asks for the datasite's client"),
        (code.worker_pool_name in (None, DEFAULT_POOL), "the code asks for a custom worker pool"),
    )
    failed = [reason for ok, reason in checks if not ok]
    return (
        (failed[0] if failed else None)
        or output_policy_problem(code)
        or input_policy_problem(code, site, task)
    )


def output_policy_problem(code: Any) -> str | None:
    from syft.service.policy.policy import OutputPolicyExecuteCount

    if code.output_policy_type is not OutputPolicyExecuteCount:
        return "its output policy is a custom class, which syft would run inside this datasite"
    kwargs = code.output_policy_init_kwargs or {}
    limit = kwargs.get("limit")
    if not set(kwargs) <= OUTPUT_KWARGS or not _small_int(limit):
        return "its output policy's arguments are not an execution limit"
    return None


def input_policy_problem(code: Any, site: Site, task: str | None) -> str | None:
    from syft.service.policy.policy import Matches, MixedInputPolicy, UserOwned

    if code.input_policy_type is not MixedInputPolicy:
        return "its input policy is not syft's MixedInputPolicy"
    servers = code.input_policy_init_kwargs or {}
    if len(servers) != 1:
        return "its input policy names other datasites"
    ((server, rules),) = servers.items()
    if str(getattr(server, "server_id", "")) != site.server_id:
        return "its input policy is bound to another datasite"
    if not isinstance(rules, dict) or sorted(rules) != sorted(ARGUMENTS):
        return "its input policy does not bind exactly train, test and weights"
    weights = rules["weights"]
    if type(weights) is not UserOwned or weights.type is not dict:
        return "its input policy does not leave weights as the caller's own dict"
    bound = tuple(
        getattr(rules[k], "val", None) if type(rules[k]) is Matches else None
        for k in ("train", "test")
    )
    expected = [site.assets[task]] if task in site.assets else list(site.assets.values())
    if not any(_same_uid(bound[0], t) and _same_uid(bound[1], s) for t, s in expected):
        return "its input policy does not bind train and test to the study's own assets"
    return None


def _same_uid(a: Any, b: Any) -> bool:
    return a is not None and b is not None and str(a).replace("-", "") == str(b).replace("-", "")


def _small_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_EXECUTIONS
