"""Generate the code a study submits: a literal plan and one call into the hospital runtime.

The code is deliberately nothing else, so an operator can read it in seconds and a verifier
can check it against this template. syft reads a function's source with
`inspect.getsource`, so the generated source is registered with `linecache` under a
pseudo-filename before it is compiled.
"""

from __future__ import annotations

import linecache
import pprint
from collections.abc import Callable
from typing import Any

TEMPLATE = """\
def {name}(train, test, weights):
    from datasites.runtime import execute

    plan = {plan}
    return execute(plan, train=train, test=test, request=weights)
"""


def function_name(study_id: str) -> str:
    return "study_" + study_id.replace("-", "_")


def study_source(plan: dict[str, Any]) -> str:
    literal = pprint.pformat(plan, indent=4, width=88, sort_dicts=True)
    literal = literal.replace("\n", "\n    ")
    return TEMPLATE.format(name=function_name(plan["study_id"]), plan=literal)


def study_function(plan: dict[str, Any]) -> Callable[..., Any]:
    """The plain Python function for the plan, with its source retrievable by syft."""
    source = study_source(plan)
    name = function_name(plan["study_id"])
    filename = f"<study {plan['study_id']}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own template
    return namespace[name]
