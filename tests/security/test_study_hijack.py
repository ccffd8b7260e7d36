"""Study ids and plans bound to their account, through real datasites (issue 27).

Found live: Bob submitted an identical copy of Alice's approved plan (her study id, her
email in it); `show` said "vetted", approve succeeded, and Bob's round 1 returned Alice's
recorded release. Mallet, calling round 1 first with weights of his choice, made Alice's
own round 1 return Mallet's release. Alice submitted a plan naming dean@ as its scientist;
`show` listed no problem and the budget attributed the study to dean@.

Here the operator's review refuses each of these, and where a careless operator approves
anyway (with syft's own API, past the review), the runtime refuses them: the account a
study runs for is the one whose key submitted the code, never the plan's `scientist`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from datasites.contract.invitation import read_invitation
from datasites.contract.syft_io import quiet
from datasites.governance.accounts import Accounts
from datasites.governance.operator import Operator, OperatorError
from scientist.config import StudyConfig
from scientist.study import initial_weights
from scientist.study_code import function_name
from scientist.submit import _request, new_study_id
from tests.conftest import Launch, admin_login, login, one_round_ehr

HOSPITAL = "hospital-a"
CONFIG = StudyConfig(**one_round_ehr(epsilon=0.3))


@pytest.fixture(scope="module")
def op(federation: Launch) -> Operator:
    return Operator.open(federation.data_dir, HOSPITAL, name="hijack-test")


@pytest.fixture(scope="module")
def accounts(federation: Launch, op: Operator) -> Iterator[dict[str, Any]]:
    """alice, bob and mallet, each logged in with their own account; removed at the end."""
    made = {}
    for who in ("alice", "bob", "mallet"):
        email = f"{who}-{secrets.token_hex(3)}@uni-research.org"
        invitation = read_invitation(Accounts(op).add(email).invitation)
        made[who] = (email, login(invitation.url, email, invitation.password))
    yield made
    for email, _ in made.values():
        Accounts(op).remove(email, "test cleanup")


def submit(account: tuple[str, Any], plan: dict) -> str:
    with quiet():
        return _request(account[1], plan)


def call(account: tuple[str, Any], plan: dict, weights: dict) -> dict[str, Any]:
    client = account[1]
    with quiet():
        assets = client.datasets["ehr"].assets
        function = getattr(client.code, function_name(plan["study_id"]))
        result = function(
            train=assets["train"],
            test=assets["test"],
            weights={"round": 1, "weights": weights},
            blocking=True,
        )
    return result.get() if hasattr(result, "get") else result


def force_approve(federation: Launch, request_id: str) -> None:
    """What a careless operator could do with syft's own API, past `show` and `approve`."""
    admin = admin_login(federation, HOSPITAL)
    with quiet():
        request = next(r for r in admin.requests if str(r.id) == request_id)
        request.approve()


def test_a_plan_naming_another_scientist_is_disqualified(op: Operator, accounts: dict) -> None:
    alice = accounts["alice"]
    plan = CONFIG.plan(new_study_id("ehr"), "dean@uni-research.org")
    request = submit(alice, plan)

    review = op.show(request)
    assert any(
        p.startswith("owner: the plan names dean@uni-research.org") and alice[0] in p
        for p in review.problems
    ), review.problems
    with pytest.raises(OperatorError, match="owner: the plan names"):
        op.approve(request)


def test_a_copied_study_id_is_refused_at_review_and_at_run_time(
    federation: Launch, op: Operator, accounts: dict
) -> None:
    alice, bob = accounts["alice"], accounts["bob"]
    weights = initial_weights(CONFIG)
    plan = CONFIG.plan(new_study_id("ehr"), alice[0])
    op.approve(submit(alice, plan))
    first = call(alice, plan, weights)
    assert "train" in first, first

    copies = {"identical": plan, "renamed": {**plan, "scientist": bob[0]}}
    for kind, copy in copies.items():
        request = submit(bob, copy)
        problems = op.show(request).problems
        assert any(f"study id {plan['study_id']} belongs to {alice[0]}" in p for p in problems), (
            kind,
            problems,
        )
        with pytest.raises(OperatorError, match="owner:"):
            op.approve(request)
        force_approve(federation, request)
        out = call(bob, copy, weights)
        assert "train" not in out and "error" in out, (kind, out)
        if kind == "renamed":  # who holds the id is not Bob's business
            assert "belongs to another account" in out["error"] and alice[0] not in out["error"]
        else:
            assert out["error"].startswith(f"the plan names {alice[0]}")

    again = call(alice, plan, weights)
    assert again["train"]["n"] == first["train"]["n"]
    [record] = [s for s in op.hospital.ledger.studies() if s.study_id == plan["study_id"]]
    assert record.scientist == alice[0]


def test_calling_first_does_not_take_the_study_from_its_owner(
    federation: Launch, op: Operator, accounts: dict
) -> None:
    alice, mallet = accounts["alice"], accounts["mallet"]
    weights = initial_weights(CONFIG)
    plan = CONFIG.plan(new_study_id("ehr"), alice[0])
    mine = submit(alice, plan)
    theirs = submit(mallet, {**plan, "scientist": mallet[0]})
    for request in (mine, theirs):  # both pending: the review names the other account
        assert any("is also in a request from" in p for p in op.show(request).problems)
        force_approve(federation, request)

    chosen = {k: v * 0 + 0.25 for k, v in weights.items()}
    assert "train" in call(mallet, {**plan, "scientist": mallet[0]}, chosen)
    out = call(alice, plan, weights)
    assert "train" not in out and "belongs to another account" in out["error"], out
    assert op.hospital.ledger.owner(plan["study_id"]) == mallet[0]
