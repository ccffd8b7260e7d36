"""A hospital's TLS certificate and key: created at `init`, or the operator's own, checked.

A hospital off loopback is served only over TLS, and the scientist trusts exactly the
certificate its invitation pins (no CA), so a self-signed certificate is enough and is what
`init` makes: ECDSA P-256 signed with SHA-256, naming every address and DNS name the
hospital is reached at (and loopback, so its own operator can reach it on the machine),
not a CA, valid 825 days (the longest browsers and most TLS stacks accept for a leaf).

An operator with their own certificate (`--tls-cert/--tls-key`) gets it checked before
anything is served: the key must belong to the certificate and the certificate must be in
date. Both are then copied into the hospital's folder, so the folder alone is the hospital
(backups, restores, `serve` without flags). Both files are owner-only: the folder is kept
0600 throughout (`datasites.site.permissions`), and a wider file would be reported there
as a possible leak.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from datasites.contract.files import atomic_write
from datasites.contract.invitation import certificate_fingerprint, is_loopback
from datasites.site.paths import LOOPBACK, HospitalConfig, check_host

VALIDITY_DAYS = 825
# The operator reaches its own datasite on the machine through these, whatever it serves.
LOOPBACK_NAMES = ("localhost", LOOPBACK, "::1")
MAX_PEM_BYTES = 256 * 1024


class TLSError(ValueError):
    """A certificate or key that cannot be used; one sentence says which and what to do."""


@dataclass(frozen=True)
class TLSPair:
    """A certificate and its private key, both PEM, checked to belong together."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (hex): what an invitation pins."""
        return certificate_fingerprint(self.cert_pem.decode())

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def names(self) -> list[str]:
        """The DNS names and IP addresses in the certificate's subjectAltName."""
        return subject_alt_names(self.certificate)


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """subjectAltName entries for `names` (each checked), loopback included, no repeats."""
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in [*names, *LOOPBACK_NAMES]:
        name = check_host(name)
        if name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def create_pair(
    hospital: str,
    names: Iterable[str],
    *,
    days: int = VALIDITY_DAYS,
    now: dt.datetime | None = None,
) -> TLSPair:
    """A new P-256 key and a self-signed certificate for `names` (addresses or DNS names).

    `now` exists for tests that need a certificate already out of date.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hospital),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hospital datasite"),
        ]
    )
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)  # clock skew
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TLSPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()[: MAX_PEM_BYTES + 1]
    except OSError as error:
        raise TLSError(
            f"the TLS {what} {path} cannot be read ({error.strerror}); give a readable file."
        ) from None
    if len(data) > MAX_PEM_BYTES:
        raise TLSError(
            f"the TLS {what} {path} is larger than {MAX_PEM_BYTES} bytes; give a PEM file."
        )
    return data


def check_pair(
    cert_pem: bytes, key_pem: bytes, *, source: str = "", now: dt.datetime | None = None
) -> TLSPair:
    """The pair, if the key belongs to the certificate and the certificate is in date.

    `source` names where it came from in the error (e.g. the file names).
    """
    where = f" ({source})" if source else ""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TLSError(f"the TLS certificate{where} is not a PEM X.509 certificate.") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSError(
            f"the TLS key{where} is encrypted; give it unencrypted (0600), since the "
            "datasite cannot ask for a passphrase."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError(f"the TLS key{where} is not a PEM private key.") from None
    if _public(key.public_key()) != _public(cert.public_key()):
        raise TLSError(
            f"the TLS key{where} does not belong to the certificate; give the key the "
            "certificate was issued for."
        )
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise TLSError(
            f"the TLS certificate{where} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "renew it (or delete it and run init again for a new self-signed one)."
        )
    if cert.not_valid_before_utc > now:
        raise TLSError(
            f"the TLS certificate{where} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the machine's clock."
        )
    return TLSPair(cert_pem, key_pem)


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_pair(cert_path: Path, key_path: Path, *, now: dt.datetime | None = None) -> TLSPair:
    """Read and check a certificate and key given as files (`check_pair`)."""
    return check_pair(
        _read(cert_path, "certificate"),
        _read(key_path, "key"),
        source=f"{cert_path}, {key_path}",
        now=now,
    )


def write_pair(pair: TLSPair, cert_path: Path, key_path: Path) -> None:
    """Write the key, then the certificate, each owner-only and atomically.

    The certificate is written last: a hospital folder holding a certificate has its key.
    """
    Path(key_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(key_path, lambda handle: handle.write(pair.key_pem), mode=0o600)
    atomic_write(cert_path, lambda handle: handle.write(pair.cert_pem), mode=0o600)


def serving_config(
    name: str,
    data_dir: Path,
    host: str,
    port: int,
    cert_path: Path | None = None,
    key_path: Path | None = None,
) -> tuple[HospitalConfig, TLSPair | None]:
    """How `serve` will serve this hospital, decided before anything is bound or written.

    With `--tls-cert/--tls-key` it serves their (checked) pair; else the certificate in the
    hospital's folder (from `init`, checked); else plain HTTP, which only loopback may use.
    Returns the config and the operator's new pair to install (None when none was given).
    """
    if (cert_path is None) != (key_path is None):
        raise TLSError("give both --tls-cert and --tls-key, or neither.")
    # Checks name, port and host; whether TLS is used is decided below.
    plain = HospitalConfig(name=name, port=port, data_dir=data_dir, host=host, tls=True)
    given = load_pair(cert_path, key_path) if cert_path and key_path else None
    if given is None and plain.tls_cert_path.exists():
        load_pair(plain.tls_cert_path, plain.tls_key_path)
    elif given is None:
        if not is_loopback(plain.host):
            raise TLSError(
                f"{name} cannot be served on {plain.host} without TLS and it has no "
                "certificate; give --tls-cert and --tls-key, or run python -m datasites init "
                "to create one."
            )
        return replace(plain, tls=False), None
    return replace(plain, tls=True), given


def install_pair(config: HospitalConfig, pair: TLSPair) -> None:
    """Copy the operator's certificate and key into the hospital's folder (key 0600), so
    the folder alone is the hospital."""
    write_pair(pair, config.tls_cert_path, config.tls_key_path)
