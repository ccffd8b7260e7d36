"""Attacks that secure aggregation opens, played by a scientist who controls the relay,
against the hospitals' real runtime (in-process hospital folders; see
tests/secure_harness.py)."""

from __future__ import annotations

import numpy as np
import pytest

from datasites.contract.plan import Plan
from datasites.contract.release import default_edges
from datasites.contract.secure_sum import (
    agree,
    expand,
    pair_context,
    reconstruct,
)
from datasites.contract.secure_wire import masked_from_wire, reply_from_wire, round_layout
from datasites.runtime.secure import STORE_FILE
from datasites.site.phase_store import PhaseStore
from scientist.secure_round import run_secure_round
from scientist.study import initial_weights
from tests.secure_harness import (
    CONFIG,
    NAMES,
    phases_until_mask,
    relay,
    secure_plan,
    true_vector,
)

# The hospitals' runtime in-process: no datasite, so these run alongside the live tests.
pytestmark = pytest.mark.in_process


def test_dropping_a_hospital_on_purpose_after_its_update_arrived_unmasks_nothing(
    secure_trio, secure_tables
) -> None:
    # Prepare: every hospital masks its update; the relay then calls hospital-a "dropped"
    plan_dict = secure_plan(secure_trio["keys"])
    plan = Plan.from_dict(plan_dict)
    call_all = relay(secure_trio, secure_tables, plan_dict)
    weights = initial_weights(CONFIG)
    ids, adverts, masked = phases_until_mask(call_all, NAMES, plan, weights)
    layout = round_layout(plan, 1, default_edges("binary"))
    y_a = masked_from_wire(masked["hospital-a"]["masked"], layout.length)
    a, others = ids["hospital-a"], [ids["hospital-b"], ids["hospital-c"]]
    confirmed = call_all(
        {n: {"round": 1, "phase": "confirm", "survivors": others} for n in NAMES[1:]}
    )
    signatures = {ids[n]: r["signature"] for n, r in confirmed.items()}
    unmask = {"round": 1, "phase": "unmask", "survivors": others, "dropped": [a]}
    replies = call_all({n: {**unmask, "signatures": signatures} for n in NAMES[1:]})
    # Execute: the attacker rebuilds a's mask key from the survivors' shares and strips every
    # pairwise mask from a's vector
    shares = {ids[n]: reply_from_wire(r["reply"]).s_shares[a] for n, r in replies.items()}
    s_private = reconstruct(shares, plan.threshold)
    stripped = y_a.copy()
    for peer in others:
        seed = agree(
            s_private, adverts[peer]["s_public"], pair_context("mask", plan.study_id, 1, a, peer)
        )
        mask = expand(seed, layout.length)
        stripped = stripped - mask if peer > a else stripped + mask
    # Assert: what remains is still hidden by a's self mask, which no one will reveal
    truth = true_vector(secure_trio, plan, layout, weights)
    signed = stripped.view(np.int64).astype(float)
    assert np.mean(stripped == truth) < 0.01
    assert abs(np.corrcoef(signed, truth.view(np.int64).astype(float))[0, 1]) < 0.3
    # Positive control: with a's self-mask seed (read from its own store, which only the
    # hospital holds) the stripped vector is exactly its update: the attack needs b_a.
    _, seed = PhaseStore(secure_trio["roots"]["hospital-a"] / STORE_FILE).get(
        (plan.scientist, plan.study_id), 1, "keys"
    )
    np.testing.assert_array_equal(stripped - expand(seed, layout.length), truth)
    # Nor will a survivor now reveal a's self-mask share: it answered the unmasking once.
    again = {"round": 1, "phase": "unmask", "survivors": [a, *others], "dropped": []}
    refused = call_all({"hospital-b": {**again, "signatures": signatures}})["hospital-b"]
    assert refused["refused"] == "SecureRefusal" and "answers each phase once" in refused["error"]
    # Nor will it sign the other story, which is what another survivor would need first.
    resign = {"round": 1, "phase": "confirm", "survivors": [a, *others]}
    refused = call_all({"hospital-b": resign})["hospital-b"]
    assert refused["refused"] == "SecureRefusal" and "answers each phase once" in refused["error"]


def test_a_survivor_answers_the_unmasking_once(secure_trio, secure_tables) -> None:
    # Prepare: a complete round, then the relay asks again with hospital-b "dropped"
    plan = secure_plan(secure_trio["keys"])
    call_all = relay(secure_trio, secure_tables, plan)
    run_secure_round(call_all, Plan.from_dict(plan), 1, initial_weights(CONFIG))
    ids = Plan.from_dict(plan).party_ids()
    request = {
        "round": 1,
        "phase": "unmask",
        "survivors": [ids["hospital-a"], ids["hospital-c"]],
        "dropped": [ids["hospital-b"]],
        "signatures": {},
    }
    # Execute
    reply = call_all({"hospital-a": request})["hospital-a"]
    # Assert: hospital-b's b share went out already; its s share never follows
    assert reply["refused"] == "SecureRefusal" and "answers each phase once" in reply["error"]


def test_a_plan_naming_an_invented_partner_key_is_refused(secure_trio, secure_tables) -> None:
    keys = dict(secure_trio["keys"], **{"hospital-c": "ab" * 32})
    plan = secure_plan(keys)
    reply = relay(secure_trio, secure_tables, plan)(
        {"hospital-a": {"round": 1, "phase": "advertise"}}
    )
    assert reply["hospital-a"]["refused"] == "PolicyRefusal"
    assert "not its registered key" in reply["hospital-a"]["error"]


def test_a_forged_advert_is_refused(secure_trio, secure_tables) -> None:
    plan = secure_plan(secure_trio["keys"])
    call_all = relay(secure_trio, secure_tables, plan)
    ids = Plan.from_dict(plan).party_ids()
    adverts = {
        ids[n]: r["advert"]
        for n, r in call_all({n: {"round": 1, "phase": "advertise"} for n in NAMES}).items()
    }
    forged = dict(adverts[ids["hospital-c"]], s_public=bytes(32))
    request = {"round": 1, "phase": "share", "adverts": {**adverts, ids["hospital-c"]: forged}}
    reply = call_all({"hospital-a": request})["hospital-a"]
    assert reply["refused"] == "SecureRefusal" and "invalid signature" in reply["error"]
    # An advert of another round (a replay) fails the same way.
    old = call_all({"hospital-c": {"round": 2, "phase": "advertise"}})["hospital-c"]["advert"]
    request = {"round": 1, "phase": "share", "adverts": {**adverts, ids["hospital-c"]: old}}
    reply = call_all({"hospital-a": request})["hospital-a"]
    assert reply["refused"] == "SecureRefusal" and "invalid signature" in reply["error"]


def test_hostile_weights_in_a_mask_call_are_refused_by_name(secure_trio, secure_tables) -> None:
    # Prepare: adverts and shares; the relay's first mask calls to hospital-a carry weights
    # of the wrong shape and of absurd size, then honest weights, then hostile ones again
    plan_dict = secure_plan(secure_trio["keys"])
    call_all = relay(secure_trio, secure_tables, plan_dict)
    weights = initial_weights(CONFIG)
    ids = Plan.from_dict(plan_dict).party_ids()
    adverts = {
        ids[n]: r["advert"]
        for n, r in call_all({n: {"round": 1, "phase": "advertise"} for n in NAMES}).items()
    }
    shared = call_all({n: {"round": 1, "phase": "share", "adverts": adverts} for n in NAMES})
    inbox = {ids[s]: r["shares"][ids["hospital-a"]] for s, r in shared.items() if s != "hospital-a"}
    name = next(iter(weights))
    hostile = (
        {**weights, name: np.full((3, 3), 1234.5, np.float32)},
        {**weights, name: np.full(weights[name].shape, 1e30, np.float32)},
        "not weights",
    )
    for bad in hostile:
        request = {"round": 1, "phase": "mask", "shares": inbox, "weights": bad}
        reply = call_all({"hospital-a": request})["hospital-a"]
        # Assert: refused in the scientist's own terms, no value echoed, no incident
        assert reply["refused"] == "SecureRefusal" and "weight" in reply["error"], reply
        assert "1234" not in reply["error"] and "incident" not in reply["error"]
    honest = {"round": 1, "phase": "mask", "shares": inbox, "weights": weights}
    assert "masked" in call_all({"hospital-a": honest})["hospital-a"]
    for bad in hostile:  # once answered, any other input is refused before it is read
        request = {"round": 1, "phase": "mask", "shares": inbox, "weights": bad}
        reply = call_all({"hospital-a": request})["hospital-a"]
        assert reply["refused"] == "SecureRefusal" and "answers each phase once" in reply["error"]
        assert "1234" not in reply["error"] and "incident" not in reply["error"]


def test_a_401_digit_edge_is_refused_in_one_sentence_not_an_incident(
    secure_trio, secure_tables
) -> None:
    # Prepare: the live attack's edges, in a plain study's call (the secure mask phase reads
    # them through the same check)
    from datasites.contract.release import check_edges

    plan = CONFIG.plan("edges-0001", "scientist@research.org")
    call_all = relay(secure_trio, secure_tables, plan)
    hostile = [0, 10**400, 1]
    request = {"round": 1, "weights": initial_weights(CONFIG), "edges": hostile}
    # Execute
    reply = call_all({"hospital-a": request})["hospital-a"]
    # Assert: the scientist's own mistake, in one sentence; no incident, no value echoed
    assert reply["refused"] == "RequestError" and "edges must be an array" in reply["error"]
    with pytest.raises(ValueError, match="edges must be an array of numbers"):
        check_edges(hostile)
