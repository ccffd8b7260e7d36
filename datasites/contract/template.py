"""The study template: the only code a vetted request may carry.

A study's code is a literal plan and one call into the hospital's runtime, nothing else, so
an operator reads it in seconds and `datasites.governance.vetting` can check it by
regenerating it from the plan. The scientist's library renders its requests with
`study_source` and the hospital vets against the same text: one definition on both sides.
"""

from __future__ import annotations

import ast
import pprint
from typing import Any

TEMPLATE = """\
def {name}(train, test, weights):
    from datasites.runtime import execute

    plan = {plan}
    return execute(plan, train=train, test=test, request=weights)
"""


def function_name(study_id: str) -> str:
    """The study's function name: syft names the request after it, and "-" is no Python name."""
    return "study_" + study_id.replace("-", "_")


def study_source(plan: dict[str, Any]) -> str:
    """The code a study submits for `plan`: a pure function of the plan, so it can be rebuilt.

    Sorted keys and a fixed width make the text canonical; stored requests and the verifier
    depend on it staying byte for byte the same.
    """
    return TEMPLATE.format(name=function_name(plan["study_id"]), plan=plan_literal(plan))


def plan_literal(plan: dict[str, Any]) -> str:
    literal = pprint.pformat(plan, indent=4, width=88, sort_dicts=True)
    return literal.replace("\n", "\n    ")


# An approved code larger than this is not a template (a plan literal is a few kB).
MAX_TEMPLATE_BYTES = 256 * 1024


def template_plan(source: str, name: str) -> dict[str, Any] | None:
    """The plan of `source` when it is exactly the template of that plan with function
    `name` (compared as syntax trees), else None.

    The datasite runs a secure study's light phases outside syft's code execution
    (`datasites.server.phase_route`); it does so only for an approved code that is this
    template, so those phases run exactly what syft would have run.
    """
    if not isinstance(source, str) or len(source) > MAX_TEMPLATE_BYTES:
        return None
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    function = tree.body[0]
    if function.name != name or len(function.body) != 3:
        return None
    assignment = function.body[1]
    if not (
        isinstance(assignment, ast.Assign)
        and [getattr(t, "id", None) for t in assignment.targets] == ["plan"]
    ):
        return None
    try:
        plan = ast.literal_eval(assignment.value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    study_id = plan.get("study_id") if isinstance(plan, dict) else None
    if not isinstance(study_id, str) or function_name(study_id) != name or not name.isidentifier():
        return None
    try:
        expected = ast.parse(study_source(plan))
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        return None
    same = ast.dump(tree, include_attributes=False) == ast.dump(expected, include_attributes=False)
    return plan if same else None
