"""Where a hospital's datasite keeps its state, and how it is reached.

Everything a hospital owns lives under one folder, `<data-dir>/<hospital>/`, so an operator
can back it up, inspect it or delete it as a unit, and nothing lands in /tmp where another
user of the machine could read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Tells the runtime, inside a datasite process, which hospital folder it serves.
HOSPITAL_ROOT_ENV = "FEDERATION_HOSPITAL_ROOT"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


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
        return self.root / "syft"

    @property
    def source_dir(self) -> Path:
        """The identified source data, which never enters syft."""
        return self.root / "source"

    @property
    def identity_path(self) -> Path:
        """The datasite's uid, signing key and logins (mode 0600)."""
        return self.root / "identity.json"

    @property
    def log_path(self) -> Path:
        return self.root / "datasite.log"

    @property
    def manifest_path(self) -> Path:
        """What was uploaded, so a relaunch knows the datasets are already there."""
        return self.root / "manifest.json"
