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
from pathlib import Path
from typing import Any

import pytest

from datasites.client.connection import post_phase_call, signing_identity
from datasites.contract.invitation import read_invitation
from datasites.contract.phase_call import read_reply, seal
from datasites.contract.syft_io import quiet
from datasites.contract.template import function_name
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


def test_pending_codes_of_any_size_cost_nothing_to_refuse(
    approved: Study, bob: Any, audit_since: Callable
) -> None:
    """Found live: the route parsed every code of the caller's with the study's name, pending
    ones included; two 250 kB template-shaped codes made each refusal cost about 2 s."""
    import importlib.util
    import tempfile

    import syft as sy
    from syft.service.policy.policy import OutputPolicyExecuteCount

    study_id = f"dos-{secrets.token_hex(3)}"
    name = function_name(study_id)
    assets = bob.datasets["ehr"].assets
    with tempfile.TemporaryDirectory() as folder, quiet():
        for copy in range(2):  # two distinct codes (syft keeps one request per code)
            literal = ", ".join(f'"k{i}": [{i}, {copy}]' for i in range(12_000))
            source = (
                f"def {name}(train, test, weights):\n    from datasites.runtime import execute\n"
                f'    plan = {{{literal}, "study_id": "{study_id}"}}\n'
                "    return execute(plan, train=train, test=test, request=weights)\n"
            )
            assert len(source) > 200_000
            path = f"{folder}/{name}_{copy}.py"
            with open(path, "w") as handle:
                handle.write(source)
            spec = importlib.util.spec_from_file_location(f"{name}_{copy}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            policy = sy.MixedInputPolicy(
                train=assets["train"], test=assets["test"], weights=dict, client=bob
            )
            function = sy.syft_function(
                input_policy=policy, output_policy=OutputPolicyExecuteCount(limit=2)
            )(getattr(module, name))
            assert hasattr(bob.code.request_code_execution(function), "id")
    log = audit_since(HOSPITAL)
    key = approved.partners[HOSPITAL]
    for _ in range(3):
        started = time.monotonic()
        reply = post(bob, signed(bob, key, study_id, ADVERTISE["batch"]))
        assert NO_STUDY in refused(reply)
        assert time.monotonic() - started < 1.0, "a pending code was parsed to refuse a call"
    entries = [e for e in log() if e["event"] == "refused" and e.get("path") == "secure_phase"]
    assert entries and all(e.get("user", "").startswith("bob-") for e in entries), entries
    assert all(e.get("study") == study_id for e in entries), entries


def test_hostile_literals_are_refused_in_one_sentence_without_a_traceback(
    approved: Study, guarded: Launch
) -> None:
    """Found live: a list as the phase, an issued time of 400 digits, or an array whose
    shape is Infinity raised past the route's checks: a traceback in the log per call."""
    from syft.server.credentials import SyftSigningKey

    from datasites.contract.phase_call import DOMAIN
    from datasites.contract.secure_sum import sign

    key = approved.partners[HOSPITAL]
    stranger = SyftSigningKey.generate()
    seed, verify_key = bytes(stranger.signing_key), str(stranger.verify_key)
    log_file = Path(guarded.data_dir) / HOSPITAL / "datasite.log"
    messages = [
        {"server": key, "study": approved.id, "issued": time.time(), "batch": [{"phase": []}]},
        {"server": key, "study": approved.id, "issued": 10**400, "batch": ADVERTISE["batch"]},
    ]
    texts = [json.dumps(m) for m in messages]
    texts.append(
        texts[0].replace(
            '{"phase": []}', '{"$": "array", "dtype": "float64", "shape": [Infinity], "b64": ""}'
        )
    )
    before = log_file.stat().st_size
    for _ in range(10):
        for text in texts:
            signature = sign(seed, DOMAIN + text.encode()).hex()
            body = json.dumps({"key": verify_key, "message": text, "signature": signature})
            error = refused(post(alice(approved), body.encode()))
            assert "could not be checked" not in error, error
    assert log_file.stat().st_size - before < 2_000, "refusals wrote to the datasite log"
