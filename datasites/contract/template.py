"""The study template: the only code a vetted request may carry.

A study's code is a literal plan and one call into the hospital's runtime, nothing else, so
an operator reads it in seconds and `datasites.governance.vetting` can check it by
regenerating it from the plan. The scientist's library renders its requests with
`study_source` and the hospital vets against the same text: one definition on both sides.
"""

from __future__ import annotations

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
