"""Submitting a study to hospitals, and reopening it later from the scientist's disk.

One code request per hospital, all with the same plan: its assets are bound by syft's
input policy (that hospital's train and test assets), and a `weights` dict is left free so
one approval covers every round. syft's execution-count output policy documents the
expected number of calls (rounds + 1) but is not relied on: syft 0.9.5 does not enforce it,
the hospital's runtime does.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from scientist.checkpoint import load_study, save_study
from scientist.config import StudyConfig
from scientist.study import Study, StudyError
from scientist.study_code import study_function

if TYPE_CHECKING:
    from scientist.pool import HospitalPool


def new_study_id(task: str) -> str:
    return f"{task}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _request(client: Any, plan: dict[str, Any]) -> str:
    import syft as sy
    from syft.service.policy.policy import OutputPolicyExecuteCount

    assets = client.datasets[plan["task"]].assets
    policy = sy.MixedInputPolicy(
        train=assets["train"], test=assets["test"], weights=dict, client=client
    )
    output = OutputPolicyExecuteCount(limit=plan["rounds"] + 1)
    function = sy.syft_function(input_policy=policy, output_policy=output)(study_function(plan))
    request = client.code.request_code_execution(function)
    if not hasattr(request, "id"):
        raise StudyError(str(request))
    return str(request.id)


def partner_keys(pool: HospitalPool, hospitals: list[str]) -> dict[str, str]:
    """Each hospital's datasite verify key, as its server states it: what a secure plan
    names, and what every partner's operator checks against their own registry."""

    def key(hospital: str, client: Any) -> str:
        return str(client.metadata.verify_key)

    return dict(zip(hospitals, pool.map(key, hospitals), strict=True))


def submit_study(pool: HospitalPool, config: StudyConfig, hospitals: list[str]) -> Study:
    """Send the study to the hospitals; remember it locally for status, run and resume."""
    study_id = new_study_id(config.task)
    partners = partner_keys(pool, hospitals) if config.secure else None
    if config.secure:
        config.plan(study_id, "check@example.org", partners)  # one clear error, before any

    def submit(hospital: str, client: Any) -> str | StudyError:
        try:
            return _request(client, config.plan(study_id, pool.email(hospital), partners))
        except Exception as error:
            return StudyError(f"{hospital} did not accept the request: {error}")

    outcomes = pool.map(submit, hospitals)
    failed = [str(o) for o in outcomes if isinstance(o, StudyError)]
    if failed:
        raise StudyError("; ".join(failed) + ".")
    requests = dict(zip(hospitals, outcomes, strict=True))
    folder = pool.workdir / study_id
    save_study(
        folder,
        {
            "study_id": study_id,
            "config": config.to_dict(),
            "requests": requests,
            "partners": partners or {},
            "submitted": datetime.now(UTC).isoformat(),
        },
    )
    return Study(pool, study_id, config, requests, folder, partners)


def reopen_study(pool: HospitalPool, study_id: str) -> Study:
    folder = pool.workdir / study_id
    record = load_study(folder)
    missing = sorted(set(record["requests"]) - set(pool.hospitals))
    if missing:
        raise StudyError(
            f"study {study_id} was submitted to {', '.join(missing)}, which this federation "
            "does not include; connect to the same hospitals."
        )
    config = StudyConfig.from_dict(record["config"])
    return Study(pool, study_id, config, record["requests"], folder, record.get("partners"))
