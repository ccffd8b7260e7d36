"""The light-phase route: a secure study's advertise, share, confirm and unmask outside syft.

The route is a new trust boundary (issue 26 made the light phases cheap by answering them
beside syft's API, `datasites.server.phase_route`). Every value of a call is the caller's:
here each way to misuse it is tried against a real datasite, and each is refused in one
sentence without running the runtime, audited, and told apart from nothing (another
account's study, a pending or denied one and one that does not exist read the same).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from datasites.client.connection import post_phase_call, signing_identity
from datasites.contract.invitation import read_invitation
from datasites.contract.phase_call import read_reply, seal
from datasites.contract.syft_io import quiet
from datasites.governance.accounts import Accounts
from datasites.governance.operator import Operator
from datasites.server.phase_route import NO_STUDY
from scientist import Federation
from scientist.config import DPConfig, StudyConfig
from scientist.phase_calls import light_call
from scientist.study import Study
from tests.conftest import Launch, login

HOSPITAL = "hospital-a"
SECURE = StudyConfig(
    task="ehr",
    model="ehr_logistic",
    local_epochs=1,
    rounds=2,
    eval_every=2,
    batch_size=128,
    dp=DPConfig(epsilon=0.5, delta=1e-5, max_grad_norm=1.0),
)
ADVERTISE = {"batch": [{"round": 1, "phase": "advertise"}]}


@pytest.fixture(scope="module")
def approved(scientist: Federation, operators: dict[str, Operator]) -> Study:
    study = scientist.submit(SECURE)
    for hospital, request_id in study.requests.items():
        operators[hospital].approve(request_id)
    return study


@pytest.fixture(scope="module")
def bob(guarded: Launch, operators: dict[str, Operator]) -> Iterator[Any]:
    """A second scientist at hospital-a, logged in with his own account."""
    email = f"bob-{secrets.token_hex(3)}@uni-research.org"
    accounts = Accounts(operators[HOSPITAL])
    invitation = read_invitation(accounts.add(email).invitation)
    yield login(invitation.url, email, invitation.password)
    accounts.remove(email, "test cleanup")


def alice(study: Study) -> Any:
    return study.pool.client(HOSPITAL)


def post(client: Any, body: bytes) -> dict[str, Any]:
    raw = post_phase_call(client, body)
    assert raw is not None, "the datasite does not serve the light route"
    return read_reply(raw)


def signed(client: Any, server: str, study: str, batch: list, **kwargs: Any) -> bytes:
    seed, key = signing_identity(client)
    return seal(seed, key, server, study, batch, **kwargs)


def refused(reply: dict[str, Any]) -> str:
    assert "error" in reply and "batch" not in reply, reply
    assert reply["error"].startswith("refused by this hospital: "), reply
    return reply["error"]


def test_the_owner_gets_the_same_answer_as_through_syft(approved: Study) -> None:
    key = approved.partners[HOSPITAL]
    first = light_call(alice(approved), key, approved.id, ADVERTISE)
    assert first is not None and first["batch"][0]["phase"] == "advertise", first
    with quiet():
        through_syft = approved._call_one(HOSPITAL, alice(approved), ADVERTISE)
    assert through_syft["batch"][0]["advert"] == first["batch"][0]["advert"]


def test_another_account_pending_and_unknown_studies_read_the_same(
    approved: Study, bob: Any, scientist: Federation, audit_since: Callable
) -> None:
    key = approved.partners[HOSPITAL]
    pending = scientist.submit(SECURE)  # submitted, never approved
    log = audit_since(HOSPITAL)
    answers = {
        "another account's": post(bob, signed(bob, key, approved.id, ADVERTISE["batch"])),
        "pending": post(
            alice(approved), signed(alice(approved), key, pending.id, ADVERTISE["batch"])
        ),
        "unknown": post(
            alice(approved),
            signed(alice(approved), key, "ehr-20000101-000000-beef", ADVERTISE["batch"]),
        ),
    }
    assert len({refused(reply) for reply in answers.values()}) == 1, answers
    assert NO_STUDY in answers["pending"]["error"]
    entries = [e for e in log() if e["event"] == "refused" and e.get("path") == "secure_phase"]
    assert entries, "the route's refusals are not audited"
    assert not [e for e in log() if e["event"] == "secure_phase"]


def test_envelopes_that_are_not_a_current_signed_call_are_refused(approved: Study) -> None:
    client, key = alice(approved), approved.partners[HOSPITAL]
    other = approved.partners["hospital-b"]
    good = signed(client, key, approved.id, ADVERTISE["batch"])
    tampered = json.loads(good)
    tampered["message"] += " "  # the same JSON value, other signed bytes
    forged_key = json.loads(good)
    forged_key["key"] = secrets.token_hex(32)
    cases = {
        "signed for another datasite": signed(client, other, approved.id, ADVERTISE["batch"]),
        "more than 300 s": signed(
            client, key, approved.id, ADVERTISE["batch"], now=time.time() - 3600
        ),
        "signature is invalid": json.dumps(tampered).encode(),
        "signature is invalid ": json.dumps(forged_key).encode(),
        "the mask phase is a syft call": signed(
            client, key, approved.id, [{"round": 1, "phase": "mask"}]
        ),
        "not a JSON envelope": b"[" * 5000,
        "is {key, message, signature}": b'{"key": 1}',
        "1-3 phase requests": signed(client, key, approved.id, []),
    }
    for expected, body in cases.items():
        assert expected.strip() in refused(post(client, body)), expected


def test_guests_and_operators_are_not_served(
    approved: Study, guarded: Launch, admins: dict[str, Any]
) -> None:
    from syft.server.credentials import SyftSigningKey

    key = approved.partners[HOSPITAL]
    stranger = SyftSigningKey.generate()
    body = seal(
        bytes(stranger.signing_key),
        str(stranger.verify_key),
        key,
        approved.id,
        ADVERTISE["batch"],
    )
    assert "scientists' accounts" in refused(post(alice(approved), body))
    admin = admins[HOSPITAL]
    body = signed(admin, key, approved.id, ADVERTISE["batch"])
    assert "scientists' accounts" in refused(post(alice(approved), body))


def test_a_repeat_is_the_stored_answer_and_other_inputs_are_refused(
    approved: Study, audit_since: Callable
) -> None:
    client, key = alice(approved), approved.partners[HOSPITAL]
    log = audit_since(HOSPITAL)
    body = signed(client, key, approved.id, [{"round": 2, "phase": "advertise"}])
    first, again = post(client, body), post(client, body)
    assert first["batch"] == again["batch"], (first, again)
    assert [e["event"] for e in log() if e.get("study") == approved.id][-1] == "repeat_served"
    wrong = [{"round": 2, "phase": "confirm", "survivors": [1, 2]}]
    reply = post(client, signed(client, key, approved.id, wrong))
    assert "error" in reply["batch"][0], reply  # no mask answered: nothing to confirm
