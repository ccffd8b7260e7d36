"""The in-process harness of secure-aggregation tests: three real hospital folders
(policy, identity, ledger, partner registry) whose runtime is called directly, with the
environment switched per call; no syft. Fixtures `secure_trio` and `secure_tables` are in
tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from datasites.contract.encoding import encode_ehr
from datasites.contract.plan import Plan
from datasites.contract.release import LOSS_BOUND, LOSS_STEPS
from datasites.contract.secure_sum import Quantizer
from datasites.contract.stored import loads as stored_loads
from datasites.privacy.ledger import Ledger
from datasites.runtime.execute import current_hospital, execute
from datasites.site.hospital import Hospital
from datasites.site.identity import Identity
from datasites.site.partners import write_partners
from datasites.site.paths import HOSPITAL_ROOT_ENV, IDENTITY_FILE, LEDGER_FILE, POLICY_FILE
from datasites.site.policy import Policy
from scientist.config import DPConfig, StudyConfig

NAMES = ("hospital-a", "hospital-b", "hospital-c")
CONFIG = StudyConfig(
    task="ehr",
    aggregation="plain",
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


def build_trio(tmp_path: Path) -> dict[str, dict]:
    """Three hospital folders registered with each other: {"roots": ..., "keys": ...}.

    Their policy lets a secure study name a majority threshold (2 of 3), so that a round
    survives a lost hospital; the default (3 of 3) holds against more colluders."""
    return build_federation(tmp_path, NAMES, min_threshold=2)


def build_federation(tmp_path: Path, names: tuple[str, ...], min_threshold: int = 0) -> dict:
    """Hospital folders `names`, registered with each other, their policy's
    `min_secure_threshold` set to `min_threshold` (0: the default, over two thirds).

    Each folder is a copy of its hospital's template (`_template`): the same identity and
    released dataset size in every test of a run, so a plan's noise is calibrated once per
    hospital and not again for each fresh folder (calibration is most of a round's time)."""
    roots = {name: tmp_path / name for name in names}
    keys = {}
    for name, root in roots.items():
        shutil.copytree(_template(name), root)
        path = root / POLICY_FILE
        text = path.read_text().replace(
            "min_secure_threshold = 0", f"min_secure_threshold = {min_threshold}"
        )
        path.write_text(text)
        keys[name] = Identity.load_or_create(root / IDENTITY_FILE, name).verify_key
    for root in roots.values():
        write_partners(root, keys)
    return {"roots": roots, "keys": keys}


_TEMPLATES = tempfile.TemporaryDirectory(prefix="secure-harness-")


@cache
def _template(name: str) -> Path:
    """A fresh hospital folder (default policy, identity) that has released the size of its
    EHR table (`table(name)`) through its own ledger, as provisioning does."""
    root = Path(_TEMPLATES.name) / name
    Policy.write_default(root)
    Identity.load_or_create(root / IDENTITY_FILE, name)
    plan = Plan.from_dict(CONFIG.plan("template", "scientist@research.org"))
    _, labels = encode_ehr(table(name), plan.label)
    Hospital.open(root).ledger.public_size(plan.dataset, len(labels))
    return root


@cache
def table(name: str) -> Any:
    """hospital-a's EHR table (seed 20), hospital-b's (seed 21)...: the same in every test."""
    from datasites.server.assets import ehr_training_view
    from synthetic.ehr import generate_ehr

    seed = 20 + ord(name[-1]) - ord("a")
    return ehr_training_view(generate_ehr(900, seed=seed, identifiers=False))


def build_tables(names: tuple[str, ...] = NAMES) -> dict:
    return {name: table(name) for name in names}


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
            os.environ[HOSPITAL_ROOT_ENV] = str(federation["roots"][name])
            replies[name] = execute(plan, train=tables[name], test=tables[name], request=request)
        return replies

    return call_all


def recorded_update(root: Path, study: str, round_: int) -> tuple[dict, int]:
    """A hospital's own recorded training release (its ledger), as the plain protocol sends."""
    result = Ledger(root / LEDGER_FILE).result(study, "train", round_)
    released = stored_loads(result)
    return released["weights"], released["n"]


def phases_until_mask(call_all, names, plan, weights, given: dict | None = None) -> tuple:
    """Round 1's adverts, shares and masks as an honest relay runs them (every hospital holds
    every share): (party ids, adverts, mask replies). `given` (hospital -> weights) gives
    some hospitals other weights than `weights`."""
    ids = plan.party_ids()
    adverts = {
        ids[n]: r["advert"]
        for n, r in call_all({n: {"round": 1, "phase": "advertise"} for n in names}).items()
    }
    shared = call_all({n: {"round": 1, "phase": "share", "adverts": adverts} for n in names})
    requests = {}
    for name in names:
        inbox = {ids[s]: r["shares"][ids[name]] for s, r in shared.items() if s != name}
        mine = (given or {}).get(name, weights)
        requests[name] = {"round": 1, "phase": "mask", "shares": inbox, "weights": mine}
    return ids, adverts, call_all(requests)


def true_vector(federation: dict, plan, layout, weights) -> np.ndarray:
    """hospital-a's round-1 vector in the ring, from its own ledger records."""
    root = federation["roots"]["hospital-a"]
    trained, n = recorded_update(root, plan.study_id, 1)
    ledger = Ledger(root / LEDGER_FILE)
    evaluation = stored_loads(ledger.result(plan.study_id, "eval", 0))
    update = {k: n * (trained[k] - weights[k].astype(np.float64)) for k, _ in layout.weights}
    steps = round(evaluation["loss_sum"] * LOSS_STEPS / LOSS_BOUND)
    quantizer = Quantizer(plan.secure_scale, plan.secure_clip)
    return layout.pack(quantizer, update, n, {"histogram": evaluation["counts"]}, steps)
