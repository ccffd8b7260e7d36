"""The invitation a hospital hands a scientist out of band, and how both sides read it.

`python -m datasites scientists add EMAIL` writes one (owner-only, it holds a password);
`Federation.connect(["hospital-a.invite.json", ...])` reads it. It names the hospital, its
URL, the scientist's login, and the hospital's TLS certificate: the scientist trusts that
certificate and nothing else for that hospital (no CA, no global switch), so a file taken
from the hospital's IT by hand is the whole root of trust.

Every field is checked on read and on write: an invitation may have been edited, truncated
or come from someone else, and a bad one must fail with one sentence, not half-connect.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from datasites.contract.files import JsonFileError, read_bounded_json, write_json
from datasites.contract.plan import HOSPITAL_NAME

INVITATION_SUFFIX = ".invite.json"
INVITATION_VERSION = 1
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
MAX_INVITATION_BYTES = 64 * 1024
MAX_PASSWORD_CHARS = 256


class InvitationError(ValueError):
    """An invitation that cannot be used; one sentence names the file and the field."""


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 of the certificate's DER bytes, lowercase hex (what `openssl x509 -fingerprint
    -sha256` prints, without the colons)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise InvitationError("the certificate is not a PEM X.509 certificate.") from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts plain HTTP may be used for."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """An http(s)://host:port URL with no path, query or credentials; http only to loopback."""
    if not isinstance(url, str) or len(url) > 300:
        raise InvitationError("url must be a string of at most 300 characters.")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if (
        parts.scheme not in ("http", "https")
        or port is None
        or not (_HOST.match(host) or _is_ip(host))
        or parts.username
        or parts.password
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise InvitationError(
            f"url {url!r} is not of the form https://host:port; ask the hospital for its URL."
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise InvitationError(
            f"url {url!r} is plain HTTP to a non-loopback host; a hospital off this machine "
            "is reached only over https."
        )
    return url.rstrip("/")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Invitation:
    """One scientist's way into one hospital."""

    hospital: str
    url: str
    email: str
    password: str
    certificate_pem: str | None = None
    """The hospital's TLS certificate; None only for a plain-HTTP loopback URL."""
    fingerprint: str | None = None
    """`certificate_fingerprint(certificate_pem)`; checked against the PEM on read."""
    name: str = ""
    """The scientist's display name at the hospital."""

    def __post_init__(self) -> None:
        if not isinstance(self.hospital, str) or not HOSPITAL_NAME.match(self.hospital):
            raise InvitationError(
                "hospital must be lowercase letters, digits and dashes, starting with a letter."
            )
        check_url(self.url)
        if not isinstance(self.email, str) or not _EMAIL.match(self.email):
            raise InvitationError("email is not an email address.")
        if (
            not isinstance(self.password, str)
            or not 8 <= len(self.password) <= MAX_PASSWORD_CHARS
            or not self.password.isprintable()
        ):
            raise InvitationError("password must be 8-256 printable characters.")
        if not isinstance(self.name, str) or len(self.name) > 200 or not self.name.isprintable():
            raise InvitationError("name must be at most 200 printable characters.")
        self._check_certificate()

    def _check_certificate(self) -> None:
        https = self.url.startswith("https://")
        if self.certificate_pem is None:
            if https or self.fingerprint is not None:
                raise InvitationError(
                    "an https invitation must carry the hospital's certificate; ask the "
                    "hospital for a new invitation."
                )
            return
        if not isinstance(self.certificate_pem, str) or len(self.certificate_pem) > 32 * 1024:
            raise InvitationError("certificate_pem must be a PEM string of at most 32 KiB.")
        if not https:
            raise InvitationError("a certificate was given for a plain-HTTP url; use https.")
        actual = certificate_fingerprint(self.certificate_pem)
        if self.fingerprint is None:
            object.__setattr__(self, "fingerprint", actual)
        elif not isinstance(self.fingerprint, str) or not _FINGERPRINT.match(self.fingerprint):
            raise InvitationError("fingerprint must be 64 lowercase hex digits (SHA-256).")
        elif self.fingerprint != actual:
            raise InvitationError(
                "the fingerprint does not match the certificate in the invitation; it was "
                "altered, ask the hospital for a new one."
            )

    def to_dict(self) -> dict:
        return {"version": INVITATION_VERSION} | asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Invitation:
        if not isinstance(data, dict):
            raise InvitationError("an invitation is a JSON object.")
        if data.get("version") != INVITATION_VERSION:
            raise InvitationError(f"this invitation is not version {INVITATION_VERSION}.")
        fields = {"hospital", "url", "email", "password", "certificate_pem", "fingerprint", "name"}
        unknown = sorted(set(data) - fields - {"version"})
        if unknown:
            raise InvitationError(f"unknown field {unknown[0][:40]!r}.")
        missing = sorted({"hospital", "url", "email", "password"} - set(data))
        if missing:
            raise InvitationError(f"field {missing[0]!r} is missing.")
        return cls(**{k: v for k, v in data.items() if k != "version"})

    def write(self, path: Path) -> Path:
        """Owner-only (it holds a password), atomically; returns the path."""
        write_json(Path(path), self.to_dict(), mode=0o600)
        return Path(path)


def read_invitation(path: str | Path) -> Invitation:
    """Read and check one invitation file; any fault is one `InvitationError` naming it."""
    path = Path(path)
    try:
        data = read_bounded_json(path, max_bytes=MAX_INVITATION_BYTES)
        return Invitation.from_dict(data)
    except JsonFileError as error:
        raise InvitationError(f"invitation {path} cannot be read: {error}.") from None
    except InvitationError as error:
        raise InvitationError(f"invitation {path}: {error}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        raise InvitationError(f"invitation {path} cannot be read: {error}.") from None
