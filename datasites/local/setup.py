"""Setting up one hospital: what `launch.py` does for each of its hospitals and
`python -m datasites init` does for one hospital on its own machine.

Both call the same steps, so a hospital set up alone is set up exactly as a local one: its
folder made private, the default site policy, its source data (its own files, checked, or
generated), its identity, then a datasite started on loopback to provision it (self-signup
off, the scientist account, its datasets uploaded with their mocks and its sizes released
to the ledger).

`init` adds what a hospital needs to be served off loopback: a TLS certificate (its own,
checked and copied in, or a new self-signed one) and `site.json`. It writes the
certificate last, so a hospital with a certificate is initialised: running `init` again
then refuses, and an `init` interrupted before that point can simply be run again (every
step before it converges on the same state).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasites.contract.syft_io import quiet
from datasites.contract.untrusted import shown
from datasites.local.process import DatasiteProcess
from datasites.local.seeding import load_real_inputs, plan_sources, single_hospital_plan
from datasites.server.provision import provision
from datasites.server.sources import has_sources
from datasites.site.identity import Identity
from datasites.site.paths import (
    DEFAULT_TLS_PORT,
    LOCK_FILE,
    LOOPBACK,
    HospitalConfig,
    SiteSettings,
    check_host,
)
from datasites.site.permissions import StoreError, narrow_permissions
from datasites.site.policy import Policy
from datasites.site.tls import TLSError, TLSPair, create_pair, load_pair, write_pair

SCALES = ("small", "medium", "full")
INIT_LOCK_FILE = ".init.lock"  # in the hospital's folder, held while `init` runs


class SetupError(RuntimeError):
    """Bad input or a failed setup; the message is one sentence for the operator."""


# -- the steps every hospital goes through (launch.py and init) ------------------------


def check_writable(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SetupError(
            f"cannot write to data dir {data_dir} ({error.strerror}); choose another --data-dir."
        ) from None


def narrow_folder(
    config: HospitalConfig, *, warn: bool, log: Callable[[str], None] = print
) -> None:
    """`narrow_permissions`, with a folder that cannot be made private as a SetupError."""
    try:
        narrow_permissions(config, warn=warn, log=log)
    except StoreError as error:
        raise SetupError(f"{config.name}: {error}") from None


def write_policy_defaults(config: HospitalConfig) -> None:
    """The default site policy, unless the operator already has one."""
    Policy.write_default(config.root)


def start_datasite(config: HospitalConfig) -> DatasiteProcess:
    """Create the hospital's identity if it has none, and start its datasite process."""
    Identity.load_or_create(config.identity_path, config.name)
    process = DatasiteProcess(config)
    process.start()
    return process


def ready_and_provision(process: DatasiteProcess) -> dict[str, Any]:
    """Wait for the datasite, then provision it (`datasites.server.provision`); returns
    its manifest (row counts per dataset and asset)."""
    process.wait_ready()
    config = process.config
    identity = Identity.load_or_create(config.identity_path, config.name)
    return provision(config, identity)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# -- init: one hospital on its own -------------------------------------------------------


@dataclass(frozen=True)
class InitSettings:
    """Everything `python -m datasites init` is told; checked before the disk is touched."""

    hospital: str
    data_dir: Path
    ehr_csv: Path | None = None
    pathmnist_npz: Path | None = None
    host: str = LOOPBACK
    port: int = DEFAULT_TLS_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    dns_names: tuple[str, ...] = ()
    scale: str = "small"
    seed: int = 0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise SetupError(
                f"--scale must be one of {', '.join(SCALES)}, found {shown(repr(self.scale))}."
            )
        if not isinstance(self.port, int) or not 1024 <= self.port <= 65535:
            raise SetupError(f"--port {shown(self.port)} is outside 1024-65535; choose another.")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SetupError("give both --tls-cert and --tls-key, or neither.")
        for flag, path in (
            ("--ehr-csv", self.ehr_csv),
            ("--pathmnist-npz", self.pathmnist_npz),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
        ):
            if path is not None and not Path(path).is_file():
                raise SetupError(f"{flag} {path} does not exist; give the path of the file.")
        try:
            object.__setattr__(self, "host", check_host(self.host))
            object.__setattr__(self, "dns_names", tuple(check_host(n) for n in self.dns_names))
            self.config()  # the hospital's name
        except ValueError as error:
            raise SetupError(str(error)) from None
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())

    def config(self) -> HospitalConfig:
        """The hospital as it will be served: on its host and port, over TLS."""
        return HospitalConfig(
            name=self.hospital, port=self.port, data_dir=self.data_dir, host=self.host, tls=True
        )

    def site(self) -> SiteSettings:
        return SiteSettings(host=self.host, port=self.port, tls=True, dns_names=self.dns_names)


@dataclass(frozen=True)
class InitResult:
    """What `init` made, and what the operator hands to partners and scientists."""

    config: HospitalConfig
    site: SiteSettings
    manifest: dict[str, Any]
    verify_key: str
    """The datasite's Ed25519 verify key (hex): partners register it for secure studies."""
    tls: TLSPair
    own_certificate: bool


def is_initialised(config: HospitalConfig) -> bool:
    """`init` writes the certificate last: a hospital folder with one was initialised."""
    return config.tls_cert_path.exists()


@contextlib.contextmanager
def init_lock(config: HospitalConfig) -> Iterator[None]:
    """One `init` per hospital at a time, and none while a launcher serves its data dir."""
    launch_lock = config.data_dir / LOCK_FILE
    if launch_lock.exists():
        fd = os.open(launch_lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SetupError(
                f"launch.py is serving {config.data_dir}; stop it first or choose another "
                "--data-dir."
            ) from None
        finally:
            os.close(fd)
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(config.root / INIT_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SetupError(f"another init of {config.name} is running; wait for it.") from None
    try:
        yield
    finally:
        os.close(fd)


def _tls_pair(settings: InitSettings) -> TLSPair | None:
    """The operator's own certificate and key, checked; None when init makes one."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        return load_pair(settings.tls_cert, settings.tls_key)
    except TLSError as error:
        raise SetupError(str(error)) from None


def init_hospital(settings: InitSettings, log: Callable[[str], None] = print) -> InitResult:
    """Set up one hospital from its own files (or generated data), ready for `serve`.

    Every input is checked before the data dir is touched (a bad CSV or npz raises
    `synthetic.errors.DataFormatError`, anything else `SetupError`, one sentence each).
    """
    real = load_real_inputs(settings.ehr_csv, settings.pathmnist_npz)
    own = _tls_pair(settings)
    config = settings.config()
    check_writable(settings.data_dir)
    if is_initialised(config):
        raise SetupError(
            f"{config.name} in {settings.data_dir} is already initialised; serve it with "
            f"python -m datasites serve --hospital {config.name} --data-dir "
            f"{settings.data_dir} --host {config.host} --port {config.port}, or delete "
            f"{config.root} to start over."
        )
    with init_lock(config):
        log(f"setting up {config.name} in {settings.data_dir} ...")
        narrow_folder(config, warn=True, log=log)
        write_policy_defaults(config)
        if not has_sources(config):
            plan = single_hospital_plan(config.name, settings.scale, settings.seed, settings.alpha)
            plan_sources(plan, [config], [config], real, log)
        narrow_folder(config, warn=False, log=log)  # what was just written, before serving
        manifest = _provision_on_loopback(config, log)
        pair = own or create_pair(config.name, [settings.host, *settings.dns_names])
        _warn_unnamed(pair, settings, log)
        site = settings.site()
        site.write(config)
        write_pair(pair, config.tls_cert_path, config.tls_key_path)  # last: initialised
        narrow_folder(config, warn=False, log=log)
    identity = Identity.load_or_create(config.identity_path, config.name)
    return InitResult(config, site, manifest, identity.verify_key, pair, own is not None)


def _warn_unnamed(pair: TLSPair, settings: InitSettings, log: Callable[[str], None]) -> None:
    """An operator's certificate that does not list where the hospital is reached would be
    refused by every scientist's hostname check: say so now rather than at their login."""
    listed = set(pair.names())
    wanted = [settings.dns_names[0]] if settings.dns_names else [settings.host]
    for name in wanted:
        if name not in listed and name not in ("0.0.0.0", "::"):
            log(
                f"  warning: the certificate does not list {name}; scientists reaching "
                f"https://{name}:{settings.port} will be refused unless it matches a wildcard."
            )


def _provision_on_loopback(config: HospitalConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Start the datasite on a free loopback port (plain HTTP: nothing leaves the machine,
    and the hospital has no certificate yet), provision it, stop it."""
    local = HospitalConfig(name=config.name, port=free_loopback_port(), data_dir=config.data_dir)
    log(f"  provisioning {config.name} on {local.url} ...")
    process = start_datasite(local)
    try:
        with quiet():  # syft's banners and upload bars
            return ready_and_provision(process)
    finally:
        process.stop()
