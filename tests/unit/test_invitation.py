"""The invitation a hospital hands a scientist: every field checked, owner-only on disk."""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from datasites.contract.invitation import (
    Invitation,
    InvitationError,
    certificate_fingerprint,
    check_url,
    read_invitation,
)


def certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital-a")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


GOOD = dict(hospital="hospital-a", url="https://198.18.0.11:8443", email="ana@uni.org",
            password="correct horse battery")  # fmt: skip


def test_an_invitation_round_trips_through_an_owner_only_file(tmp_path: Path) -> None:
    pem = certificate()
    invitation = Invitation(**GOOD, certificate_pem=pem)
    assert invitation.fingerprint == certificate_fingerprint(pem)
    path = invitation.write(tmp_path / "hospital-a.invite.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_invitation(path) == invitation


def test_the_fingerprint_is_the_sha256_of_the_der_certificate() -> None:
    import hashlib

    pem = certificate()
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    assert certificate_fingerprint(pem) == hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"url": "http://198.18.0.11:8443"}, "plain HTTP to a non-loopback host"),
        ({"url": "https://198.18.0.11"}, "not of the form"),
        ({"url": "https://user:pw@198.18.0.11:1/"}, "not of the form"),
        ({"url": "https://198.18.0.11:8443/api?x=1"}, "not of the form"),
        ({"url": "https://ho\x1bst:8443"}, "not of the form"),
        ({"hospital": "Hospital A"}, "hospital must be"),
        ({"email": "not-an-email"}, "email is not"),
        ({"password": "short"}, "password must be"),
        ({"password": "tab\tinside-it"}, "password must be"),
        ({"name": "\x1b[2J"}, "name must be"),
    ],
)
def test_a_bad_field_is_refused_in_one_sentence(change: dict, words: str) -> None:
    with pytest.raises(InvitationError, match=words):
        Invitation(**{**GOOD, **change}, certificate_pem=certificate())


def test_https_needs_a_certificate_and_http_refuses_one() -> None:
    with pytest.raises(InvitationError, match="must carry the hospital's certificate"):
        Invitation(**GOOD)
    with pytest.raises(InvitationError, match="plain-HTTP url"):
        Invitation(**{**GOOD, "url": "http://127.0.0.1:8081"}, certificate_pem=certificate())
    assert Invitation(**{**GOOD, "url": "http://127.0.0.1:8081"}).certificate_pem is None


def test_an_altered_fingerprint_or_certificate_is_refused(tmp_path: Path) -> None:
    path = Invitation(**GOOD, certificate_pem=certificate()).write(tmp_path / "a.invite.json")
    data = json.loads(path.read_text())
    data["certificate_pem"] = certificate()  # someone swapped the certificate
    path.write_text(json.dumps(data))
    with pytest.raises(InvitationError, match=f"invitation {path}: the fingerprint does not"):
        read_invitation(path)
    data["certificate_pem"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    path.write_text(json.dumps(data))
    with pytest.raises(InvitationError, match="not a PEM X.509 certificate"):
        read_invitation(path)


@pytest.mark.parametrize(
    "content",
    ['["a list"]', '{"version": 2}', '{"version": 1, "hospital": "hospital-a"}',
     '{"version": 1, "evil": 1}', "not json", "\udcff"],
)  # fmt: skip
def test_a_broken_file_is_one_error_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.invite.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(InvitationError, match=str(path)):
        read_invitation(path)


def test_a_huge_or_missing_file_is_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.invite.json"
    huge.write_text(" " * 70_000)
    with pytest.raises(InvitationError, match="larger than"):
        read_invitation(huge)
    with pytest.raises(InvitationError, match="cannot be read"):
        read_invitation(tmp_path / "missing.invite.json")


def test_loopback_http_is_allowed_and_nothing_else() -> None:
    assert check_url("http://127.0.0.1:8081/") == "http://127.0.0.1:8081"
    assert check_url("http://localhost:8081") == "http://localhost:8081"
    with pytest.raises(InvitationError):
        check_url("http://10.0.0.1:8081")


@pytest.mark.parametrize(
    "body",
    [b"[" * 60_000, b'{"a":' * 20 + b"1" + b"}" * 20, b'{"x": "' + b"[" * 5000 + b'"}'],
)
def test_a_hostile_invitation_is_one_clear_error(tmp_path: Path, body: bytes) -> None:
    """60,000 nested brackets raised RecursionError out of read_invitation (issue 27);
    brackets inside a string are not nesting (the last case fails on its content)."""
    path = tmp_path / "hostile.invite.json"
    path.write_bytes(body)
    with pytest.raises(InvitationError) as raised:
        read_invitation(path)
    message = str(raised.value)
    assert str(path) in message and len(message.splitlines()) == 1
    if body.startswith(b"[") or body.startswith(b'{"a"'):
        assert "nests deeper than" in message
    else:
        assert "nests" not in message
