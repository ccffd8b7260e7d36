"""Bounds on values that arrive from the other side of the trust boundary.

A request's plan is read with `ast.literal_eval`, so it holds only literals, but every literal
is the scientist's choice: an integer of thousands of digits makes `float()` raise
OverflowError and `str()` raise ValueError (Python refuses to print ints over 4,300 digits),
a nested list a thousand levels deep exhausts recursion, and a key that is not a string
breaks sorting. Each of these crashed the operator's tools. `problem` checks a value once,
before any arithmetic or formatting touches it, using only cheap operations (`bit_length`,
`len`, `isinstance`), and names where the problem is without echoing the value.

Pure Python on purpose: the operator's listing imports this, and it must not pull in torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["PLAN_LIMITS", "Limits", "int_fits", "printable_int", "problem", "shown"]

_DIGITS_PER_BIT = math.log10(2)


@dataclass(frozen=True)
class Limits:
    """How large each part of an untrusted literal may be.

    The defaults fit a study plan with room to spare: its numbers are at most a few
    thousand, its strings are ids and names, and its deepest part is a list inside
    model_kwargs (plan -> model_kwargs -> hidden, depth 3).
    """

    max_int: int = 10**15
    max_float: float = 1e15
    max_str: int = 256
    max_key: int = 64
    max_items: int = 64
    max_depth: int = 4
    max_values: int = 1_000


PLAN_LIMITS = Limits()
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))


def int_fits(value: int, limit: int = PLAN_LIMITS.max_int) -> bool:
    """|value| <= limit, decided from bit lengths first so a huge int costs nothing."""
    if value.bit_length() > limit.bit_length():
        return False
    return -limit <= value <= limit


def printable_int(value: int) -> bool:
    """Whether `str(value)` works under this interpreter's int-to-string digit limit."""
    limit = sys.get_int_max_str_digits()
    return limit == 0 or value.bit_length() * _DIGITS_PER_BIT < limit - 1


def problem(value: Any, where: str = "the value", limits: Limits = PLAN_LIMITS) -> str | None:
    """Why `value` may not be read further, in one sentence naming its key path; None if
    every part of it is a plain literal within `limits`."""
    budget = [limits.max_values]
    return _problem(value, where, limits, 0, budget)


def _problem(value: Any, where: str, limits: Limits, depth: int, budget: list[int]) -> str | None:
    budget[0] -= 1
    if budget[0] < 0:
        return f"{where} holds more than {limits.max_values} values in all; send a smaller plan."
    if type(value) not in _PLAIN:  # exact types: a subclass could override __str__ or __eq__
        return (
            f"{where} is a {type(value).__name__}; only dict, list, tuple, str, int, float, "
            "bool and None are allowed."
        )
    if type(value) in (dict, list, tuple):
        return _container(value, where, limits, depth, budget)
    return _scalar(value, where, limits)


def _scalar(value: Any, where: str, limits: Limits) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and not int_fits(value, limits.max_int):
        return f"{where} is an integer beyond +-{limits.max_int:.0e}; send a realistic value."
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= limits.max_float):
        return f"{where} is {value!r}; send a finite number within +-{limits.max_float:.0e}."
    if isinstance(value, str) and len(value) > limits.max_str:
        return f"{where} is a string of more than {limits.max_str} characters; shorten it."
    return None


def _container(value: Any, where: str, limits: Limits, depth: int, budget: list[int]) -> str | None:
    kind = type(value).__name__
    if depth >= limits.max_depth:
        return f"{where} nests containers deeper than {limits.max_depth} levels; flatten it."
    if len(value) > limits.max_items:
        return f"{where} is a {kind} of more than {limits.max_items} entries; shorten it."
    if not isinstance(value, dict):
        items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
    else:
        bad_key = next((k for k in value if not _fine_key(k, limits)), _NONE)
        if bad_key is not _NONE:
            return _key_problem(bad_key, where, limits)
        items = ((f"{where}[{key!r}]", item) for key, item in value.items())
    for path, item in items:
        found = _problem(item, path, limits, depth + 1, budget)
        if found:
            return found
    return None


_NONE = object()


def _fine_key(key: Any, limits: Limits) -> bool:
    return isinstance(key, str) and len(key) <= limits.max_key


def _key_problem(key: Any, where: str, limits: Limits) -> str:
    if isinstance(key, str):
        return f"{where} has a key of more than {limits.max_key} characters; shorten it."
    return f"{where} has a key of type {type(key).__name__}; keys must be strings."


def shown(value: Any, width: int = 40) -> str:
    """`value` for a one-sentence message: bounded numbers as they are, strings cut to
    `width`, anything else by its type. Never formats an unbounded int."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value) if int_fits(value) else "an integer too large to show"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value if len(value) <= width else value[: width - 3] + "..."
    return f"a {type(value).__name__}"
