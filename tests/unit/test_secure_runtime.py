"""Secure aggregation through the hospitals' own runtime, in-process: three real hospital
folders (policy, identity, ledger, partner registry), real DP training, the scientist's
relay; no syft (the live federation is in tests/integration)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from datasites.contract.plan import Plan
from datasites.privacy.ledger import Ledger
from datasites.runtime.execute import current_hospital, execute, verify_key_hex
from datasites.server.assets import ehr_training_view
from datasites.site.identity import Identity
from datasites.site.partners import write_partners
from datasites.site.paths import HOSPITAL_ROOT_ENV, IDENTITY_FILE, LEDGER_FILE
from datasites.site.policy import Policy
from scientist.config import DPConfig, StudyConfig
from scientist.secure_round import SecureRoundError, run_secure_round
from scientist.study import initial_weights
from synthetic.ehr import generate_ehr

NAMES = ("hospital-a", "hospital-b", "hospital-c")
CONFIG = StudyConfig(
    task="ehr",
    model="ehr_logistic",
    model_kwargs={},
    rounds=2,
    local_epochs=1,
    batch_size=64,
    lr=0.5,
    average_decay=0.0,
    dp=DPConfig(epsilon=2.0),
)
SCALE, CLIP = 2.0**20, 2.0**24


@pytest.fixture
def federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    roots = {name: tmp_path / name for name in NAMES}
    keys = {}
    for name, root in roots.items():
        Policy.write_default(root)
        identity = Identity.load_or_create(root / IDENTITY_FILE, name)
        keys[name] = verify_key_hex(bytes.fromhex(identity.signing_key))
    for root in roots.values():
        write_partners(root, keys)
    monkeypatch.setenv(HOSPITAL_ROOT_ENV, str(roots[NAMES[0]]))
    yield {"roots": roots, "keys": keys}
    current_hospital.cache_clear()


@pytest.fixture(scope="module")
def tables():
    return {
        name: ehr_training_view(generate_ehr(900, seed=20 + i, identifiers=False))
        for i, name in enumerate(NAMES)
    }


def secure_plan(keys: dict[str, str], study_id: str = "secure-0001", **changes) -> dict:
    plan = CONFIG.plan(study_id, "scientist@research.org")
    plan.update(
        aggregation="secure",
        partners=dict(keys),
        threshold=2,
        secure_scale=SCALE,
        secure_clip=CLIP,
    )
    plan.update(changes)
    return plan


def relay(federation, tables, plan: dict, down: set[str] = frozenset()):
    """The transport: each request runs in its hospital's runtime (env switched per call)."""

    def call_all(requests: dict[str, dict]) -> dict[str, dict]:
        replies = {}
        for name, request in requests.items():
            if name in down:
                replies[name] = {"hospital": name, "error": f"{name} is unreachable"}
                continue
            current_hospital.cache_clear()
            import os

            os.environ[HOSPITAL_ROOT_ENV] = str(federation["roots"][name])
            replies[name] = execute(plan, train=tables[name], test=tables[name], request=request)
        return replies

    return call_all


def recorded_update(root: Path, study: str, round_: int) -> tuple[dict, int]:
    """A hospital's own recorded training release (its ledger), as the plain protocol sends."""
    result = Ledger(root / LEDGER_FILE).result(study, "train", round_)
    released = pickle.loads(result)
    return released["weights"], released["n"]


def test_the_secure_sum_equals_the_plain_weighted_average(federation, tables) -> None:
    # Prepare
    plan = secure_plan(federation["keys"])
    weights = initial_weights(CONFIG)
    # Execute
    outcome = run_secure_round(relay(federation, tables, plan), Plan.from_dict(plan), 1, weights)
    # Assert: the "encrypted vs decrypted" check against each hospital's recorded update
    updates = [recorded_update(federation["roots"][n], "secure-0001", 1) for n in NAMES]
    total = sum(n for _, n in updates)
    assert outcome.contributors == list(NAMES) and outcome.n == total
    for key in weights:
        plain = sum(n * w[key].astype(np.float64) for w, n in updates) / total
        bound = len(NAMES) * 0.5 / SCALE / total * 4  # rounding of each n * update entry
        np.testing.assert_allclose(outcome.average[key], plain, atol=bound + 1e-6)
    assert outcome.counts is not None and np.asarray(outcome.counts).shape[0] == 2
    assert outcome.noise_std > 0 and outcome.loss_sum > 0


def test_a_hospital_lost_after_the_keys_drops_out_and_the_rest_complete(federation, tables) -> None:
    # Prepare: hospital-c answers the adverts and shares, then is gone for the mask phase
    plan = secure_plan(federation["keys"])
    weights = initial_weights(CONFIG)
    lost = {"n": 0}
    base = relay(federation, tables, plan)

    def call_all(requests):
        if any(r.get("phase") == "mask" for r in requests.values()):
            lost["n"] += 1
            requests = {n: r for n, r in requests.items() if n != "hospital-c"}
            replies = base(requests)
            replies["hospital-c"] = {"hospital": "hospital-c", "error": "killed"}
            return replies
        return base(requests)

    # Execute
    outcome = run_secure_round(call_all, Plan.from_dict(plan), 1, weights)
    # Assert: the sum is the survivors' plain FedAvg, exactly up to quantization
    survivors = [recorded_update(federation["roots"][n], "secure-0001", 1) for n in NAMES[:2]]
    total = sum(n for _, n in survivors)
    assert outcome.contributors == list(NAMES[:2]) and "hospital-c" in outcome.dropped
    for key in weights:
        plain = sum(n * w[key].astype(np.float64) for w, n in survivors) / total
        np.testing.assert_allclose(outcome.average[key], plain, atol=1e-5)


def test_below_the_threshold_nothing_is_unmasked(federation, tables) -> None:
    plan = secure_plan(federation["keys"])
    call_all = relay(federation, tables, plan, down={"hospital-b", "hospital-c"})
    with pytest.raises(SecureRoundError, match="fewer than its threshold 2; nothing was unmasked"):
        run_secure_round(call_all, Plan.from_dict(plan), 1, initial_weights(CONFIG))


def test_a_survivor_answers_the_unmasking_once(federation, tables) -> None:
    # Prepare: a complete round, then the relay asks again with hospital-b "dropped"
    plan = secure_plan(federation["keys"])
    call_all = relay(federation, tables, plan)
    run_secure_round(call_all, Plan.from_dict(plan), 1, initial_weights(CONFIG))
    ids = Plan.from_dict(plan).party_ids()
    request = {
        "round": 1,
        "phase": "unmask",
        "survivors": [ids["hospital-a"], ids["hospital-c"]],
        "dropped": [ids["hospital-b"]],
    }
    # Execute
    reply = call_all({"hospital-a": request})["hospital-a"]
    # Assert: hospital-b's b share went out already; its s share never follows
    assert reply["refused"] == "SecureRefusal" and "answers each phase once" in reply["error"]


def test_a_plan_naming_an_invented_partner_key_is_refused(federation, tables) -> None:
    keys = dict(federation["keys"], **{"hospital-c": "ab" * 32})
    plan = secure_plan(keys)
    reply = relay(federation, tables, plan)({"hospital-a": {"round": 1, "phase": "advertise"}})
    assert reply["hospital-a"]["refused"] == "PolicyRefusal"
    assert "not its registered key" in reply["hospital-a"]["error"]


def test_a_forged_advert_is_refused(federation, tables) -> None:
    plan = secure_plan(federation["keys"])
    call_all = relay(federation, tables, plan)
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


def test_a_plain_call_to_a_secure_study_is_refused(federation, tables) -> None:
    plan = secure_plan(federation["keys"])
    reply = relay(federation, tables, plan)(
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
    assert any("min_secure_threshold 3" in v for v in policy.violations(secure_plan(keys)))
    assert policy.violations(secure_plan(keys, threshold=3)) == []
