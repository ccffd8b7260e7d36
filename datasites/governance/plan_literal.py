"""Reading a request's code as data: what plan does it carry?

The code is parsed, never executed: `ast.literal_eval` accepts only literals, so reading a
malicious request cannot run it. Literals can still be hostile (an int of thousands of
digits, nesting a thousand deep), so a plan is handed on only after `datasites.contract.untrusted`
has bounded every part of it.
"""

from __future__ import annotations

import ast
from typing import Any, TypeGuard

from datasites.contract.untrusted import problem

# What parsing hostile text may raise besides SyntaxError: null bytes are a ValueError in
# Python 3.11, and deeply nested input exhausts the parser's recursion (RecursionError) or,
# nested further (`x = ---...1` 100,000 deep), its stack (MemoryError).
PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


def is_plan_assignment(node: ast.AST) -> TypeGuard[ast.Assign]:
    """Whether `node` is an assignment whose targets include the name `plan`."""
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "plan" for t in node.targets
    )


def read_plan(node: ast.expr) -> tuple[dict[str, Any] | None, str | None]:
    """(plan, None) for a bounded literal dict; (None, why) for a literal dict with a part
    too large, too deep or of another type; (None, None) for anything that is no literal
    dict at all.

    literal_eval raises TypeError, not ValueError, for a literal with an unhashable key
    (`{[]: 1}`), so a request built to crash the operator's listing is read as no plan.
    """
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None, None
    if not isinstance(value, dict):
        return None, None
    unsafe = problem(value, "plan")
    return (None, unsafe) if unsafe else (value, None)
