"""Requests built to get more than was reviewed, and callers with no account.

Each attack is run live, as the attacker would send it, against the guarded federation.
Each must fail, leave the hospital working, and leave an audit entry where it reached the
datasite.
"""

from __future__ import annotations

import contextlib
import io
import json
import linecache
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from datasites.governance.changes import output_policy_problem
from datasites.governance.operator import Operator, OperatorError
from datasites.governance.watch import watch_once
from scientist import Federation, StudyConfig
from tests.conftest import Launch, datasites_cli, login, one_round_ehr
from tests.security.conftest import POLICY
from tests.security.forge import (
    admin_role,
    code_approval,
    own_code,
    quiet,
    read_permission,
    submit_changes,
)

Since = Callable[[str], Callable[[], list[dict[str, Any]]]]
HOSPITAL = "hospital-a"
TINY = one_round_ehr(epsilon=0.3)


def custom_function(body: str = "return train") -> Callable[..., Any]:
    """A fresh function of the attacker's, with its source where syft looks for it."""
    name = "attack_" + secrets.token_hex(3)
    source = f"def {name}(train, test, weights):\n    {body}\n"
    filename = f"<{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def request_code(client: Any, function: Callable[..., Any], output_policy: Any = None) -> Any:
    import syft as sy
    from syft.service.policy.policy import OutputPolicyExecuteCount

    assets = client.datasets["ehr"].assets
    policy = sy.MixedInputPolicy(
        train=assets["train"], test=assets["test"], weights=dict, client=client
    )
    output = output_policy if output_policy is not None else OutputPolicyExecuteCount(limit=1)
    with contextlib.redirect_stdout(io.StringIO()):
        code = sy.syft_function(input_policy=policy, output_policy=output)(function)
    return code, quiet(lambda: client.code.request_code_execution(code))


def guest(launch: Launch) -> Any:
    import syft as sy

    host, port = launch.hospital(HOSPITAL)["url"].rsplit(":", 1)
    return quiet(lambda: sy.login_as_guest(url=host, port=int(port)))


def raw_call(client: Any, path: str) -> Any:
    """A signed call to `path` built by hand, past the client's own argument checks."""
    from syft.client.api import SyftAPICall

    call = SyftAPICall(server_uid=client.id, path=path, args=[], kwargs={})
    return quiet(lambda: client.api.make_call(call))


def entries(log: list[dict[str, Any]], event: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in log
        if e["event"] == event and all(str(v) in str(e.get(k, "")) for k, v in match.items())
    ]


@pytest.fixture
def auto_approve(guarded: Launch, scientist: Federation) -> Iterator[Operator]:
    """hospital-a's policy lets the watcher approve the scientist's small vetted studies."""
    path = guarded.data_dir / HOSPITAL / "policy.toml"
    path.write_text(
        POLICY + "\n[auto_approve]\nenabled = true\nscientists = "
        f"[{json.dumps(scientist.email(HOSPITAL))}]\nmax_epsilon = 1.0\n"
    )
    try:
        yield Operator.open(guarded.data_dir, HOSPITAL, name="watch")
    finally:
        path.write_text(POLICY)


def smuggling_request(scientist: Federation, extra: Callable[[Any, Any], Any]) -> tuple[Any, Any]:
    """The vetted study's code approval plus a custom code's and `extra`: one request."""
    client = scientist.client(HOSPITAL)
    study = scientist.submit(StudyConfig(**TINY), hospitals=[HOSPITAL])
    custom = custom_function()
    request_code(client, custom)
    changes = [
        code_approval(own_code(client, study.function)),
        code_approval(own_code(client, custom.__name__)),
        extra(client, study),
    ]
    return study, submit_changes(client, changes)


def read_train(client: Any) -> Any:
    return client.datasets["ehr"].assets["train"].data


# -- a request that looks vetted but carries more -------------------------------------------


def test_three_change_request_is_shown_whole_and_never_applied(
    scientist: Federation,
    operators: dict[str, Operator],
    auto_approve: Operator,
    audit_since: Since,
) -> None:
    log = audit_since(HOSPITAL)
    op = operators[HOSPITAL]

    def grant(client: Any, study: Any) -> Any:
        return read_permission(client.datasets["ehr"].assets["train"].action_id, client.id)

    study, request = smuggling_request(scientist, grant)
    request_id = str(request.id)
    review = op.show(request_id)
    manual = quiet(lambda: op.approve(request_id, allow_custom_code=True))
    decisions = watch_once(auto_approve, set())
    bypass = quiet(lambda: op.request(request_id).approve())  # syft's approve-everything

    assert review.view.verdict.vetted  # the first code is the template: the old blind spot
    assert [c.kind for c in review.view.changes] == [
        "UserCodeStatusChange",
        "UserCodeStatusChange",
        "ActionStoreChange",
    ]
    assert review.view.changes[1].problem and review.view.changes[2].problem
    assert any("carries 3 changes" in p for p in review.problems)
    assert isinstance(manual, OperatorError) and "3 changes" in str(manual)
    left = [d for d in decisions if d.request == request_id]
    assert left and not left[0].approved
    assert "refused by this hospital" in str(bypass)
    assert op.request(request_id).status.name == "PENDING"
    assert not isinstance(quiet(lambda: read_train(scientist.client(HOSPITAL))), pd.DataFrame)
    # the watcher still approves what its policy allows
    assert [d for d in decisions if d.request == study.requests[HOSPITAL] and d.approved]
    log_entries = log()
    received = entries(log_entries, "request_received", request=request_id)
    assert received and received[0]["changes"] == 3 and len(received[0]["code_sha256"]) == 2
    assert entries(log_entries, "refused", layer="operator", request=request_id)
    assert entries(log_entries, "refused", layer="guard", request=request_id)
    assert entries(log_entries, "policy_decision", request=request_id)


def test_role_change_variant_is_never_applied(
    scientist: Federation, operators: dict[str, Operator], audit_since: Since
) -> None:
    log = audit_since(HOSPITAL)
    op = operators[HOSPITAL]

    def promote(client: Any, study: Any) -> Any:
        return admin_role(client.account.id, client.id)

    _, request = smuggling_request(scientist, promote)
    request_id = str(request.id)
    review = op.review(op.request(request_id))
    manual = quiet(lambda: op.approve(request_id, allow_custom_code=True))
    bypass = quiet(lambda: op.request(request_id).approve())
    role = quiet(lambda: scientist.client(HOSPITAL).account.role)

    assert review.view.changes[2].kind == "ObjectMutation" and review.view.changes[2].problem
    assert isinstance(manual, OperatorError)
    assert "refused by this hospital" in str(bypass)
    assert role.name == "DATA_SCIENTIST"
    assert entries(log(), "refused", layer="guard", request=request_id)


def test_guest_cannot_submit_or_write(guarded: Launch, audit_since: Since) -> None:
    import syft as sy

    log = audit_since(HOSPITAL)
    intruder = guest(guarded)
    store = guarded.data_dir / HOSPITAL / "syft"
    size_before = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())

    submissions = [submit_changes(intruder, []) for _ in range(40)]
    with contextlib.redirect_stdout(io.StringIO()):
        function = sy.syft_function()(custom_function())
    code = quiet(lambda: intruder.code.request_code_execution(function))
    blob = sy.ActionObject.from_obj(b"\0" * 4_000_000)
    writes = [quiet(lambda: intruder.api.services.action.set(blob)) for _ in range(2)]
    peer = raw_call(intruder, "network.add_peer")

    size_after = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    for answer in [*submissions, code, *writes, peer]:
        assert "needs an account at this hospital" in str(answer), answer
    assert size_after - size_before < 1_000_000
    refusals = [e for e in log() if e["event"] == "refused" and e.get("user") == "guest"]
    assert {e["path"] for e in refusals} >= {"request.submit", "action.set"}, refusals
    # A stranger's repeats are folded into one entry per kind and interval (issue 27): the
    # 40 submissions cannot grow the audit log by 40.
    assert len(refusals) < 10, refusals


def test_custom_output_policy_is_refused_at_submission(
    scientist: Federation, tmp_path: Path, audit_since: Since
) -> None:
    from tests.security.payload import WritesFile

    log = audit_since(HOSPITAL)
    client = scientist.client(HOSPITAL)
    marker = tmp_path / "written-inside-the-datasite"

    code, answer = request_code(client, custom_function("return 1"), WritesFile(str(marker)))
    call = quiet(
        lambda: getattr(client.code, code.service_func_name)(
            train=client.datasets["ehr"].assets["train"],
            test=client.datasets["ehr"].assets["test"],
            weights={},
            blocking=True,
        )
    )

    assert "output policy is not syft's built-in" in str(answer)
    assert not hasattr(call, "get") or not marker.exists()
    assert not marker.exists()
    assert output_policy_problem(code) is not None  # the operator's own check agrees
    assert entries(log(), "refused", layer="guard", path="code.request_code_execution")


# -- hostile values and text --------------------------------------------------------------


def template_source(plan_text: str, name: str) -> str:
    return (
        f"def {name}(train, test, weights):\n    from datasites.runtime import execute\n\n"
        f"    plan = {plan_text}\n"
        "    return execute(plan, train=train, test=test, request=weights)\n"
    )


def submit_source(client: Any, source: str, name: str) -> str:
    filename = f"<{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    _, answer = request_code(client, namespace[name])
    return str(answer.id)


def hostile_plan(scientist: Federation, **values: str) -> str:
    """The template with a literal plan in which `values` are written as given."""
    plan = StudyConfig(**TINY).plan("hostile-" + secrets.token_hex(3), scientist.email(HOSPITAL))
    fields = {k: repr(v) for k, v in plan.items()} | values
    text = "{" + ", ".join(f"{k!r}: {v}" for k, v in sorted(fields.items())) + "}"
    name = "study_" + plan["study_id"].replace("-", "_")
    return submit_source(scientist.client(HOSPITAL), template_source(text, name), name)


def cli(guarded: Launch, *args: str) -> subprocess.CompletedProcess[str]:
    return datasites_cli(guarded.data_dir, HOSPITAL, *args)


def test_overflowing_plans_do_not_stop_the_operator(
    scientist: Federation,
    guarded: Launch,
    operators: dict[str, Operator],
    auto_approve: Operator,
    audit_since: Since,
) -> None:
    log = audit_since(HOSPITAL)
    huge_epsilon = hostile_plan(scientist, epsilon="1" + "0" * 400)
    long_rounds = hostile_plan(scientist, rounds="9" * 4000)
    # Python refuses to print an int of over 4,300 digits; a modified client does not, but
    # the datasite's syft parses the code again and refuses the submission.
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        longer = quiet(lambda: hostile_plan(scientist, rounds="9" * 5000))
    finally:
        sys.set_int_max_str_digits(limit)
    legit = scientist.submit(StudyConfig(**TINY), hospitals=[HOSPITAL])
    op = Operator.open(guarded.data_dir, HOSPITAL, name="ops")

    listed = cli(guarded, "requests")
    shown = [cli(guarded, "show", rid[:12]) for rid in (huge_epsilon, long_rounds)]
    refusals = [quiet(lambda rid=rid: op.approve(rid)) for rid in (huge_epsilon, long_rounds)]
    decisions = watch_once(auto_approve, set())

    assert isinstance(longer, Exception)
    assert listed.returncode == 0, listed.stderr
    assert huge_epsilon[:12] in listed.stdout and long_rounds[:12] in listed.stdout
    for out in shown:
        assert out.returncode == 0 and "approve would be REFUSED" in out.stdout, out.stderr
    assert all(isinstance(r, OperatorError) for r in refusals)
    hostile = [d for d in decisions if d.request in (huge_epsilon, long_rounds)]
    assert len(hostile) == 2 and not any(d.approved for d in hostile)
    approved = [d for d in decisions if d.request == legit.requests[HOSPITAL]]
    assert approved and approved[0].approved, decisions
    assert legit.status()["status"].tolist() == ["approved"]
    logged = log()
    for rid in (huge_epsilon, long_rounds):
        assert entries(logged, "request_received", request=rid)
        assert entries(logged, "policy_decision", request=rid)


def test_hostile_adaptive_clipping_settings_are_refused(
    scientist: Federation,
    operators: dict[str, Operator],
    auto_approve: Operator,
    audit_since: Since,
) -> None:
    """clip_quantile steers a released count; the plan refuses every value outside [0, 0.99]
    written as a literal (an overflowing float, a string, a bool, a quantile of 1 that would
    push C up at every step), and so do the operator and the watcher."""
    log = audit_since(HOSPITAL)
    op = operators[HOSPITAL]
    hostile = [
        hostile_plan(scientist, clip_quantile=value)
        for value in ("1e400", "'0.5'", "True", "1.0", "-0.25")
    ]
    reviews = [op.review(op.request(rid)) for rid in hostile]
    refusals = [quiet(lambda rid=rid: op.approve(rid)) for rid in hostile]
    decisions = {d.request: d for d in watch_once(auto_approve, set()) if d.request in hostile}

    for review in reviews:
        assert any("clip_quantile" in problem for problem in review.problems), review.problems
    assert all(isinstance(r, OperatorError) for r in refusals)
    assert set(decisions) == set(hostile) and not any(d.approved for d in decisions.values())
    logged = log()
    for rid in hostile:
        assert entries(logged, "request_received", request=rid)


def test_hostile_row_norm_and_intercept_settings_are_refused(
    scientist: Federation,
    operators: dict[str, Operator],
    auto_approve: Operator,
    audit_since: Since,
) -> None:
    """`ehr_logistic`'s row norm and intercept input set how far each patient's gradient is
    from the clipping bound. An infinite or non-numeric value (which would make each row's
    scaling overflow or fail on the private rows) is refused by the plan at review, by the
    operator and by the watcher, before anything runs; tiny and negative values, bools and
    unknown names go through the same zoo check (each unit-tested in test_models; a live
    submission costs seconds, so two stand for them here)."""
    log = audit_since(HOSPITAL)
    op = operators[HOSPITAL]
    hostile = [
        hostile_plan(scientist, model="'ehr_logistic'", model_kwargs=kwargs)
        for kwargs in ("{'row_norm': 1e400}", "{'intercept_scale': '2', 'row_norm': 2.0}")
    ]
    reviews = [op.review(op.request(rid)) for rid in hostile]
    refusals = [quiet(lambda rid=rid: op.approve(rid)) for rid in hostile]
    decisions = {d.request: d for d in watch_once(auto_approve, set()) if d.request in hostile}

    for review in reviews:
        assert any("model_kwargs" in problem for problem in review.problems), review.problems
    assert all(isinstance(r, OperatorError) for r in refusals), refusals
    assert set(decisions) == set(hostile) and not any(d.approved for d in decisions.values())
    logged = log()
    for rid in hostile:
        assert entries(logged, "request_received", request=rid)


def test_unbounded_compute_is_refused(
    scientist: Federation,
    operators: dict[str, Operator],
    auto_approve: Operator,
    audit_since: Since,
) -> None:
    log = audit_since(HOSPITAL)
    op = operators[HOSPITAL]
    request_id = hostile_plan(
        scientist,
        rounds="500",
        local_steps="100000",
        eval_every="1",
        model="'ehr_mlp'",
        model_kwargs="{'hidden': [4096, 4096, 4096, 4096, 4096, 4096]}",
    )

    review = op.review(op.request(request_id))
    refused = quiet(lambda: op.approve(request_id))
    decisions = [d for d in watch_once(auto_approve, set()) if d.request == request_id]

    assert review.projection is not None and review.projection.compute.parameters > 80_000_000
    text = "; ".join(review.problems)
    for key in ("max_local_steps", "max_total_steps", "max_evaluations", "max_model_parameters"):
        assert key in text, text
    assert isinstance(refused, OperatorError) and "max_model_parameters" in str(refused)
    assert decisions and not decisions[0].approved
    assert entries(log(), "request_received", request=request_id)
    assert entries(log(), "refused", layer="operator", request=request_id)


def test_escape_sequences_never_reach_the_operators_terminal(
    scientist: Federation, guarded: Launch, audit_since: Since
) -> None:
    log = audit_since(HOSPITAL)
    request_id = hostile_plan(scientist, label="'\\x1b[2K\\r\\x1b[32mvetted\\u202e'")

    shown = cli(guarded, "show", request_id[:12])
    listed = cli(guarded, "requests")

    for out in (shown, listed):
        assert out.returncode == 0, out.stderr
        assert not any(c in out.stdout for c in ("\x1b", "\r", "\u202e")), out.stdout
    assert "\\x1b" in shown.stdout
    assert entries(log(), "request_received", request=request_id)


# -- what the datasite tells callers with no account ----------------------------------------


def post(launch: Launch, path: str, body: dict[str, str]) -> tuple[int, bytes]:
    url = launch.hospital(HOSPITAL)["url"] + "/api/v2/" + path
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def test_login_and_password_reset_do_not_tell_which_accounts_exist(
    guarded: Launch, audit_since: Since
) -> None:
    log = audit_since(HOSPITAL)
    hospital = guarded.hospital(HOSPITAL)
    known, admin = hospital["scientist"]["email"], hospital["admin"]["email"]

    unknown_login = post(guarded, "login", {"email": "nobody@example.org", "password": "x" * 12})
    wrong_password = post(guarded, "login", {"email": known, "password": "x" * 12})
    resets = [
        post(guarded, "forgot_password", {"email": e}) for e in (admin, known, "nobody@example.org")
    ]
    docs = [
        quiet(lambda p=p: urllib.request.urlopen(hospital["url"] + p, timeout=30))
        for p in ("/docs", "/redoc", "/openapi.json")
    ]

    assert unknown_login == wrong_password
    assert resets[0] == resets[1] == resets[2]
    assert all(getattr(d, "code", None) == 404 for d in docs), docs
    refused = log()
    assert entries(refused, "refused", path="login", user="nobody@example.org")
    assert entries(refused, "refused", path="forgot_password", user=admin)


def test_the_admin_signing_key_never_leaves_identity_json(
    guarded: Launch, scientist: Federation, audit_since: Since
) -> None:
    from datasites.site.identity import Identity

    log = audit_since(HOSPITAL)
    root = guarded.data_dir / HOSPITAL
    identity = Identity(**json.loads((root / "identity.json").read_text()))
    scientist_key = str(scientist.client(HOSPITAL).credentials)

    stored = b"".join(p.read_bytes() for p in (root / "syft").rglob("*") if p.is_file())
    url = guarded.hospital(HOSPITAL)["url"]
    password_login = quiet(lambda: login(url, identity.admin_email, identity.admin_password))

    assert scientist_key.encode() in stored  # the search finds a key syft does keep
    assert identity.signing_key.encode() not in stored
    assert isinstance(password_login, Exception) and "Invalid login" in str(password_login)
    assert entries(log(), "refused", path="login", user=identity.admin_email)
