"""A hospital's TLS files (`datasites.site.tls`) and where it is served (`datasites.site.paths`):
real keys and certificates from `cryptography`, real files; no datasite, no network."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from datasites.contract.invitation import certificate_fingerprint
from datasites.site.paths import HospitalConfig, SiteSettings, check_host
from datasites.site.tls import (
    VALIDITY_DAYS,
    TLSError,
    check_pair,
    create_pair,
    load_pair,
    serving_config,
    write_pair,
)

HOSTILE_HOSTS = [
    "",
    "bad host",
    "evil\x1b[31m.example",
    "a\nb.example",
    "host.example:8443",
    "https://host.example",
    "host.example/path",
    "fe80::1%eth0",
    "-leading.example",
    "trailing-.example",
    "1.2.3",
    "999.1.1.1",
    "x" * 300,
    "under_score.example",
]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_new_certificate_names_the_hospital_and_is_a_p256_leaf() -> None:
    pair = create_pair("hospital-a", ["198.18.0.1", "datasite.hospital-a.example"])
    cert = pair.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "datasite.hospital-a.example",
        "localhost",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("198.18.0.1"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=VALIDITY_DAYS)
    assert cert.issuer == cert.subject  # self-signed
    cert.verify_directly_issued_by(cert)
    assert pair.fingerprint == certificate_fingerprint(pair.cert_pem.decode())
    # a random serial: two certificates never share one
    assert create_pair("hospital-a", []).certificate.serial_number != cert.serial_number
    assert check_pair(pair.cert_pem, pair.key_pem) == pair


def test_files_are_owner_only_and_read_back(tmp_path: Path) -> None:
    pair = create_pair("hospital-a", ["127.0.0.1"])
    cert_path, key_path = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    write_pair(pair, cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["cert.pem", "key.pem"]
    assert load_pair(cert_path, key_path) == pair


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    one, other = create_pair("hospital-a", []), create_pair("hospital-a", [])
    cert = write(tmp_path, "cert.pem", one.cert_pem)
    key = write(tmp_path, "key.pem", other.key_pem)
    with pytest.raises(TLSError, match="does not belong to the certificate") as error:
        load_pair(cert, key)
    assert str(cert) in str(error.value)
    assert "PRIVATE KEY" not in str(error.value)  # never the key itself


def test_an_expired_or_future_certificate_is_refused(tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = create_pair("hospital-a", [], days=1, now=past)
    with pytest.raises(TLSError, match="expired on"):
        check_pair(expired.cert_pem, expired.key_pem)
    future = create_pair("hospital-a", [], now=dt.datetime.now(dt.UTC) + dt.timedelta(days=3))
    with pytest.raises(TLSError, match="not valid before"):
        check_pair(future.cert_pem, future.key_pem)


def test_unusable_files_get_one_sentence(tmp_path: Path) -> None:
    pair = create_pair("hospital-a", [])
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase"),
    )
    with pytest.raises(TLSError, match="is encrypted"):
        check_pair(pair.cert_pem, encrypted)
    with pytest.raises(TLSError, match="not a PEM X.509 certificate"):
        check_pair(b"not a certificate", pair.key_pem)
    with pytest.raises(TLSError, match="not a PEM private key"):
        check_pair(pair.cert_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
    with pytest.raises(TLSError, match="cannot be read"):
        load_pair(tmp_path / "missing.pem", tmp_path / "missing.key")


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_hosts_are_refused_in_one_sentence(host: str) -> None:
    with pytest.raises(ValueError) as error:
        check_host(host)
    message = str(error.value)
    assert message.startswith("host ") and message.endswith(".") and "\n" not in message
    assert message.isprintable()  # control characters are shown escaped, never raw
    with pytest.raises(ValueError):
        HospitalConfig("hospital-a", 8443, "/tmp", host=host, tls=True)
    with pytest.raises(ValueError):
        create_pair("hospital-a", [host])


def test_hosts_that_are_accepted() -> None:
    assert check_host("198.18.0.1") == "198.18.0.1"
    assert check_host("0:0:0:0:0:0:0:1") == "::1"
    assert check_host("Datasite.Hospital-A.example") == "datasite.hospital-a.example"
    assert check_host("localhost") == "localhost"
    assert check_host("a" * 63 + ".example") == "a" * 63 + ".example"


def test_a_config_off_loopback_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="served only over TLS"):
        HospitalConfig("hospital-a", 8443, tmp_path, host="198.18.0.1")
    with pytest.raises(ValueError, match="served only over TLS"):
        HospitalConfig("hospital-a", 8443, tmp_path, host="0.0.0.0")
    legacy = HospitalConfig("hospital-a", 8081, tmp_path)  # the local federation, unchanged
    assert (legacy.host, legacy.tls, legacy.url) == ("127.0.0.1", False, "http://127.0.0.1:8081")
    assert HospitalConfig("hospital-a", 8443, tmp_path, "198.18.0.1", True).url == (
        "https://198.18.0.1:8443"
    )
    assert HospitalConfig("hospital-a", 8443, tmp_path, "::", True).url == "https://127.0.0.1:8443"
    assert HospitalConfig("hospital-a", 8443, tmp_path, "2001:db8::1", True).url == (
        "https://[2001:db8::1]:8443"
    )


def test_serve_refuses_an_outside_address_without_a_certificate(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="without TLS and it has no certificate"):
        serving_config("hospital-a", tmp_path, "198.18.0.1", 8443)
    assert not (tmp_path / "hospital-a").exists()  # refused before anything is written
    config, given = serving_config("hospital-a", tmp_path, "127.0.0.1", 8081)
    assert (config.tls, given) == (False, None)  # loopback may stay plain
    with pytest.raises(TLSError, match="both --tls-cert and --tls-key"):
        serving_config("hospital-a", tmp_path, "127.0.0.1", 8081, tmp_path / "cert.pem")


def test_serve_uses_the_folders_certificate_or_the_operators(tmp_path: Path) -> None:
    folder = HospitalConfig("hospital-a", 8443, tmp_path, tls=True)
    write_pair(create_pair("hospital-a", []), folder.tls_cert_path, folder.tls_key_path)
    config, given = serving_config("hospital-a", tmp_path, "127.0.0.1", 8443)
    assert config.tls and given is None and config.url == "https://127.0.0.1:8443"
    config, _ = serving_config("hospital-a", tmp_path, "198.18.0.1", 8443)
    assert config.tls

    own = create_pair("hospital-a", ["198.18.0.1"])
    cert = write(tmp_path, "own.pem", own.cert_pem)
    key = write(tmp_path, "own.key", own.key_pem)
    config, given = serving_config("hospital-a", tmp_path, "198.18.0.1", 8443, cert, key)
    assert config.tls and given == own
    wrong_key = write(tmp_path, "wrong.key", create_pair("hospital-a", []).key_pem)
    with pytest.raises(TLSError, match="does not belong"):
        serving_config("hospital-a", tmp_path, "198.18.0.1", 8443, cert, wrong_key)

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    write_pair(
        create_pair("hospital-a", [], days=1, now=past), folder.tls_cert_path, folder.tls_key_path
    )
    with pytest.raises(TLSError, match="expired"):
        serving_config("hospital-a", tmp_path, "127.0.0.1", 8443)


def test_site_settings_round_trip_and_name_the_url(tmp_path: Path) -> None:
    config = HospitalConfig("hospital-a", 8443, tmp_path, "198.18.0.1", True)
    config.root.mkdir()
    assert SiteSettings.read(config) is None
    site = SiteSettings("198.18.0.1", 8443, True, ("Datasite.Hospital-A.example",))
    site.write(config)
    assert stat.S_IMODE(config.site_path.stat().st_mode) == 0o600
    assert SiteSettings.read(config) == site
    assert site.url == "https://datasite.hospital-a.example:8443"
    assert SiteSettings("198.18.0.1", 8443, True).url == "https://198.18.0.1:8443"
    config.site_path.write_text('{"host": "evil\\u001b[31m", "port": 1, "tls": true}')
    with pytest.raises(ValueError, match="cannot be read") as error:
        SiteSettings.read(config)
    assert "\x1b" not in str(error.value)
    with pytest.raises(ValueError):
        SiteSettings("198.18.0.1", 8443, True, ("bad name",))
