"""Where a hospital's datasite keeps its state, and how it is reached.

Everything a hospital owns lives under one folder, `<data-dir>/<hospital>/`, so an operator
can back it up, inspect it or delete it as a unit, and nothing lands in /tmp where another
user of the machine could read it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from datasites.contract.files import CREDENTIALS_FILE, FEDERATION_FILE, write_json
from datasites.contract.invitation import is_loopback
from datasites.contract.plan import HOSPITAL_NAME
from datasites.contract.untrusted import shown

__all__ = [
    "CREDENTIALS_FILE",
    "FEDERATION_FILE",
    "LOOPBACK",
    "HospitalConfig",
    "SiteSettings",
    "check_host",
]

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
TLS_DIR = "tls"  # the hospital's TLS certificate and key (key 0600)
TLS_CERT_FILE = "cert.pem"  # in TLS_DIR
TLS_KEY_FILE = "key.pem"  # in TLS_DIR
INVITATIONS_DIR = "invitations"  # invitation files written by `scientists add` (0600)
SITE_FILE = "site.json"  # how the hospital is served: host, port, TLS, DNS names, URL
# Files of the local federation, in `<data-dir>/` (besides FEDERATION_FILE, CREDENTIALS_FILE).
SETTINGS_FILE = "launch.json"  # the settings the federation was launched with
LOCK_FILE = ".launch.lock"  # held by the running launcher

LOOPBACK = "127.0.0.1"
DEFAULT_TLS_PORT = 8443  # where `init` expects a hospital to be served, unless told
# Tells the runtime, inside a datasite process, which hospital folder it serves.
HOSPITAL_ROOT_ENV = "FEDERATION_HOSPITAL_ROOT"
_NAME = HOSPITAL_NAME
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_HOST_CHARS = 253


def check_host(host: object) -> str:
    """`host` if it is an IPv4/IPv6 address or a DNS name (RFC 1123), else one sentence.

    A host ends up in the certificate, in URLs and in invitations a scientist reads, so
    anything else (spaces, control characters, a URL, a port) is refused here, once.
    """
    if isinstance(host, str) and 0 < len(host) <= MAX_HOST_CHARS and "%" not in host:
        try:  # no IPv6 zone ids ("%eth0"): they hold any character, and mean one machine
            return str(ipaddress.ip_address(host))
        except ValueError:
            labels = host.split(".")
            if all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit():
                return host.lower()
    shown_host = shown(repr(host)) if isinstance(host, str) else shown(host)
    raise ValueError(
        f"host {shown_host} is not an IP address or DNS name; give the address or name "
        "the hospital is reached at (like 198.18.0.1 or datasite.hospital.example)."
    )


def _url_host(host: str) -> str:
    """The host as a URL writes it: loopback for an unspecified (all-interfaces) address,
    IPv6 literals in brackets."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.is_unspecified:
        return LOOPBACK
    return f"[{ip}]" if ip.version == 6 else str(ip)


@dataclass(frozen=True)
class HospitalConfig:
    """One hospital datasite: its name, port, state folder, the address it is served on
    and whether it is served over TLS.

    The host defaults to loopback (the local federation, plain HTTP); any other address is
    served only over TLS, so a config naming one without TLS is refused here, before
    anything could bind it.
    """

    name: str
    port: int
    data_dir: Path
    host: str = LOOPBACK
    tls: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"hospital name {shown(repr(self.name))} is not valid; use lowercase letters, "
                "digits and dashes, starting with a letter."
            )
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"port {shown(self.port)} is outside 1-65535; choose a free TCP port.")
        object.__setattr__(self, "host", check_host(self.host))
        if not self.tls and not is_loopback(self.host):
            raise ValueError(
                f"{self.name} would be served on {self.host} over plain HTTP; an address "
                "other than loopback is served only over TLS, so give it a certificate."
            )
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """Where this machine reaches the datasite (loopback for an all-interfaces host)."""
        return f"{self.scheme}://{_url_host(self.host)}:{self.port}"

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

    @property
    def tls_cert_path(self) -> Path:
        """The certificate `serve` presents and invitations pin."""
        return self.root / TLS_DIR / TLS_CERT_FILE

    @property
    def tls_key_path(self) -> Path:
        """The certificate's private key (0600)."""
        return self.root / TLS_DIR / TLS_KEY_FILE

    @property
    def invitations_dir(self) -> Path:
        """Where `scientists add` writes invitations for the operator to hand over."""
        return self.root / INVITATIONS_DIR

    @property
    def site_path(self) -> Path:
        """How the hospital was last set up or served (`SiteSettings`)."""
        return self.root / SITE_FILE


@dataclass(frozen=True)
class SiteSettings:
    """How one hospital is served, kept in `<hospital>/site.json` (no secrets).

    `init` writes it and every `serve` updates it, so the operator's commands find a
    hospital that is not part of a local federation (`Operator.open`), and invitations name
    the URL scientists reach it at: its first DNS name if it has one, else its address.
    """

    host: str
    port: int
    tls: bool
    dns_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", check_host(self.host))
        object.__setattr__(self, "dns_names", tuple(check_host(n) for n in self.dns_names))
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"port {shown(self.port)} is outside 1-65535; choose a free TCP port.")
        if not isinstance(self.tls, bool):
            raise ValueError("tls must be true or false.")

    @property
    def url(self) -> str:
        host = self.dns_names[0] if self.dns_names else _url_host(self.host)
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "dns_names": list(self.dns_names),
            "url": self.url,
        }

    def write(self, config: HospitalConfig) -> Path:
        write_json(config.site_path, self.to_dict(), mode=0o600)
        return config.site_path

    @classmethod
    def read(cls, config: HospitalConfig) -> SiteSettings | None:
        """The hospital's settings; None if it has none. A damaged file is one sentence."""
        return cls.read_root(config.root)

    @classmethod
    def read_root(cls, root: Path) -> SiteSettings | None:
        path = Path(root) / SITE_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(
                host=data["host"],
                port=data["port"],
                tls=data["tls"],
                dns_names=tuple(data.get("dns_names", ())),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} cannot be read ({shown(str(error), 80)}); serve the hospital again "
                "to rewrite it."
            ) from None
