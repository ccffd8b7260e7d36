"""The light-phase envelope and the template check the datasite's route relies on."""

from __future__ import annotations

import json
import time

import pytest

from datasites.contract.phase_call import PhaseCallError, open_call, read_reply, seal
from datasites.contract.secure_sum import generate_signing_key
from datasites.contract.template import function_name, study_source, template_plan

SERVER = "ab" * 32
OTHER = "cd" * 32
BATCH = [{"round": 1, "phase": "share", "adverts": {1: {"c_public": b"\x00" * 32}}}]


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    private, public = generate_signing_key()
    return private, public.hex()


def test_a_sealed_call_opens_with_its_values_and_signer(keys: tuple[bytes, str]) -> None:
    seed, key = keys
    call = open_call(seal(seed, key, SERVER, "ehr-1", BATCH), SERVER)
    assert (call.key, call.study, call.batch) == (key, "ehr-1", BATCH)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: {**e, "signature": "00" * 64}, "signature is invalid"),
        (lambda e: {**e, "message": e["message"] + " "}, "signature is invalid"),
        (lambda e: {**e, "key": "ef" * 32}, "signature is invalid"),
        (lambda e: {**e, "key": "XY" * 32}, "lowercase hex"),
        (lambda e: {**e, "extra": 1}, "{key, message, signature}"),
        (lambda e: [e], "{key, message, signature}"),
    ],
)
def test_a_changed_envelope_is_refused(keys: tuple[bytes, str], change, message: str) -> None:
    seed, key = keys
    envelope = json.loads(seal(seed, key, SERVER, "ehr-1", BATCH))
    with pytest.raises(PhaseCallError, match=message.replace("{", r"\{").replace("}", r"\}")):
        open_call(json.dumps(change(envelope)).encode(), SERVER)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"server": OTHER}, "another datasite"),
        ({"skew": -301}, "more than 300 s"),
        ({"skew": 301}, "more than 300 s"),
        ({"study": "../etc"}, "not a study id"),
        ({"study": "x" * 65}, "not a study id"),
        ({"batch": []}, "1-3 phase requests"),
        ({"batch": BATCH * 4}, "1-3 phase requests"),
        ({"batch": [{"round": 1, "phase": "mask"}]}, "mask phase is a syft call"),
        ({"batch": ["advertise"]}, "only the phases"),
    ],
)
def test_a_call_not_for_this_datasite_now_or_of_light_phases_is_refused(
    keys: tuple[bytes, str], args: dict, message: str
) -> None:
    seed, key = keys
    values = {"server": SERVER, "study": "ehr-1", "batch": BATCH, "skew": 0} | args
    now = time.time() + values["skew"]  # at the test's own time, not at collection
    body = seal(seed, key, values["server"], values["study"], values["batch"], now)
    with pytest.raises(PhaseCallError, match=message):
        open_call(body, SERVER)


def test_hostile_bodies_are_refused_in_one_sentence(keys: tuple[bytes, str]) -> None:
    for body in (b"[" * 100_000, b"\xff\xfe", b"{" * 10 + b"}" * 10, b"x" * (65 * 1024)):
        with pytest.raises(PhaseCallError):
            open_call(body, SERVER)
    with pytest.raises(PhaseCallError, match="not plain data"):
        read_reply(b'{"$": "pickle", "v": "gASV"}')


def test_only_the_exact_template_yields_its_plan() -> None:
    plan = {"study_id": "ehr-20261205-1", "rounds": 3, "task": "ehr"}
    name = function_name(plan["study_id"])
    source = study_source(plan)
    assert template_plan(source, name) == plan
    changed = {
        "an extra statement": source.replace("    plan =", "    import os\n    plan ="),
        "a call before": "print(1)\n" + source,
        "another function name": source.replace(name, name + "_x"),
        "a plan of another id": source.replace("ehr-20261205-1", "ehr-20261205-2"),
        "not Python": source + "\n)(",
        "too large": source + "#" * (300 * 1024),
    }
    for why, text in changed.items():
        assert template_plan(text, name) is None, why
    assert template_plan(source, "study_other") is None
