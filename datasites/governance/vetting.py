"""Vetting a request's code: is it exactly the hospital's study template, and if not, why?

PySyft runs approved code unsandboxed inside the datasite process, and what it runs is the
request's `raw_code`: every top-level statement of it (wrapped in one function), then the
function the request names. An operator must therefore approve nothing but the template
(`datasites.contract.template`), filled with a literal plan. The scientist's library
generates its code from the same template, so "what the library generates" and "what the
hospital vets" are one definition.

`classify` parses the code and never executes or imports any of it: the plan is read with
`ast.literal_eval`, the template is regenerated from that plan, and the two syntax trees are
compared. Formatting and comments cannot change a syntax tree; anything that could change
what runs does, so it makes the code custom.

Every literal is the scientist's and may be hostile: an integer literal too long for
Python to print makes `ast.dump` and `ast.unparse` raise, and plan values beyond
`datasites.contract.untrusted`'s bounds crash arithmetic and formatting. Such code is custom with a
reason, its plan is withheld (`Verdict.plan` is None), and nothing downstream sees it.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasites.contract.plan import Plan, PlanError
from datasites.contract.template import TEMPLATE, function_name, plan_literal, study_source
from datasites.contract.untrusted import printable_int
from datasites.governance.plan_literal import PARSE_ERRORS, is_plan_assignment, read_plan

__all__ = [
    "CUSTOM",
    "VETTED",
    "Verdict",
    "classify",
    "code_diff",
]

VETTED, CUSTOM = "vetted", "custom"

# The template's fixed parts, for naming what a custom request changed.
_IMPORT, _, _RETURN = ast.parse(TEMPLATE.format(name="study", plan="{}")).body[0].body
_ARGUMENTS = ["train", "test", "weights"]
_CALL_ARGUMENTS = "(plan, train=train, test=test, request=weights)"
# Builtins that reach code or files by name; a study has no use for any of them.
_RISKY = frozenset(
    {
        "__import__",
        "breakpoint",
        "compile",
        "delattr",
        "eval",
        "exec",
        "getattr",
        "globals",
        "locals",
        "open",
        "setattr",
        "vars",
    }
)
_UNNAMED = (
    "the code differs from the template; compare it with datasites.contract.template.TEMPLATE"
)
_SHOWN = 40  # characters of a statement or callee quoted in a reason
# Syntax-tree depth beyond which code is not inspected (the template's is under 10; the
# recursion of ast.dump gives out near 1,000).
_MAX_DEPTH = 100

_Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Verdict:
    """What the verifier found in a request's code.

    VETTED means the code is the template for its own literal plan and nothing else, so
    approving it runs only `datasites.runtime.execute`, which re-validates the plan on every
    call. `plan_error` is independent of the kind: a vetted request whose plan is invalid is
    harmless but will fail at run time, so it is worth denying with that message.
    """

    kind: str
    reasons: tuple[str, ...] = ()
    plan: dict[str, Any] | None = None
    plan_error: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (VETTED, CUSTOM):
            raise ValueError(f"kind must be {VETTED!r} or {CUSTOM!r}, found {self.kind!r}.")
        if self.vetted and self.reasons:
            raise ValueError("a vetted verdict cannot carry reasons; make it custom.")

    @property
    def vetted(self) -> bool:
        return self.kind == VETTED


def classify(source: str, function_name: str | None = None) -> Verdict:
    """Vetted only if `source` is exactly `study_source(plan)` for the plan it carries.

    `function_name` is the request's service_func_name, the function syft will call; when
    given, the template's function must have that name. Reasons for custom code name every
    deviation found (imports, calls, extra statements with their lines, risky builtins,
    dunder names), so the operator knows where to read.
    """
    try:
        tree = ast.parse(source)
    except PARSE_ERRORS:
        return Verdict(CUSTOM, ("the code does not parse",))
    unreadable = _unreadable(tree)
    if unreadable:
        return Verdict(CUSTOM, (unreadable,), None, unreadable + "; deny this request.")
    func = _main_function(tree, function_name)
    assignment = _plan_assignment(tree, func)
    plan, unsafe = read_plan(assignment.value) if assignment else (None, None)
    error = unsafe or _plan_error(plan)
    named = func is not None and function_name in (None, func.name)
    if named and _is_template(tree, plan):
        return Verdict(VETTED, (), plan, error)
    reasons = _reasons(tree, func, assignment, (plan, unsafe), function_name) or [_UNNAMED]
    return Verdict(CUSTOM, tuple(dict.fromkeys(reasons)), plan, error)


def _unreadable(tree: ast.Module) -> str | None:
    """Why the tree cannot be dumped or quoted safely, or None: an int literal whose repr
    Python refuses (over 4,300 digits; hex literals have no such limit at parse time), or
    nesting deep enough to exhaust the recursion of `ast.dump` and `ast.unparse`."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return f"line {getattr(node, 'lineno', '?')} nests deeper than {_MAX_DEPTH} levels"
        value = node.value if isinstance(node, ast.Constant) else None
        if isinstance(value, int) and not printable_int(value):
            return f"line {node.lineno} holds an integer literal too long to print or check"
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None


def code_diff(
    old: str, new: str, old_label: str = "previously approved", new_label: str = "this request"
) -> str:
    """A unified diff from `old` to `new`; "" when they read the same line by line.

    Shown against the same scientist's previously approved request, so an operator reads
    only what changed (usually a few plan values) instead of re-reading the whole code.
    """
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_label, tofile=new_label, lineterm=""
    )
    text = "\n".join(lines)
    return text + "\n" if text else ""


def _dump(node: ast.AST) -> str:
    return ast.dump(node, include_attributes=False)


def _is_template(tree: ast.Module, plan: dict[str, Any] | None) -> bool:
    study_id = plan.get("study_id") if plan is not None else None
    # A study id that is no identifier would let the plan's own text write extra functions
    # into the regenerated "template", which then matches code that runs them.
    if plan is None or not isinstance(study_id, str) or not function_name(study_id).isidentifier():
        return False
    try:
        expected = ast.parse(study_source(plan))
    except PARSE_ERRORS:
        return False
    return len(expected.body) == 1 and _dump(tree) == _dump(expected)


def _main_function(tree: ast.Module, name: str | None) -> _Function | None:
    """The function syft would call: the one named `name`, else the first one defined."""
    functions = [s for s in tree.body if isinstance(s, _Function)]
    chosen = [f for f in functions if f.name == name] or functions
    return chosen[0] if chosen else None


def _plan_assignment(tree: ast.Module, func: _Function | None) -> ast.Assign | None:
    """The plan assigned in the function's body; failing that, any plan assigned anywhere."""
    for node in [*(func.body if func else []), *ast.walk(tree)]:
        if is_plan_assignment(node):
            return node
    return None


def _plan_error(plan: dict[str, Any] | None) -> str | None:
    if plan is None:
        return None
    try:
        Plan.from_dict(plan)
    except PlanError as error:
        return str(error)
    except (TypeError, ValueError) as error:  # e.g. keys of mixed types cannot be sorted
        return f"the plan could not be validated ({error})."
    return None


def _reasons(
    tree: ast.Module,
    func: _Function | None,
    assignment: ast.Assign | None,
    plan: tuple[dict[str, Any] | None, str | None],
    expected: str | None,
) -> list[str]:
    """Every deviation from the template; `plan` is `plan_literal.read_plan`'s (plan, problem)."""
    if func is None:
        return ["the code does not define a function", *_hazards(tree)]
    return [
        *_signature(func, expected),
        *_statements(tree, func),
        *_plan_reasons(func, assignment, plan),
        *_return(func),
        *_hazards(tree),
    ]


def _signature(func: _Function, expected: str | None) -> list[str]:
    reasons = []
    if expected is not None and func.name != expected:
        reasons.append(f"the function is named {func.name}, but the request runs {expected}")
    if isinstance(func, ast.AsyncFunctionDef):
        reasons.append("the function is async")
    if func.decorator_list:
        reasons.append(f"the function has a decorator on line {func.decorator_list[0].lineno}")
    args = func.args
    if args.defaults or any(d is not None for d in args.kw_defaults):
        reasons.append("the function has default argument values")
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    if func.returns or any(a.annotation for a in every if a is not None):
        reasons.append("the function has annotations")
    if [a.arg for a in args.args] != _ARGUMENTS or any(
        (args.posonlyargs, args.kwonlyargs, args.vararg, args.kwarg)
    ):
        reasons.append("the function's arguments are not (train, test, weights)")
    return reasons


def _statements(tree: ast.Module, func: _Function) -> list[str]:
    """Statements the template does not have, and template statements out of order."""
    slots = [
        _first(func.body, lambda s: _dump(s) == _dump(_IMPORT))
        or _first(func.body, lambda s: isinstance(s, ast.Import | ast.ImportFrom)),
        _first(func.body, is_plan_assignment),
        _first(func.body, lambda s: isinstance(s, ast.Return)),
    ]
    kept = [i for slot in slots for i, s in enumerate(func.body) if s is slot]
    extra = [s for s in tree.body if s is not func]
    extra += [s for i, s in enumerate(func.body) if i not in kept]
    reasons = []
    if extra:
        lines = ", ".join(f"line {s.lineno} ({_quote(s)})" for s in extra)
        reasons.append(f"the code has statements beyond the template: {lines}")
    if kept != sorted(kept):
        reasons.append("the code's statements are not in the template's order")
    return reasons


def _plan_reasons(
    func: _Function, assignment: ast.Assign | None, read: tuple[dict[str, Any] | None, str | None]
) -> list[str]:
    plan, unsafe = read
    if assignment is None:
        return ["the code does not assign a plan"]
    if unsafe:
        return [f"the plan cannot be read safely: {unsafe.rstrip('.')}"]
    if plan is None:
        return ["the plan is not a literal dict"]
    study_id = plan.get("study_id")
    if not isinstance(study_id, str):
        return ["the plan has no study_id string to name the function by"]
    if not function_name(study_id).isidentifier():
        return ["the plan's study_id cannot name a Python function"]
    reasons = []
    if func.name != function_name(study_id):
        reasons.append("the function name does not match the study id")
    try:
        canonical = _dump(ast.parse("plan = " + plan_literal(plan)).body[0])
    except PARSE_ERRORS:
        canonical = ""
    if _dump(assignment) != canonical:
        reasons.append("the plan literal is not written as the template writes it (sorted keys)")
    return reasons


def _return(func: _Function) -> list[str]:
    returned = _first(func.body, lambda s: isinstance(s, ast.Return))
    if returned is not None and _dump(returned) == _dump(_RETURN):
        return []
    value = returned.value if isinstance(returned, ast.Return) else None
    if isinstance(value, ast.Call) and _is_name(value.func, "execute"):
        return [f"the code calls execute with arguments other than {_CALL_ARGUMENTS}"]
    return [f"the function does not return execute{_CALL_ARGUMENTS}"]


def _hazards(tree: ast.Module) -> list[str]:
    """Imports, calls and names anywhere in the code that the template does not use."""
    reasons = []
    imports_execute = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            reasons += [f"the code imports {_alias(a)}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                if module == "datasites.runtime" and _alias(alias) == "execute":
                    imports_execute = True
                else:
                    reasons.append(f"the code imports {_alias(alias)} from {module}")
        elif isinstance(node, ast.Call) and not _is_name(node.func, "execute"):
            reasons.append(f"the code calls {_quote(node.func)}")
        elif isinstance(node, ast.Name) and node.id in _RISKY:
            reasons.append(f"the code uses {node.id}")
        elif isinstance(node, ast.Name) and _is_dunder(node.id):
            reasons.append(f"the code uses the name {node.id}")
        elif isinstance(node, ast.Attribute) and (_is_dunder(node.attr) or node.attr in _RISKY):
            reasons.append(f"the code accesses the attribute {node.attr}")
    if not imports_execute:
        reasons.insert(0, "the code does not import execute from datasites.runtime")
    return reasons


def _first(statements: list[ast.stmt], test: Callable[[ast.stmt], bool]) -> ast.stmt | None:
    return next((s for s in statements if test(s)), None)


def _alias(alias: ast.alias) -> str:
    return alias.name + (f" as {alias.asname}" if alias.asname else "")


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _quote(node: ast.AST) -> str:
    """The node's code on one line, cut short: enough to find it, not to flood a reason."""
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
