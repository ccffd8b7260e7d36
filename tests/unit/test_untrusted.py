"""Hostile plan values: every reader of a request's plan returns its documented result.

A request's plan is a literal the scientist wrote. Each hostile value below once crashed (or
could crash) the operator's tools: `float(10**400)` overflows, `str()` of an int over 4,300
digits raises, deep nesting exhausts recursion, keys of mixed types cannot be sorted. The
cases are crossed with every plan field, so each reader sees each value in each place.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from datasites.cli.report import review_text
from datasites.contract.plan import Plan, PlanError
from datasites.contract.template import TEMPLATE, function_name
from datasites.contract.untrusted import Limits, int_fits, printable_int, problem, shown
from datasites.governance.operator import RequestView
from datasites.governance.vetting import CUSTOM, VETTED, Verdict, classify
from datasites.site.policy import AutoApprovePolicy, StudyPolicy
from scientist.config import StudyConfig

STUDY_ID = "ehr-hostile-01"
BASE = StudyConfig(aggregation="plain", task="ehr").plan(STUDY_ID, "scientist@research.org")
NAME = function_name(STUDY_ID)


def deep(levels: int) -> list:
    value: list = [1]
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: dict[str, Any] = {
    "10**400": 10**400,
    "-10**400": -(10**400),
    "5000 digits": 10**5000,
    "-5000 digits": -(10**5000),
    "2**64": 2**64,
    "1e308*10": 1e308 * 10,
    "-inf": -math.inf,
    "nan": math.nan,
    "1e300": 1e300,
    "huge string": "x" * 100_000,
    "escape string": "\x1b[2K\rvetted",
    "bool true": True,
    "bool false": False,
    "none": None,
    "float for int": 2.0,
    "negative": -1,
    "deep list": deep(50),
    "long list": list(range(10_000)),
    "non-str keys": {1: 2, "a": 3},
    "tuple key": {(1, 2): 3},
    "bytes": b"\x00bytes",
    "complex": 1j,
    "set": {1, 2},
    "hostile kwargs list": {"hidden": [10**400]},
    "hostile kwargs type": {"hidden": "64,32"},
    "hostile kwargs nested": {"hidden": [[64]]},
    "hostile kwargs size": {"hidden": [4096] * 1000},
    "hostile kwargs key": {"x" * 1000: 1},
}
FIELDS = sorted({*BASE, "model_kwargs", "local_steps", "momentum"})
CASES = [
    pytest.param({**BASE, field: value}, id=f"{field}={label}")
    for field in FIELDS
    for label, value in HOSTILE.items()
]
CASES += [
    pytest.param({**BASE, 7: 1}, id="int key at the top"),
    pytest.param({**BASE, ("a",): 1}, id="tuple key at the top"),
    pytest.param({**BASE, **{f"k{i}": i for i in range(5_000)}}, id="5000 keys"),
    pytest.param({**BASE, "x" * 5_000: 1}, id="a 5000-character key"),
    pytest.param({**BASE, "model_kwargs": {"hidden": deep(200)}}, id="kwargs 200 deep"),
    pytest.param({k: v for k, v in BASE.items() if k != "epsilon"}, id="epsilon missing"),
]
DIGITS = re.compile(r"\d{20}")  # a hostile number echoed into a message


def literal(value: Any) -> str | None:
    """Python source for `value` that literal_eval reads back (None if it has none, NaN).

    Huge ints are written in hex, which Python parses without its 4,300-digit limit: that is
    how a scientist gets one past the parser.
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return hex(value) if not printable_int(value) else repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return repr(value) if math.isfinite(value) else ("-" if value < 0 else "") + "1e999"
    if isinstance(value, str | bytes | complex):
        return repr(value)
    if isinstance(value, list | tuple | set):
        parts = [literal(v) for v in value]
        if None in parts:
            return None
        body = ", ".join(parts)  # type: ignore[arg-type]
        return {list: f"[{body}]", tuple: f"({body},)", set: f"{{{body}}}"}[type(value)]
    if isinstance(value, dict):
        parts = [(literal(k), literal(v)) for k, v in value.items()]
        if any(None in pair for pair in parts):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in parts) + "}"
    raise AssertionError(f"no literal for {type(value)}")


def view_of(verdict: Verdict, source: str) -> RequestView:
    return RequestView(
        id="r1",
        status="pending",
        scientist="scientist@research.org",
        function=NAME,
        submitted="now",
        plan=verdict.plan,
        code=source,
        verdict=verdict,
    )


def bounded_message(text: str) -> None:
    assert isinstance(text, str) and len(text) < 600, text[:200]
    assert not DIGITS.search(text), text[:200]


@pytest.mark.parametrize("plan", CASES)
def test_plan_from_dict_raises_only_plan_error(plan: dict) -> None:
    try:
        parsed = Plan.from_dict(plan)
    except PlanError as error:
        bounded_message(str(error))
    else:
        assert isinstance(parsed, Plan) and problem(parsed.to_dict()) is None


@pytest.mark.parametrize("plan", CASES)
def test_study_policy_violations_return_short_sentences(plan: dict) -> None:
    found = StudyPolicy().violations(plan)

    assert isinstance(found, list)
    for sentence in found:
        bounded_message(sentence)


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_auto_approve_refusals_return_short_sentences(value: Any) -> None:
    rules = AutoApprovePolicy(enabled=True, scientists=("a@x.org",), max_epsilon=1.0)

    for scientist, epsilon in [(value, 0.5), ("a@x.org", value), (value, value)]:
        found = rules.refusals(scientist, True, epsilon)
        assert isinstance(found, list) and found, (scientist, epsilon)
        for sentence in found:
            bounded_message(sentence)


@pytest.mark.parametrize("plan", CASES)
def test_classify_returns_a_verdict_and_withholds_unbounded_plans(plan: dict) -> None:
    text = literal(plan)
    if text is None:
        pytest.skip("NaN has no literal form")
    source = TEMPLATE.format(name=NAME, plan=text)

    verdict = classify(source, NAME)

    assert isinstance(verdict, Verdict) and verdict.kind in (VETTED, CUSTOM)
    for reason in (*verdict.reasons, verdict.plan_error or ""):
        bounded_message(reason)
    if verdict.plan is not None:
        assert problem(verdict.plan) is None
    else:
        # A withheld plan says why, unless the code did not even parse (200 brackets deep).
        assert verdict.kind == CUSTOM
        assert verdict.plan_error or verdict.reasons == ("the code does not parse",)
    # What the operator's listing and `show` do with the verdict must not raise either.
    view = view_of(verdict, source)
    bounded_message(view.summary())


def test_an_unbounded_plan_is_custom_and_names_its_field() -> None:
    source = TEMPLATE.format(name=NAME, plan=literal({**BASE, "epsilon": 10**400}))

    verdict = classify(source, NAME)

    assert verdict.kind == CUSTOM and verdict.plan is None
    assert verdict.plan_error == (
        "plan['epsilon'] is an integer beyond +-1e+15; send a realistic value."
    )
    assert "the plan cannot be read safely: plan['epsilon'] is an integer" in verdict.reasons[0]


@pytest.mark.parametrize(
    "code",
    [
        f"def {NAME}(train, test, weights):\n    x = 0x{'f' * 5000}\n",
        f"def {NAME}(train, test, weights):\n    return {'-' * 1000}1\n",
        f"def {NAME}(train, test, weights):\n    return {'-' * 100_000}1\n",
        "x = (" * 300 + ")" * 300,
    ],
    ids=["unprintable int literal", "deep expression", "parser stack", "nested parentheses"],
)
def test_hostile_code_around_the_plan_is_custom_not_a_crash(code: str) -> None:
    verdict = classify(code, NAME)

    assert verdict.kind == CUSTOM and verdict.reasons and verdict.plan is None
    bounded_message("; ".join(verdict.reasons))


def test_report_review_of_a_withheld_plan_prints() -> None:
    """`show` renders the verdict of a hostile request (report.review_text is what it prints)."""
    from datasites.governance.operator import Review

    source = TEMPLATE.format(name=NAME, plan=literal({**BASE, "rounds": 10**4000}))
    verdict = classify(source, NAME)
    view = view_of(verdict, source)

    text = review_text(Review(view, None, ("custom code",), ""))

    assert "plan['rounds'] is an integer beyond" in text and "\nplan\n" not in text


# --- the module itself ----------------------------------------------------------------


def test_problem_names_the_key_path_without_the_value() -> None:
    assert problem({"a": [1, {"b": 10**400}]}, "plan") == (
        "plan['a'][1]['b'] is an integer beyond +-1e+15; send a realistic value."
    )
    assert problem({"a": math.nan}, "plan") == (
        "plan['a'] is nan; send a finite number within +-1e+15."
    )
    assert problem({1: 2}, "plan") == "plan has a key of type int; keys must be strings."
    assert "nests containers deeper than 4 levels" in problem({"a": deep(5)}, "plan")
    assert "is a bytes; only dict" in problem({"a": b""}, "plan")
    assert "string of more than 256 characters" in problem({"a": "x" * 257}, "plan")
    assert "list of more than 64 entries" in problem({"a": list(range(65))}, "plan")
    assert "more than 1000 values in all" in problem({"a": [list(range(60))] * 60}, "plan")
    assert problem(BASE, "plan") is None
    assert problem({"a": [4096] * 6, "b": (1.5, None, True)}, "plan") is None


def test_limits_are_inclusive_and_configurable() -> None:
    assert problem(10**15) is None and problem(-(10**15)) is None
    assert problem(10**15 + 1) is not None and problem(1e15) is None
    assert problem("x" * 256) is None
    assert problem(3, limits=Limits(max_int=2)) == (
        "the value is an integer beyond +-2e+00; send a realistic value."
    )


def test_int_checks_never_build_the_digits() -> None:
    assert not int_fits(10**100_000) and int_fits(-5) and not int_fits(-(10**16))
    assert printable_int(10**4000) and not printable_int(10**5000)


def test_shown_is_short_and_never_prints_a_huge_int() -> None:
    assert shown(10**5000) == "an integer too large to show"
    assert shown(12) == "12" and shown(0.5) == "0.5" and shown(None) == "None"
    assert shown("x" * 100) == "x" * 37 + "..."
    assert shown([1, 2]) == "a list" and shown(b"") == "a bytes"


# --- the runtime, which reads the scientist's request on every call -----------------------


def test_a_hostile_round_is_refused_and_audited_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`round` comes with each call, not with the approved plan: a 5,000-digit one once made
    the refusal's own message raise, and could not have been written to the audit log."""
    from datasites.runtime.execute import current_hospital, execute
    from datasites.server.assets import ehr_training_view
    from datasites.site.paths import HOSPITAL_ROOT_ENV
    from datasites.site.policy import Policy
    from scientist.study import initial_weights
    from synthetic.ehr import generate_ehr

    root = tmp_path / "hospital-z"
    Policy.write_default(root)
    monkeypatch.setenv(HOSPITAL_ROOT_ENV, str(root))
    current_hospital.cache_clear()
    config = StudyConfig(
        aggregation="plain", task="ehr", model="ehr_logistic", rounds=2, batch_size=64
    )
    table = ehr_training_view(generate_ehr(300, seed=1, identifiers=False))
    request = {"round": 10**5000, "weights": initial_weights(config)}

    out = execute(
        config.plan(STUDY_ID, "scientist@research.org"), train=table, test=table, request=request
    )

    assert out["refused"] == "RequestError"
    assert out["error"].startswith("round an integer too large to show is outside")
    entry = current_hospital().audit.entries()[-1]
    assert entry["event"] == "refused" and entry["round"] is None
    current_hospital.cache_clear()


def test_show_lists_every_plan_field_the_runtime_reads() -> None:
    """`show`'s plan table is built from the Plan schema, so a field added to the plan (as
    `local_steps` once was, and went missing from the table) cannot be left out of it."""
    from dataclasses import fields

    from datasites.contract.plan import Plan
    from datasites.governance.operator import Review

    secure = {
        "aggregation": "secure",
        "partners": {"hospital-a": "ab" * 32, "hospital-b": "cd" * 32, "hospital-c": "ef" * 32},
        "threshold": 2,
        "secure_scale": 2.0**20,
        "secure_clip": 2.0**24,
    }
    plan = {**BASE, "local_steps": 7, "momentum": 0.5, "clip_quantile": 0.9, **secure}
    source = TEMPLATE.format(name=NAME, plan=literal(plan))
    verdict = classify(source, NAME)
    text = review_text(Review(view_of(verdict, source), None, (), ""))
    table = text.split("\nplan\n", 1)[1].split("\napprove would be", 1)[0]

    rows = [line for line in table.splitlines() if line.startswith("  ") and line[2] != " "]
    listed = {line.split()[0] for line in rows}
    assert "    hospital-b           " + "cd" * 32 in table  # partners, one per line
    assert listed == {f.name for f in fields(Plan)} - {"scientist"}
    assert "  local_steps    7" in table


def test_request_reprs_are_one_line_and_their_tables_escape_the_scientists_text() -> None:
    from datasites.governance.operator import Review

    source = TEMPLATE.format(name=NAME, plan=literal(BASE)) + "\n# <script>alert(1)</script>\n"
    view = view_of(classify(source, NAME), source)
    review_ = Review(view, None, ("custom code",), "")

    for value in (view, review_):
        assert "\n" not in repr(value) and view.id[:12] in repr(value)
        page = value._repr_html_()
        assert "<table>" in page and "<script>" not in page
    assert "approve would be REFUSED (1 problems)" in repr(review_)
    assert "&lt;script&gt;" in review_._repr_html_()
