"""The attack-path suite: real attempts by the scientist's accounts against live datasites.

Every attempt must fail, and where it reaches a datasite it must leave an audit entry. The
numbers follow the governance issue's list of twelve attack paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from datasites.governance.operator import Operator, OperatorError
from datasites.privacy.ledger import Ledger
from scientist import DPConfig, Federation, StudyConfig
from scientist.study import Study, StudyError, initial_weights
from scientist.submit import _request
from tests.conftest import REPO, Launch, listening_addresses, login, one_round_ehr, outside_address
from tests.security.conftest import GUARDED_BASE_PORT, GUARDED_CAP, HOSPITALS
from tests.security.forge import quiet as attempt

Since = Callable[[str], Callable[[], list[dict[str, Any]]]]
TINY = one_round_ehr(epsilon=0.3)


def refused(entries: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if e["event"] == "refused" and all(str(v) in str(e.get(k, "")) for k, v in match.items())
    ]


def ledger(guarded: Launch, hospital: str) -> Ledger:
    return Ledger(guarded.data_dir / hospital / "ledger.sqlite")


def call(
    fed: Federation,
    study: Study,
    hospital: str,
    request: Any,
    *,
    train: str = "train",
    test: str = "test",
    dataset: str | None = None,
) -> Any:
    """Call the study's function at one hospital with chosen assets; value or error text."""
    client = fed.client(hospital)
    assets = client.datasets[dataset or study.config.task].assets
    function = getattr(client.code, study.function)

    def run() -> Any:
        result = function(train=assets[train], test=assets[test], weights=request, blocking=True)
        return result.get() if hasattr(result, "get") else result

    value = attempt(run)
    return value if isinstance(value, dict) else str(value)


def approved_study(
    fed: Federation, operators: dict[str, Operator], hospital: str, **changes: Any
) -> Study:
    study = fed.submit(StudyConfig(**{**TINY, **changes}), hospitals=[hospital])
    operators[hospital].approve(study.requests[hospital])
    return study


# 1 ------------------------------------------------------------------------------------------


def test_01_reading_a_private_asset_directly_is_refused(
    scientist: Federation, audit_since: Since
) -> None:
    log = audit_since("hospital-a")
    asset = scientist.client("hospital-a").datasets["ehr"].assets["train"]

    got = attempt(lambda: asset.data)

    assert not isinstance(got, pd.DataFrame)
    assert refused(log(), layer="syft", user=scientist.email("hospital-a"))


# 2 ------------------------------------------------------------------------------------------


def test_02_code_that_was_never_approved_does_not_run(
    scientist: Federation, guarded: Launch, audit_since: Since
) -> None:
    study = scientist.submit(StudyConfig(**TINY), hospitals=["hospital-a"])
    log = audit_since("hospital-a")

    request = {"round": 1, "weights": initial_weights(study.config)}
    got = call(scientist, study, "hospital-a", request)

    assert not isinstance(got, dict) or "train" not in got
    assert ledger(guarded, "hospital-a").study(study.id) is None
    assert refused(log(), layer="syft", user=scientist.email("hospital-a"))


# 3 ------------------------------------------------------------------------------------------


def test_03_approved_code_does_not_run_on_other_assets(
    scientist: Federation, operators: dict[str, Operator], guarded: Launch, audit_since: Since
) -> None:
    study = approved_study(scientist, operators, "hospital-a")
    request = {"round": 1, "weights": initial_weights(study.config)}
    log = audit_since("hospital-a")

    swapped = call(scientist, study, "hospital-a", request, train="test", test="train")
    images = call(scientist, study, "hospital-a", request, dataset="pathmnist")

    for got in (swapped, images):
        assert not isinstance(got, dict) or "train" not in got, got
    assert ledger(guarded, "hospital-a").study_spent(study.id) == 0.0
    assert len(refused(log())) >= 2


# 4 and 5 ------------------------------------------------------------------------------------


def test_04_05_extra_rounds_are_refused_and_repeats_are_free(
    scientist: Federation, operators: dict[str, Operator], guarded: Launch, audit_since: Since
) -> None:
    study = approved_study(scientist, operators, "hospital-a")
    weights = initial_weights(study.config)
    first = call(scientist, study, "hospital-a", {"round": 1, "weights": weights})
    assert "train" in first, first
    spent = ledger(guarded, "hospital-a").spent("ehr")
    log = audit_since("hospital-a")

    beyond = call(scientist, study, "hospital-a", {"round": 3, "weights": weights})
    shifted = {k: v + 0.5 for k, v in weights.items()}
    again = call(scientist, study, "hospital-a", {"round": 1, "weights": shifted})

    assert "outside this study's approved rounds" in beyond["error"]
    for key, value in first["train"]["weights"].items():  # the recorded sample, not a new one
        np.testing.assert_array_equal(again["train"]["weights"][key], value)
    assert ledger(guarded, "hospital-a").spent("ehr") == spent
    entries = log()
    assert refused(entries, study=study.id, round=3)
    assert [e for e in entries if e["event"] == "repeat_served" and e["round"] == 1]


# 6 ------------------------------------------------------------------------------------------


def test_06_dp_parameters_cannot_change_after_approval(
    scientist: Federation, operators: dict[str, Operator], guarded: Launch, audit_since: Since
) -> None:
    study = approved_study(scientist, operators, "hospital-a")
    weights = initial_weights(study.config)
    assert "train" in call(scientist, study, "hospital-a", {"round": 1, "weights": weights})
    spent = ledger(guarded, "hospital-a").spent("ehr")
    log = audit_since("hospital-a")

    # (a) through the weights argument
    sneaky = {"round": 1, "weights": weights, "noise_multiplier": 0.0, "epsilon": 100.0}
    through_weights = call(scientist, study, "hospital-a", sneaky)
    # (b) a second request under the same study id with a bigger epsilon and another model
    client = scientist.client("hospital-a")
    bigger = StudyConfig(**{**TINY, "model": "ehr_mlp", "dp": DPConfig(epsilon=1.0)})
    with contextlib.redirect_stdout(io.StringIO()):
        second = _request(client, bigger.plan(study.id, scientist.email("hospital-a")))
    with pytest.raises(OperatorError, match="already ran here with a different plan"):
        operators["hospital-a"].approve(second)
    # an operator who bypasses the checks (syft's own approve) is still covered by the runtime
    with contextlib.redirect_stdout(io.StringIO()):
        operators["hospital-a"].request(second).approve()
    rerun = Study(scientist.pool, study.id, bigger, {"hospital-a": second}, study.folder)
    bigger_weights = {"round": 1, "weights": initial_weights(bigger)}
    bypassed = call(scientist, rerun, "hospital-a", bigger_weights)

    assert "DP parameters come from the approved plan" in through_weights["error"]
    assert not isinstance(bypassed, dict) or "train" not in bypassed, bypassed
    assert ledger(guarded, "hospital-a").spent("ehr") == spent
    entries = log()
    assert refused(entries, refusal="RequestError", study=study.id)
    assert refused(entries, layer="operator", request=second)


# 7 ------------------------------------------------------------------------------------------


def test_07_several_studies_cannot_pass_the_cap(
    scientist: Federation, operators: dict[str, Operator], guarded: Launch, audit_since: Since
) -> None:
    op = operators["hospital-b"]
    big = {"rounds": 1, "dp": DPConfig(epsilon=1.5)}
    first = approved_study(scientist, operators, "hospital-b", **big)
    first.run(progress=False)
    spent = ledger(guarded, "hospital-b").spent("ehr")
    log = audit_since("hospital-b")

    second = scientist.submit(StudyConfig(**{**TINY, **big}), hospitals=["hospital-b"])
    review = op.review(op.request(second.requests["hospital-b"]))
    assert review.projection is not None and review.projection.total_after > GUARDED_CAP
    with pytest.raises(OperatorError, match="above its cap"):
        op.approve(second.requests["hospital-b"])
    with contextlib.redirect_stdout(io.StringIO()):
        op.request(second.requests["hospital-b"]).approve()  # bypass: the runtime holds
    with pytest.raises(StudyError, match="cap"):
        second.run(progress=False)

    assert ledger(guarded, "hospital-b").spent("ehr") == spent <= GUARDED_CAP
    entries = log()
    assert refused(entries, layer="operator", reason="above its cap")
    assert refused(entries, refusal="BudgetExceeded")


# 8 ------------------------------------------------------------------------------------------


def leak_rows(train, test, weights):  # noqa: ANN001, ANN201 - the attacker's code
    return train


def raise_private(train, test, weights):  # noqa: ANN001, ANN201 - the attacker's code
    raise ValueError(f"row {train['encounter_id'].iloc[0]} {train['age'].iloc[0]}")


def request_custom(client: Any, function: Callable[..., Any]) -> str:
    import syft as sy
    from syft.service.policy.policy import OutputPolicyExecuteCount

    assets = client.datasets["ehr"].assets
    policy = sy.MixedInputPolicy(
        train=assets["train"], test=assets["test"], weights=dict, client=client
    )
    with contextlib.redirect_stdout(io.StringIO()):
        code = sy.syft_function(
            input_policy=policy, output_policy=OutputPolicyExecuteCount(limit=1)
        )(function)
        return str(client.code.request_code_execution(code).id)


def test_08_custom_code_is_classified_and_refused(
    scientist: Federation, operators: dict[str, Operator], audit_since: Since
) -> None:
    op = operators["hospital-a"]
    request_id = request_custom(scientist.client("hospital-a"), leak_rows)
    log = audit_since("hospital-a")

    review = op.show(request_id)
    with pytest.raises(OperatorError, match="custom code"):
        op.approve(request_id)
    got = attempt(
        lambda: scientist.client("hospital-a").code.leak_rows(
            train=scientist.client("hospital-a").datasets["ehr"].assets["train"],
            test=scientist.client("hospital-a").datasets["ehr"].assets["test"],
            weights={},
            blocking=True,
        )
    )

    assert review.view.verdict.kind == "custom" and review.view.verdict.reasons
    assert review.problems[0].startswith("custom code")
    assert op.request(request_id).status.name.lower() == "pending"
    assert not isinstance(getattr(got, "get", lambda: None)(), pd.DataFrame)
    assert refused(log(), layer="operator", request=request_id, reason="custom code")


# 9 ------------------------------------------------------------------------------------------


def test_09_private_values_do_not_come_back_in_errors(
    scientist: Federation,
    operators: dict[str, Operator],
    admins: dict[str, Any],
    audit_since: Since,
) -> None:
    op = operators["hospital-a"]
    private = admins["hospital-a"].datasets["ehr"].assets["train"].data
    secret = str(private["encounter_id"].iloc[0])
    client = scientist.client("hospital-a")
    request_id = request_custom(client, raise_private)
    log = audit_since("hospital-a")
    op.approve(request_id, allow_custom_code=True)  # even a careless override

    got = attempt(
        lambda: client.code.raise_private(
            train=client.datasets["ehr"].assets["train"],
            test=client.datasets["ehr"].assets["test"],
            weights={},
            blocking=True,
        )
    )
    # the vetted path: a malformed call is refused by name and shape, never by value
    study = approved_study(scientist, operators, "hospital-a")
    weights = {
        k: np.full(np.shape(v), 7.25e5, np.float32)[..., :1]
        for k, v in initial_weights(study.config).items()
    }
    malformed = call(scientist, study, "hospital-a", {"round": 1, "weights": weights})

    assert secret not in str(got) and secret not in repr(getattr(got, "__dict__", ""))
    assert "725000" not in str(malformed) and "error" in malformed
    approvals = [e for e in log() if e["event"] == "approved" and e["request"] == request_id]
    assert approvals and approvals[0]["override"] is True and approvals[0]["verdict"] == "custom"


# 10 -----------------------------------------------------------------------------------------


def test_10_no_self_registration_and_no_login_across_hospitals(
    guarded: Launch, audit_since: Since
) -> None:
    import syft as sy

    a, b = guarded.hospital("hospital-a"), guarded.hospital("hospital-b")
    log = audit_since("hospital-b")
    host, port = b["url"].rsplit(":", 1)
    with contextlib.redirect_stdout(io.StringIO()):
        guest = sy.login_as_guest(url=host, port=int(port))
    registered = attempt(
        lambda: guest.register(
            name="x",
            email="intruder@example.org",
            password="pw-123456789",
            password_verify="pw-123456789",
        )
    )
    crossed = attempt(lambda: login(b["url"], a["scientist"]["email"], a["scientist"]["password"]))

    assert isinstance(crossed, Exception)
    assert "intruder@example.org" not in str(registered) or isinstance(registered, Exception)
    entries = log()
    assert refused(entries, path="login", user=a["scientist"]["email"])
    assert refused(entries, path="register", user="intruder@example.org")


# 11 -----------------------------------------------------------------------------------------


def tampered_copy(guarded: Launch, tmp_path: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    root = tmp_path / "copy" / "hospital-a"
    root.mkdir(parents=True)
    for name in ("audit.jsonl", "audit.head"):
        shutil.copy(guarded.data_dir / "hospital-a" / name, root / name)
    lines = (root / "audit.jsonl").read_text().splitlines(keepends=True)
    (root / "audit.jsonl").write_text("".join(edit(lines)))
    return root.parent


def edit_entry(lines: list[str]) -> list[str]:
    entry = json.loads(lines[2])
    entry["forged"] = "yes"
    return [*lines[:2], json.dumps(entry) + "\n", *lines[3:]]


@pytest.mark.parametrize(
    ("edit", "bad"),
    [
        (edit_entry, 2),
        (lambda lines: lines[:3] + lines[4:], 3),  # a middle entry deleted
        (lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]], 3),  # two swapped
        (lambda lines: lines[:-1], None),  # the last entry deleted
    ],
)
def test_11_audit_tampering_is_caught(
    guarded: Launch, tmp_path: Path, edit: Callable[[list[str]], list[str]], bad: int | None
) -> None:
    live = subprocess.run(
        [
            sys.executable,
            "-m",
            "datasites",
            "audit",
            "--verify",
            "--hospital",
            "hospital-a",
            "--data-dir",
            str(guarded.data_dir),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert live.returncode == 0 and "intact" in live.stdout, live.stderr
    entries = len((guarded.data_dir / "hospital-a" / "audit.jsonl").read_text().splitlines())
    assert entries >= 6

    copy = tampered_copy(guarded, tmp_path, edit)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "datasites",
            "audit",
            "--verify",
            "--hospital",
            "hospital-a",
            "--data-dir",
            str(copy),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )

    assert out.returncode == 1
    expected = bad if bad is not None else entries - 1
    assert f"at entry {expected}:" in out.stderr, out.stderr


# 12 -----------------------------------------------------------------------------------------


def test_12_datasites_cannot_be_reached_off_loopback(guarded: Launch) -> None:
    for i in range(len(HOSPITALS)):
        port = GUARDED_BASE_PORT + i
        assert listening_addresses(port) == ["127.0.0.1"]
        address = outside_address()
        if address is None:
            pytest.skip("this machine has no non-loopback IPv4 address to try")
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((address, port))
