"""Where a hospital's datasite keeps its state, and how it is reached.

Everything a hospital owns lives under one folder, `<data-dir>/<hospital>/`, so an operator
can back it up, inspect it or delete it as a unit, and nothing lands in /tmp where another
user of the machine could read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasites.contract.files import CREDENTIALS_FILE, FEDERATION_FILE
from datasites.contract.plan import HOSPITAL_NAME

__all__ = ["CREDENTIALS_FILE", "FEDERATION_FILE", "HospitalConfig", "LOOPBACK"]

# Every state file of one hospital, under `<data-dir>/<hospital>/`.
IDENTITY_FILE = "identity.json"  # uid, signing keys, logins, split key (mode 0600)
POLICY_FILE = "policy.toml"  # the operator's site policy
LEDGER_FILE = "ledger.sqlite"  # the privacy ledger
AUDIT_FILE = "audit.jsonl"  # the hash-chained audit log
MANIFEST_FILE = "manifest.json"  # what was uploaded
LOG_FILE = "datasite.log"  # the datasite process's own log
SYFT_DIR = "syft"  # syft's database and blob store
SOURCE_DIR = "source"  # identified source data, never given to syft
EHR_SOURCE_FILE = "ehr_identified.csv"  # in SOURCE_DIR
PATHMNIST_SOURCE_FILE = "pathmnist.npz"  # in SOURCE_DIR
KEYS_APPLIED_FILE = "keys_applied.json"  # in SYFT_DIR, next to the database it describes
# Files of the local federation, in `<data-dir>/` (besides FEDERATION_FILE, CREDENTIALS_FILE).
SETTINGS_FILE = "launch.json"  # the settings the federation was launched with
LOCK_FILE = ".launch.lock"  # held by the running launcher

LOOPBACK = "127.0.0.1"
# Tells the runtime, inside a datasite process, which hospital folder it serves.
HOSPITAL_ROOT_ENV = "FEDERATION_HOSPITAL_ROOT"
_NAME = HOSPITAL_NAME


@dataclass(frozen=True)
class HospitalConfig:
    """One hospital datasite: its name, port and state folder.

    The host is fixed to loopback: a datasite of this local federation is never reachable
    from another machine, whatever a caller passes.
    """

    name: str
    port: int
    data_dir: Path

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"hospital name {self.name!r} is not valid; use lowercase letters, digits "
                "and dashes, starting with a letter."
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 1-65535; choose a free TCP port.")
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def root(self) -> Path:
        """The hospital's own folder."""
        return self.data_dir / self.name

    @property
    def syft_dir(self) -> Path:
        """syft's database and blob store (SYFT_TEMP_ROOT points here)."""
        return self.root / SYFT_DIR

    @property
    def source_dir(self) -> Path:
        """The identified source data, which never enters syft."""
        return self.root / SOURCE_DIR

    @property
    def identity_path(self) -> Path:
        """The datasite's uid, signing key and logins (mode 0600)."""
        return self.root / IDENTITY_FILE

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    @property
    def manifest_path(self) -> Path:
        """What was uploaded, so a relaunch knows the datasets are already there."""
        return self.root / MANIFEST_FILE
