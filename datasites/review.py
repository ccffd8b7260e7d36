"""Reading a request's code as data: what plan does it carry?

The code is parsed, never executed: `ast.literal_eval` accepts only literals, so reading a
malicious request cannot run it.
"""

from __future__ import annotations

import ast
from typing import Any


def extract_plan(source: str) -> dict[str, Any] | None:
    """The literal `plan = {...}` assigned in the request's function, or None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "plan" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
