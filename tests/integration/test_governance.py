"""The hospital operator's governance on the session's live datasites: review, refusals,
budget, audit and automatic approval, through the Python API and the command line."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datasites.governance.operator import Operator, OperatorError
from datasites.privacy.ledger import Ledger
from datasites.site.audit import AuditLog, weights_digest
from scientist import DPConfig, Federation, StudyConfig
from scientist.study import initial_weights
from tests.conftest import Launch, datasites_cli, one_round_ehr, start_launch

STUDY = one_round_ehr(epsilon=2.0)
# The auto-approve launch's port; overridable, as the session's FEDERATION_TEST_BASE_PORT.
AUTO_APPROVE_PORT = int(os.environ.get("AUTO_APPROVE_TEST_PORT", "18591"))


@pytest.fixture(scope="module")
def op(federation: Launch) -> Operator:
    return Operator.open(federation.data_dir, "hospital-c", name="test-operator")


def cli(federation: Launch, *args: str, hospital: str = "hospital-c") -> Any:
    return datasites_cli(federation.data_dir, hospital, *args)


def entries_after(federation: Launch, hospital: str, start: int) -> list[dict[str, Any]]:
    return AuditLog.open(federation.data_dir / hospital).entries()[start:]


def audit_length(federation: Launch, hospital: str = "hospital-c") -> int:
    return len(AuditLog.open(federation.data_dir / hospital).entries())


def test_show_projects_exactly_what_the_study_then_spends(
    federation: Launch, fed: Federation, op: Operator
) -> None:
    study = fed.submit(StudyConfig(**STUDY), hospitals=["hospital-c"])
    request_id = study.requests["hospital-c"]
    shown = cli(federation, "show", request_id[:12])
    review = op.show(request_id)
    op.approve(request_id)
    study.run(progress=False)

    ledger = Ledger(federation.data_dir / "hospital-c" / "ledger.sqlite")
    record = ledger.study(study.id)
    assert shown.returncode == 0, shown.stderr
    for text in (
        "verdict   VETTED",
        "projected cost here: epsilon",
        "approve would be allowed",
        "  | def study_",
        "scientist@",
        "'epsilon': 2.0",
        "unit of privacy: one patient",
    ):
        assert text in shown.stdout, text
    p = review.projection
    assert p is not None and review.problems == ()
    assert p.noise_multiplier == record.noise_multiplier and p.n == record.n
    assert ledger.study_spent(study.id) == pytest.approx(p.study_epsilon, rel=1e-9)
    assert ledger.spent("ehr") == pytest.approx(p.total_after, rel=1e-9)
    assert p.study_epsilon <= 2.0


def test_approve_refuses_a_plan_outside_the_site_policy(
    federation: Launch, fed: Federation, op: Operator
) -> None:
    study = fed.submit(StudyConfig(**{**STUDY, "batch_size": 8}), hospitals=["hospital-c"])
    request_id = study.requests["hospital-c"]
    start = audit_length(federation)

    refused = cli(federation, "approve", request_id[:12])

    assert refused.returncode == 2
    assert "batch size 8 is below study.min_batch_size 32" in refused.stderr
    assert op.show(request_id).view.status == "pending"
    entries = entries_after(federation, "hospital-c", start)
    assert any(e["event"] == "refused" and "min_batch_size" in e["reason"] for e in entries)


def test_show_diffs_against_the_scientists_previous_approval(fed: Federation, op: Operator) -> None:
    first = fed.submit(StudyConfig(**STUDY), hospitals=["hospital-c"])
    op.approve(first.requests["hospital-c"])
    second = fed.submit(
        StudyConfig(**{**STUDY, "dp": DPConfig(epsilon=0.5)}), hospitals=["hospital-c"]
    )

    diff = op.show(second.requests["hospital-c"]).diff

    assert "-        'epsilon': 2.0," in diff and "+        'epsilon': 0.5," in diff
    assert f"-        'study_id': '{first.id}'" in diff


def test_deny_reaches_the_scientist_and_the_audit_log(
    federation: Launch, fed: Federation, op: Operator
) -> None:
    study = fed.submit(StudyConfig(**STUDY), hospitals=["hospital-c"])
    start = audit_length(federation)

    op.deny(study.requests["hospital-c"], "use ehr_mlp with fewer rounds")

    table = study.status().set_index("hospital")
    assert table.loc["hospital-c", "status"] == "denied"
    assert table.loc["hospital-c", "reason"] == "use ehr_mlp with fewer rounds"
    denial = [e for e in entries_after(federation, "hospital-c", start) if e["event"] == "denied"]
    assert denial and denial[0]["operator"] == "test-operator"
    assert denial[0]["reason"] == "use ehr_mlp with fewer rounds"


def test_budget_lists_the_studies_and_events_behind_the_total(
    federation: Launch, op: Operator
) -> None:
    out = cli(federation, "budget", "--json")

    budget = json.loads(out.stdout)["ehr"]
    ledger = Ledger(federation.data_dir / "hospital-c" / "ledger.sqlite")
    assert out.returncode == 0
    assert budget["spent"] == pytest.approx(ledger.spent("ehr"))
    assert budget["remaining"] == pytest.approx(budget["cap"] - budget["spent"])
    assert len(budget["events"]) == len(ledger.events(dataset="ehr")) > 0
    assert {s["study_id"] for s in budget["studies"]} == {s.study_id for s in ledger.studies("ehr")}
    typed = op.budget()
    assert typed.to_dict()["ehr"]["events"] == budget["events"]
    assert typed["ehr"].remaining == pytest.approx(budget["remaining"])
    assert repr(typed).startswith("Budget(hospital-c: ehr ") and "<table>" in typed._repr_html_()


def test_audit_records_the_digest_of_the_weights_that_left(
    federation: Launch, fed: Federation, op: Operator
) -> None:
    study = fed.submit(StudyConfig(**STUDY), hospitals=["hospital-c"])
    approved = cli(federation, "approve", study.requests["hospital-c"][:12])
    assert approved.returncode == 0, approved.stderr
    assert "hospital-c approved" in approved.stdout and "costs epsilon " in approved.stdout
    client = fed.client("hospital-c")
    assets = client.datasets["ehr"].assets
    start = audit_length(federation)
    reply = getattr(client.code, study.function)(
        train=assets["train"],
        test=assets["test"],
        weights={"round": 1, "weights": initial_weights(study.config)},
        blocking=True,
    ).get()

    rounds = [
        e for e in entries_after(federation, "hospital-c", start) if e["event"] == "round_executed"
    ]
    printed = cli(federation, "audit")
    verified = cli(federation, "audit", "--verify")

    assert len(rounds) == 1 and rounds[0]["study"] == study.id and rounds[0]["round"] == 1
    assert rounds[0]["weights_sha256"] == weights_digest(reply["train"]["weights"])
    assert rounds[0]["n"] == reply["train"]["n"]
    assert f"round_executed  study={study.id} round=1" in printed.stdout
    assert verified.returncode == 0 and "audit log intact" in verified.stdout


AUTO_POLICY = """
[budget]
epsilon_cap = 40.0

[study]
max_epsilon = 100.0

[auto_approve]
enabled = true
scientists = ["{email}"]
max_epsilon = 1.0
"""


@pytest.fixture
def auto_policy(federation: Launch, fed: Federation) -> Iterator[Path]:
    path = federation.data_dir / "hospital-c" / "policy.toml"
    before = path.read_text()
    path.write_text(AUTO_POLICY.format(email=fed.email("hospital-c")))
    yield path
    path.write_text(before)


def test_watch_approves_only_what_the_policy_allows(
    federation: Launch, fed: Federation, auto_policy: Path
) -> None:
    small = fed.submit(
        StudyConfig(**{**STUDY, "dp": DPConfig(epsilon=0.5)}), hospitals=["hospital-c"]
    )
    large = fed.submit(StudyConfig(**STUDY), hospitals=["hospital-c"])
    start = audit_length(federation)

    first = cli(federation, "watch", "--once")
    second = cli(federation, "watch", "--once")

    status = {
        s.id: s.status().set_index("hospital").loc["hospital-c", "status"] for s in (small, large)
    }
    assert first.returncode == 0, first.stderr
    assert status == {small.id: "approved", large.id: "pending"}
    assert f"auto-approved {small.requests['hospital-c'][:12]}" in first.stdout
    assert "epsilon 2 exceeds auto_approve.max_epsilon 1" in first.stdout
    decisions = [
        e for e in entries_after(federation, "hospital-c", start) if e["event"] == "policy_decision"
    ]
    assert {(e["request"], e["approved"]) for e in decisions} >= {
        (small.requests["hospital-c"], True),
        (large.requests["hospital-c"], False),
    }
    assert small.requests["hospital-c"][:12] not in second.stdout  # decided once


def test_custom_code_needs_the_recorded_override(
    federation: Launch, fed: Federation, op: Operator
) -> None:
    from tests.security.test_attacks import leak_rows, request_custom

    request_id = request_custom(fed.client("hospital-c"), leak_rows)

    refused = cli(federation, "approve", request_id[:12])
    shown = cli(federation, "show", request_id[:12])

    assert refused.returncode == 2 and "--allow-custom-code" in refused.stderr
    assert "verdict   CUSTOM - would run unsandboxed" in shown.stdout
    with pytest.raises(OperatorError, match="custom code"):
        op.approve(request_id)
    op.deny(request_id, "custom code is not accepted here")


@pytest.mark.live
def test_launch_auto_approve_starts_a_watcher_per_hospital(tmp_path: Path) -> None:
    data_dir = tmp_path / "auto"
    (data_dir / "hospital-a").mkdir(parents=True)
    (data_dir / "hospital-a" / "policy.toml").write_text(
        AUTO_POLICY.format(email="scientist@research.org")
    )
    launch = start_launch(
        "--hospitals",
        "1",
        "--base-port",
        str(AUTO_APPROVE_PORT),
        "--auto-approve",
        data_dir=data_dir,
    )
    try:
        scientist = Federation.connect(data_dir, workdir=tmp_path / "studies")
        study = scientist.submit(StudyConfig(**{**STUDY, "dp": DPConfig(epsilon=0.5)}))
        # A liveness bound, not a speed target: the watcher reviews (and calibrates) the
        # request while the rest of the suite keeps both cores busy.
        table = study.wait_for_approval(timeout=180, poll=1.0)
        assert table["status"].tolist() == ["approved"]
        # The watcher prints its decision after applying it: give the line time to arrive.
        deadline = time.monotonic() + 30
        while "hospital-a: auto-approved" not in launch.output and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "hospital-a: auto-approved" in launch.output
    finally:
        assert launch.stop() == 0
