"""Secure aggregation through the hospitals' own runtime, in-process: three real hospital
folders (policy, identity, ledger, partner registry), real DP training, the scientist's
relay; no syft (the live secure_trio is in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasites.contract.plan import Plan
from scientist.secure_round import SecureRoundError, run_secure_round
from scientist.study import initial_weights
from tests.secure_harness import CONFIG, NAMES, SCALE, recorded_update, relay, secure_plan


def test_the_secure_sum_equals_the_plain_weighted_average(secure_trio, secure_tables) -> None:
    # Prepare
    plan = secure_plan(secure_trio["keys"])
    weights = initial_weights(CONFIG)
    # Execute
    outcome = run_secure_round(
        relay(secure_trio, secure_tables, plan), Plan.from_dict(plan), 1, weights
    )
    # Assert: the "encrypted vs decrypted" check against each hospital's recorded update
    updates = [recorded_update(secure_trio["roots"][n], "secure-0001", 1) for n in NAMES]
    total = sum(n for _, n in updates)
    assert outcome.contributors == list(NAMES) and outcome.n == total
    for key in weights:
        plain = sum(n * w[key].astype(np.float64) for w, n in updates) / total
        bound = len(NAMES) * 0.5 / SCALE / total * 4  # rounding of each n * update entry
        np.testing.assert_allclose(outcome.average[key], plain, atol=bound + 1e-6)
    assert outcome.counts is not None and np.asarray(outcome.counts).shape[0] == 2
    assert outcome.noise_std > 0 and outcome.loss_sum > 0


def test_a_hospital_lost_after_the_keys_drops_out_and_the_rest_complete(
    secure_trio, secure_tables
) -> None:
    # Prepare: hospital-c answers the adverts and shares, then is gone for the mask phase
    plan = secure_plan(secure_trio["keys"])
    weights = initial_weights(CONFIG)
    lost = {"n": 0}
    base = relay(secure_trio, secure_tables, plan)

    def call_all(requests):
        if any(sub.get("phase") == "mask" for r in requests.values() for sub in r["batch"]):
            lost["n"] += 1
            requests = {n: r for n, r in requests.items() if n != "hospital-c"}
            replies = base(requests)
            replies["hospital-c"] = {"hospital": "hospital-c", "error": "killed"}
            return replies
        return base(requests)

    # Execute
    outcome = run_secure_round(call_all, Plan.from_dict(plan), 1, weights)
    # Assert: the sum is the survivors' plain FedAvg, exactly up to quantization
    survivors = [recorded_update(secure_trio["roots"][n], "secure-0001", 1) for n in NAMES[:2]]
    total = sum(n for _, n in survivors)
    assert outcome.contributors == list(NAMES[:2]) and "hospital-c" in outcome.dropped
    for key in weights:
        plain = sum(n * w[key].astype(np.float64) for w, n in survivors) / total
        np.testing.assert_allclose(outcome.average[key], plain, atol=1e-5)


def test_below_the_threshold_nothing_is_unmasked(secure_trio, secure_tables) -> None:
    plan = secure_plan(secure_trio["keys"])
    call_all = relay(secure_trio, secure_tables, plan, down={"hospital-b", "hospital-c"})
    with pytest.raises(SecureRoundError, match="fewer than its threshold 2; nothing was unmasked"):
        run_secure_round(call_all, Plan.from_dict(plan), 1, initial_weights(CONFIG))


def test_a_plain_call_to_a_secure_study_is_refused(secure_trio, secure_tables) -> None:
    plan = secure_plan(secure_trio["keys"])
    reply = relay(secure_trio, secure_tables, plan)(
        {"hospital-a": {"round": 1, "weights": initial_weights(CONFIG)}}
    )["hospital-a"]
    assert reply["refused"] == "SecureRefusal" and "names a phase" in reply["error"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 1}, r"threshold must be within \[2, 3\]"),
        ({"threshold": 4}, r"threshold must be within \[2, 3\]"),
        ({"partners": {"hospital-a": "ab" * 32}}, "must map 2-64 hospital names"),
        ({"partners": {"Hospital A": "ab" * 32, "b": "cd" * 32}}, "not a hospital name"),
        ({"partners": {"hospital-a": "xyz", "hospital-b": "cd" * 32}}, "not 64 hex digits"),
        ({"partners": {"hospital-a": "ab" * 32, "hospital-b": "ab" * 32}}, "same verify key"),
        ({"secure_scale": 0.0}, "secure_scale must be within"),
        ({"secure_clip": 2.0**41}, "secure_clip must be within"),
        ({"secure_scale": 2.0**40, "secure_clip": 2.0**40}, "below 2\\^62"),
        ({"aggregation": "homomorphic"}, "aggregation must be one of plain, secure"),
    ],
)
def test_bad_secure_plans_are_refused_in_one_sentence(changes: dict, message: str) -> None:
    from datasites.contract.plan import PlanError

    keys = {"hospital-a": "ab" * 32, "hospital-b": "cd" * 32, "hospital-c": "ef" * 32}
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(secure_plan(keys, **changes))


def test_secure_fields_are_refused_on_a_plain_plan_and_plain_digests_are_unchanged() -> None:
    from datasites.contract.plan import PlanError

    plain = CONFIG.plan("plain-0001", "scientist@research.org")
    assert "aggregation" not in Plan.from_dict(plain).to_dict()
    assert (
        Plan.from_dict({**plain, "aggregation": "plain"}).digest() == Plan.from_dict(plain).digest()
    )
    with pytest.raises(PlanError, match="threshold apply to secure aggregation only"):
        Plan.from_dict({**plain, "threshold": 2})


def test_the_site_policy_can_require_secure_aggregation_and_a_threshold_floor(
    tmp_path: Path,
) -> None:
    from datasites.site.policy import StudyPolicy

    policy = StudyPolicy(require_secure_aggregation=True, min_secure_threshold=3)
    keys = {"hospital-a": "ab" * 32, "hospital-b": "cd" * 32, "hospital-c": "ef" * 32}
    plain = CONFIG.plan("plain-0001", "scientist@research.org")
    assert any("require_secure_aggregation" in v for v in policy.violations(plain))
    assert any(
        "below 3, study.min_secure_threshold" in v for v in policy.violations(secure_plan(keys))
    )
    assert policy.violations(secure_plan(keys, threshold=3)) == []
    # The default floor is more than two thirds of the partners: 3 of 3, 4 of 5, 5 of 7.
    default = StudyPolicy()
    assert any("more than two thirds" in v for v in default.violations(secure_plan(keys)))
    assert default.violations(secure_plan(keys, threshold=3)) == []
    five = {f"hospital-{c}": c * 64 for c in "abcde"}
    assert default.threshold_floor(five) == 4
    assert default.violations(secure_plan(five, threshold=4)) == []


def test_the_relay_announces_each_phase_as_it_begins(secure_trio, secure_tables) -> None:
    plan = secure_plan(secure_trio["keys"])
    phases: list[str] = []
    run_secure_round(
        relay(secure_trio, secure_tables, plan),
        Plan.from_dict(plan),
        1,
        initial_weights(CONFIG),
        on_phase=phases.append,
    )
    assert phases == ["advertise", "share", "mask", "confirm", "unmask"]


def test_the_relay_takes_three_syft_calls_a_round_once_it_runs(secure_trio, secure_tables) -> None:
    # Prepare: a 2-round study (3 calls), the transport counting syft calls per hospital
    from scientist.secure_round import SecureRelay

    plan = secure_plan(secure_trio["keys"])
    base = relay(secure_trio, secure_tables, plan)
    calls: list[dict] = []

    def counting(requests: dict) -> dict:
        calls.append(requests)
        return base(requests)

    relay_ = SecureRelay(counting, Plan.from_dict(plan), last_call=3)
    weights = initial_weights(CONFIG)
    # Execute
    for round_ in (1, 2, 3):
        outcome = relay_.call(round_, weights, None)
        weights = outcome.average if outcome.average is not None else weights
    # Assert: two calls to start, then three per call (the next rounds' phases ride along)
    assert len(calls) == 2 + 3 * 3
    assert outcome.counts is not None and outcome.contributors == list(NAMES)
    batched = [sub["phase"] for sub in calls[2]["hospital-a"]["batch"]]
    assert batched == ["mask", "share"]
    assert [sub["phase"] for sub in calls[3]["hospital-a"]["batch"]] == ["confirm", "advertise"]


def test_a_batch_is_answered_call_by_call(secure_trio, secure_tables) -> None:
    plan = secure_plan(secure_trio["keys"])
    call_all = relay(secure_trio, secure_tables, plan)
    batch = [{"round": 1, "phase": "advertise"}, {"round": 99, "phase": "advertise"}]
    reply = call_all({"hospital-a": {"batch": batch}})["hospital-a"]
    assert "advert" in reply["batch"][0] and reply["batch"][1]["refused"] == "SecureRefusal"
    nested = call_all({"hospital-a": {"batch": [{"batch": []}]}})["hospital-a"]
    assert nested["refused"] == "RequestError" and "none of them a batch" in nested["error"]
    too_many = call_all({"hospital-a": {"batch": batch * 2}})["hospital-a"]
    assert too_many["refused"] == "RequestError"


def test_the_audit_says_a_secure_release_left_masked(secure_trio, secure_tables) -> None:
    from datasites.site.audit import AuditLog

    plan = secure_plan(secure_trio["keys"])
    run_secure_round(
        relay(secure_trio, secure_tables, plan), Plan.from_dict(plan), 1, initial_weights(CONFIG)
    )
    entries = list(AuditLog.open(secure_trio["roots"]["hospital-a"]).entries())
    rounds = [e for e in entries if e["event"] == "round_executed"]
    phases = [e["phase"] for e in entries if e["event"] == "secure_phase"]
    assert rounds and rounds[0]["released"].startswith("masked")
    assert phases == ["advertise", "share", "mask", "confirm", "unmask"]


def test_show_says_which_colluders_the_threshold_resists() -> None:
    # Prepare: a secure plan at 3 of 3 (the default) and one at 2 of 3, as `show` prints them
    from datasites.cli.report import review_text
    from datasites.contract.template import TEMPLATE, function_name
    from datasites.governance.operator import Review
    from datasites.governance.vetting import classify
    from tests.unit.test_untrusted import literal, view_of

    keys = {"hospital-a": "ab" * 32, "hospital-b": "cd" * 32, "hospital-c": "ef" * 32}
    texts = {}
    for threshold in (3, 2):
        plan = secure_plan(keys, "show-0001", threshold=threshold)
        name = function_name("show-0001")
        source = TEMPLATE.format(name=name, plan=literal(plan))
        texts[threshold] = review_text(
            Review(view_of(classify(source, name), source), None, (), "")
        )
    # Assert
    assert (
        "threshold      3  (every sum covers at least 3 of 3 hospitals; holds against the "
        "relay lying together with up to 1 colluding partner hospital)" in texts[3]
    )
    assert "holds against the relay alone, not with a partner colluding" in texts[2]
