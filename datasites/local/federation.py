"""Several hospital datasites on one machine: the local federation `launch.py` runs.

The order of work is chosen so bad input never leaves anything behind: every option and
input file is checked before the data dir is touched, ports are checked before any
datasite starts, and `federation.json` / `credentials.json` are written only once every
hospital answers. If one datasite fails, the others are stopped.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasites.client.connection import load_syft
from datasites.contract.files import write_json
from datasites.contract.syft_io import quiet
from datasites.contract.untrusted import shown
from datasites.local.process import DatasiteProcess
from datasites.local.seeding import DataPlan, load_real_inputs, plan_sources
from datasites.local.setup import (
    SCALES,
    SetupError,
    check_writable,
    narrow_folder,
    ready_and_provision,
    start_datasite,
    write_policy_defaults,
)
from datasites.server.sources import has_sources
from datasites.site.identity import Identity, write_private_json
from datasites.site.partners import write_partners
from datasites.site.paths import (
    CREDENTIALS_FILE,
    FEDERATION_FILE,
    IDENTITY_FILE,
    LOCK_FILE,
    LOOPBACK,
    SETTINGS_FILE,
    HospitalConfig,
)
from synthetic.populations import POPULATIONS

__all__ = ["SCALES", "LaunchError", "LaunchSettings", "LocalFederation", "check_writable"]

MAX_HOSPITALS = 26 * 27

# Bad input or a failed start, one sentence for the operator: the launcher and `init` share
# their per-hospital steps (`datasites.local.setup`), and so the error they raise.
LaunchError = SetupError


def hospital_name(index: int) -> str:
    """hospital-a ... hospital-z, then hospital-aa, hospital-ab, ..."""
    letters = string.ascii_lowercase
    if index < 26:
        return f"hospital-{letters[index]}"
    return f"hospital-{letters[index // 26 - 1]}{letters[index % 26]}"


@dataclass(frozen=True)
class LaunchSettings:
    """Everything `launch.py` is told; validated before anything touches the disk."""

    hospitals: int = 5
    base_port: int = 8081
    data_dir: Path = Path(".datasites")
    reset: bool = False
    scale: str = "small"
    ehr_csv: Path | None = None
    pathmnist_npz: Path | None = None
    seed: int = 0
    alpha: float = 0.5
    population: str = "default"
    """The synthetic EHR federation (`synthetic.populations`) the hospitals' tables come from."""

    def __post_init__(self) -> None:
        if self.hospitals < 1:
            raise LaunchError(f"--hospitals must be at least 1, found {self.hospitals}.")
        if self.hospitals > MAX_HOSPITALS:
            raise LaunchError(f"--hospitals must be at most {MAX_HOSPITALS}.")
        if self.scale not in SCALES:
            raise LaunchError(
                f"--scale must be one of {', '.join(SCALES)}, found {shown(repr(self.scale))}."
            )
        if self.population not in POPULATIONS:
            raise LaunchError(
                f"--population must be one of {', '.join(POPULATIONS)}, found "
                f"{shown(repr(self.population))}."
            )
        last = self.base_port + self.hospitals - 1
        if self.base_port < 1024 or last > 65535:
            raise LaunchError(
                f"ports {self.base_port}-{last} are outside 1024-65535; choose another --base-port."
            )
        for flag, path in (("--ehr-csv", self.ehr_csv), ("--pathmnist-npz", self.pathmnist_npz)):
            if path is not None and not Path(path).is_file():
                raise LaunchError(f"{flag} {path} does not exist; give the path of the file.")
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())

    def hospital_configs(self) -> list[HospitalConfig]:
        return [
            HospitalConfig(name=hospital_name(i), port=self.base_port + i, data_dir=self.data_dir)
            for i in range(self.hospitals)
        ]

    def data_options(self) -> dict[str, Any]:
        """The options that shape the data; a relaunch must not silently change them."""
        return {
            "hospitals": self.hospitals,
            "scale": self.scale,
            "seed": self.seed,
            "alpha": self.alpha,
            "ehr_csv": str(self.ehr_csv) if self.ehr_csv else None,
            "pathmnist_npz": str(self.pathmnist_npz) if self.pathmnist_npz else None,
        } | ({"population": self.population} if self.population != "default" else {})


def check_ports_free(configs: list[HospitalConfig]) -> None:
    for config in configs:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: TIME_WAIT leftovers of a stopped datasite do not count,
            # a socket that is listening does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, config.port))
            except OSError:
                raise LaunchError(
                    f"port {config.port} (for {config.name}) is already in use; stop what "
                    "holds it or choose another --base-port."
                ) from None


def check_same_data(settings: LaunchSettings) -> None:
    """Refuse to serve a data dir that was built with different data options."""
    path = settings.data_dir / SETTINGS_FILE
    if not path.exists():
        return
    before = json.loads(path.read_text())
    changed = [k for k, v in settings.data_options().items() if before.get(k) != v]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise LaunchError(
            f"{settings.data_dir} was built with different {flags}; run with the same "
            "options, or add --reset to rebuild it."
        )


def reset_data_dir(data_dir: Path) -> None:
    """Remove what a previous launch made here, and nothing else."""
    for child in data_dir.iterdir():
        ours = (child / IDENTITY_FILE).exists() or child.name in (
            FEDERATION_FILE,
            CREDENTIALS_FILE,
            SETTINGS_FILE,
            "reports",
        )
        if ours and child.is_dir():
            shutil.rmtree(child)
        elif ours:
            child.unlink()


class LocalFederation:
    """Start, provision and stop N hospital datasites on loopback."""

    def __init__(self, settings: LaunchSettings, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.configs = settings.hospital_configs()
        self.processes: list[DatasiteProcess] = []
        self.manifests: dict[str, dict[str, Any]] = {}
        self.log = log
        self._lock: int | None = None

    def prepare(self) -> None:
        """Check every input, then build the hospitals' source data if missing."""
        real = load_real_inputs(self.settings.ehr_csv, self.settings.pathmnist_npz)
        check_writable(self.settings.data_dir)
        self._take_lock()
        check_ports_free(self.configs)
        if self.settings.reset:
            reset_data_dir(self.settings.data_dir)
        check_same_data(self.settings)
        self.narrow_folders(warn=True)
        for config in self.configs:
            write_policy_defaults(config)
        missing = [c for c in self.configs if not has_sources(c)]
        if missing:
            plan = DataPlan(
                self.settings.hospitals,
                self.settings.scale,
                self.settings.seed,
                self.settings.alpha,
                self.settings.population,
            )
            plan_sources(plan, self.configs, missing, real, self.log)
        write_private_json(self.settings.data_dir / SETTINGS_FILE, self.settings.data_options())
        self.narrow_folders(warn=False)

    def narrow_folders(self, *, warn: bool) -> None:
        """Make every hospital folder owner-only (`datasites.local.setup.narrow_folder`)."""
        for config in self.configs:
            narrow_folder(config, warn=warn, log=self.log)

    def _take_lock(self) -> None:
        """One launcher per data dir: two would fight over the same databases."""
        fd = os.open(self.settings.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LaunchError(
                f"another launch.py is already serving {self.settings.data_dir}; stop it "
                "first or choose another --data-dir."
            ) from None
        self._lock = fd

    def start(self) -> None:
        """Start every datasite in parallel and provision them; stop all on any failure."""
        try:
            for config in self.configs:
                self.processes.append(start_datasite(config))
            self.log(f"starting {len(self.configs)} datasites on {LOOPBACK} ...")
            # syft prints banners and upload bars from every thread; silence them once here
            # (swapping stdout inside worker threads would race), and import syft here first.
            load_syft()
            with quiet(), ThreadPoolExecutor(max_workers=len(self.configs)) as pool:
                results = list(pool.map(ready_and_provision, self.processes))
            self.manifests = dict(zip([c.name for c in self.configs], results, strict=True))
            # Once every datasite started with its identity (a bad one fails there, named).
            self.register_partners()
            self.write_federation_files()
        except BaseException:
            self.stop()
            raise

    def register_partners(self) -> None:
        """Register the hospitals of this local federation with each other, each by its
        datasite's verify key (`datasites.site.partners`): they may run secure studies
        together, and with no one else."""
        keys = {
            c.name: Identity.load_or_create(c.identity_path, c.name).verify_key
            for c in self.configs
        }
        for config in self.configs:
            write_partners(config.root, keys)

    def write_federation_files(self) -> None:
        hospitals = [{"name": c.name, "url": c.url} for c in self.configs]
        federation_path = self.settings.data_dir / FEDERATION_FILE
        write_json(federation_path, {"hospitals": hospitals}, mode=0o600)
        write_private_json(self.settings.data_dir / CREDENTIALS_FILE, self.credentials())

    def credentials(self) -> dict[str, Any]:
        entries = []
        for config in self.configs:
            identity = Identity.load_or_create(config.identity_path, config.name)
            entries.append(
                {
                    "name": config.name,
                    "url": config.url,
                    # The operator signs with the key in <hospital>/identity.json: the
                    # admin has no password login (datasites.server.admin_key).
                    "admin": {"email": identity.admin_email},
                    "scientist": {
                        "email": identity.scientist_email,
                        "password": identity.scientist_password,
                    },
                }
            )
        return {"hospitals": entries}

    def failed(self) -> list[DatasiteProcess]:
        return [p for p in self.processes if not p.alive()]

    def stop(self) -> None:
        """Stop every datasite (in parallel: each may take a few seconds)."""
        if self.processes:
            with ThreadPoolExecutor(max_workers=len(self.processes)) as pool:
                list(pool.map(lambda p: p.stop(), self.processes))
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        for config in self.configs:
            manifest = self.manifests.get(config.name, {})
            row: dict[str, Any] = {"hospital": config.name, "url": config.url}
            for dataset, assets in manifest.items():
                for asset, counts in assets.items():
                    row[f"{dataset}/{asset}"] = counts["rows"]
            rows.append(row)
        return rows
