"""How `Federation.connect` reads what the scientist names, before any hospital is called:
invitation files (a list, one, or a folder), a federation file that pins certificates, the
local data dir as before, and the one-sentence refusals of each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from datasites.contract.invitation import Invitation
from datasites.contract.pinned_tls import NetworkPolicy
from scientist.connect import (
    FederationError,
    HospitalLogin,
    hospital_session,
    network_reason,
    resolve_logins,
)
from tests.integration.test_pinned_tls import Cert, make_cert

PASSWORD = "s3cret-pa55word"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("certs"), "hospital")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("other"), "other")


def invitation(folder: Path, hospital: str, pem: str | None, url: str | None = None) -> Path:
    invite = Invitation(
        hospital=hospital,
        url=url or f"https://198.18.0.{ord(hospital[-1]) - 96}:8443",
        email="ada@uni.example.org",
        password=PASSWORD,
        certificate_pem=pem,
    )
    return invite.write(folder / f"{hospital}.invite.json")


def edited(path: Path, **changes: object) -> Path:
    data = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(data))
    return path


def refusal(source: object, **kwargs: object) -> str:
    with pytest.raises(FederationError) as caught:
        resolve_logins(source, email=kwargs.get("email"), password=kwargs.get("password"))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and PASSWORD not in message
    return message


def test_a_list_of_invitations_gives_one_pinned_login_each(tmp_path: Path, cert: Cert) -> None:
    paths = [invitation(tmp_path, h, cert.pem) for h in ("hospital-a", "hospital-b")]
    logins = resolve_logins([str(p) for p in paths], email=None, password=None)
    assert [(x.name, x.url) for x in logins] == [
        ("hospital-a", "https://198.18.0.1:8443"),
        ("hospital-b", "https://198.18.0.2:8443"),
    ]
    assert all(x.pinned and x.certificate_pem == cert.pem for x in logins)
    assert logins[0].fingerprint and len(logins[0].fingerprint) == 64
    assert PASSWORD not in repr(logins[0])


def test_a_folder_of_invitations_or_one_file_is_read_too(tmp_path: Path, cert: Cert) -> None:
    for hospital in ("hospital-b", "hospital-a"):
        invitation(tmp_path, hospital, cert.pem)
    (tmp_path / "notes.txt").write_text("not an invitation")
    from_folder = resolve_logins(tmp_path, email=None, password=None)
    assert [x.name for x in from_folder] == ["hospital-a", "hospital-b"]
    one = resolve_logins(str(tmp_path / "hospital-b.invite.json"), email=None, password=None)
    assert [x.name for x in one] == ["hospital-b"]


def test_a_loopback_invitation_may_be_plain_http(tmp_path: Path) -> None:
    path = invitation(tmp_path, "hospital-a", None, url="http://127.0.0.1:8081")
    [login] = resolve_logins([path], email=None, password=None)
    assert not login.pinned and login.url == "http://127.0.0.1:8081"


def test_an_altered_invitation_is_refused_naming_the_file(
    tmp_path: Path, cert: Cert, other: Cert
) -> None:
    path = edited(invitation(tmp_path, "hospital-a", cert.pem), certificate_pem=other.pem)
    message = refusal([path])
    assert str(path) in message and "fingerprint does not match" in message


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"url": "http://198.18.0.1:8080"}, "plain HTTP to a non-loopback host"),
        ({"url": "http://127.0.0.1:8080"}, "certificate was given for a plain-HTTP url"),
        ({"certificate_pem": None, "fingerprint": None}, "must carry the hospital's certificate"),
        ({"version": 7}, "not version 1"),
        ({"password": "short"}, "password must be 8-256"),
    ],
)
def test_an_invitation_that_would_not_pin_is_refused(
    tmp_path: Path, cert: Cert, changes: dict, words: str
) -> None:
    path = edited(invitation(tmp_path, "hospital-a", cert.pem), **changes)
    message = refusal([path])
    assert message.startswith(f"invitation {path}") and words in message


def test_a_missing_invitation_and_a_duplicate_hospital_are_refused(
    tmp_path: Path, cert: Cert
) -> None:
    assert "cannot be read" in refusal([tmp_path / "hospital-z.invite.json"])
    first = invitation(tmp_path, "hospital-a", cert.pem)
    copy = tmp_path / "copy" / "hospital-a.invite.json"
    copy.parent.mkdir()
    copy.write_text(first.read_text())
    assert "two entries name name hospital-a" in refusal([first, copy])


def test_invitations_and_urls_are_not_mixed(tmp_path: Path, cert: Cert) -> None:
    path = invitation(tmp_path, "hospital-a", cert.pem)
    assert "not both" in refusal([str(path), "http://127.0.0.1:8081"])


def _federation_file(tmp_path: Path, *hospitals: dict) -> Path:
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({"hospitals": list(hospitals)}))
    return path


def test_a_federation_file_may_pin_each_hospital(tmp_path: Path, cert: Cert) -> None:
    path = _federation_file(
        tmp_path,
        {"name": "hospital-a", "url": "https://198.18.0.1:8443", "certificate_pem": cert.pem},
        {"name": "hospital-b", "url": "http://127.0.0.1:8082"},
    )
    logins = resolve_logins(path, email="ada@uni.example.org", password="a" * 12)
    assert logins[0].pinned and logins[0].certificate_pem == cert.pem
    assert not logins[1].pinned
    assert "no login for hospital-b" in refusal(
        path, email="ada@uni.example.org", password={"hospital-a": "a" * 12}
    )


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"url": "https://198.18.0.1:8443"}, "must carry the hospital's certificate"),
        ({"url": "http://198.18.0.1:8080"}, "plain HTTP to a non-loopback host"),
        ({"url": "http://127.0.0.1:8080", "pin": True}, "certificate was given for a plain"),
        ({"url": "https://198.18.0.1:8443", "pin": True, "fingerprint": "0" * 64}, "altered"),
    ],
)
def test_a_federation_file_entry_that_does_not_pin_https_is_refused(
    tmp_path: Path, cert: Cert, entry: dict, words: str
) -> None:
    hospital = {"name": "hospital-a", **{k: v for k, v in entry.items() if k != "pin"}}
    if entry.get("pin"):
        hospital["certificate_pem"] = cert.pem
    message = refusal(_federation_file(tmp_path, hospital), email="a@b.org", password="x" * 10)
    assert message.startswith("hospital-a: ") and words in message


def test_the_local_data_dir_still_gives_plain_loopback_logins(tmp_path: Path) -> None:
    _federation_file(tmp_path, {"name": "hospital-a", "url": "http://127.0.0.1:8081"})
    scientist = {"email": "ds@a.org", "password": "p" * 12}
    (tmp_path / "credentials.json").write_text(
        json.dumps({"hospitals": [{"url": "http://127.0.0.1:8081", "scientist": scientist}]})
    )
    (tmp_path / "stray.invite.json").write_text("{}")  # a folder with federation.json wins
    [login] = resolve_logins(tmp_path, email=None, password=None)
    assert login == HospitalLogin("http://127.0.0.1:8081", "ds@a.org", "p" * 12, "hospital-a")


def test_a_session_refuses_a_certificate_that_does_not_match_its_fingerprint(
    cert: Cert, other: Cert
) -> None:
    login = HospitalLogin(
        "https://198.18.0.1:8443", "a@b.org", PASSWORD, "hospital-a", cert.pem, "0" * 64
    )
    with pytest.raises(FederationError, match="^hospital-a .*fingerprint does not match"):
        hospital_session(login, NetworkPolicy())


def _raised(outer: Exception, inner: Exception) -> Exception:
    """`outer` raised while handling `inner`, as syft wraps the requests error it hit."""
    try:
        try:
            raise inner
        except Exception:
            raise outer  # noqa: B904 (the implicit context is what syft leaves)
    except Exception as error:
        return error
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        (requests.exceptions.ReadTimeout("Read timed out."), "did not answer within 7 s"),
        (requests.exceptions.ConnectTimeout("timed out"), "did not accept a connection in time"),
        (requests.ConnectionError("[Errno 111] Connection refused"), "refused the connection"),
        (requests.ConnectionError("Connection reset by peer"), "reset the connection"),
        (requests.exceptions.SSLError("certificate has expired"), "expired certificate"),
        (requests.exceptions.SSLError("certificate verify failed"), "does not match the pinned"),
        (requests.exceptions.SSLError("[SSL] wrong version number"), "does not speak TLS"),
        (requests.exceptions.ChunkedEncodingError("broken"), "reset the connection"),
    ],
)
def test_network_faults_are_named_in_a_few_words_through_syft_wrapping(
    inner: Exception, reason: str
) -> None:
    wrapped = _raised(AttributeError("'ConnectionError' has no attribute 'public_message'"), inner)
    assert reason in (network_reason(wrapped, NetworkPolicy(read_timeout=7)) or "")


def test_a_refusal_is_not_a_network_fault() -> None:
    assert network_reason(RuntimeError("the request was denied")) is None
