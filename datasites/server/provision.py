"""Make a running datasite ready for the federation: locked down, with its data uploaded.

Provisioning is idempotent, so a relaunch (or a launch that was interrupted half way)
converges on the same state: settings are re-applied, the scientist account is created only
if missing, and only datasets the datasite does not hold yet are built and uploaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from datasites.contract.tasks import TASKS
from datasites.server.admin_key import admin_client
from datasites.server.assets import DATASET_DESCRIPTIONS, AssetPair, ehr_assets, pathmnist_assets
from datasites.server.sources import read_ehr, read_pathmnist
from datasites.site.identity import Identity, write_private_json
from datasites.site.paths import HospitalConfig

DATASETS = TASKS  # one dataset per task


def lock_down(admin: Any) -> None:
    """Self-registration off: accounts exist only because the operator created them."""
    admin.settings.allow_guest_signup(enable=False)


def ensure_scientist(admin: Any, identity: Identity) -> bool:
    """Create the data scientist's account if it does not exist; True if created."""
    from syft.service.user.user_roles import ServiceRole

    if any(user.email == identity.scientist_email for user in admin.users.get_all()):
        return False
    admin.users.create(
        email=identity.scientist_email,
        name="Federation data scientist",
        password=identity.scientist_password,
        password_verify=identity.scientist_password,
        role=ServiceRole.DATA_SCIENTIST,
    )
    return True


def _builders(config: HospitalConfig, split_key: bytes) -> dict[str, Callable[[], list[AssetPair]]]:
    return {
        "ehr": lambda: ehr_assets(read_ehr(config), config.name, split_key),
        "pathmnist": lambda: pathmnist_assets(read_pathmnist(config), config.name),
    }


def upload(admin: Any, dataset: str, pairs: list[AssetPair]) -> None:
    import syft as sy

    assets = [
        sy.Asset(name=p.name, description=p.description, data=p.private, mock=p.mock) for p in pairs
    ]
    admin.upload_dataset(
        sy.Dataset(name=dataset, description=DATASET_DESCRIPTIONS[dataset], asset_list=assets)
    )


def _counts(pairs: list[AssetPair]) -> dict[str, dict[str, int]]:
    return {
        p.name: {"rows": p.rows, "mock_rows": p.mock_rows, "usable_rows": p.usable_rows}
        for p in pairs
    }


def provision(config: HospitalConfig, identity: Identity) -> dict[str, Any]:
    """Lock the datasite down, create the scientist, upload missing datasets.

    Returns the manifest (row counts per dataset and asset), which is also written to the
    hospital's folder so later starts can report counts without rebuilding assets.
    """
    admin = admin_client(config, identity)
    lock_down(admin)
    ensure_scientist(admin, identity)
    hosted = {d.name for d in admin.datasets.get_all()}
    manifest = read_manifest(config)
    builders = _builders(config, identity.split_key_bytes)
    for dataset in DATASETS:
        if dataset in hosted and dataset in manifest:
            continue
        pairs = builders[dataset]()
        if dataset not in hosted:
            upload(admin, dataset, pairs)
        manifest[dataset] = _counts(pairs)
    write_private_json(config.manifest_path, manifest)
    release_sizes(config, manifest)
    return manifest


def release_sizes(config: HospitalConfig, manifest: dict[str, Any]) -> None:
    """Release each dataset's training size once, as a DP count charged to the ledger, so
    that operators' projections and the runtime use the same public figure from the start."""
    from datasites.site.hospital import Hospital

    ledger = Hospital.open(config.root).ledger
    for dataset in DATASETS:
        ledger.public_size(dataset, int(manifest[dataset]["train"]["usable_rows"]))


def read_manifest(config: HospitalConfig) -> dict[str, Any]:
    if not config.manifest_path.exists():
        return {}
    return json.loads(config.manifest_path.read_text())
