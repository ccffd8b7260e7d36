"""Generate the code a study submits: a literal plan and one call into the hospital runtime.

The code is deliberately nothing else, so an operator can read it in seconds and a verifier
can check it. The template and its rendering are the contract's
(`datasites.contract.template`): they define what is vetted, and this library generates
exactly that.
syft reads a function's source with `inspect.getsource`, so the generated source is
registered with `linecache` under a pseudo-filename before it is compiled.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from typing import Any

from datasites.contract.template import TEMPLATE, function_name, study_source

__all__ = ["TEMPLATE", "function_name", "study_function", "study_source"]


def study_function(plan: dict[str, Any]) -> Callable[..., Any]:
    """The plain Python function for the plan, with its source retrievable by syft."""
    source = study_source(plan)
    name = function_name(plan["study_id"])
    filename = f"<study {plan['study_id']}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own template
    return namespace[name]
