"""The scientist trusts exactly the certificate an invitation pinned, and nothing else.

A real datasite of the session federation is put behind a real TLS server on 127.0.0.1
(a TLS-terminating proxy in a thread, with certificates made here by `cryptography`): the
scientist logs in from an invitation file and every call crosses TLS. A different
certificate, an expired one, plain HTTP at a pinned URL, a redirect to plain HTTP, a silent
port or the wrong hospital behind a URL are each refused with one sentence naming the
hospital; `IGNORE_TLS_ERRORS=1` (syft's global switch) changes none of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from datasites.contract.invitation import Invitation
from datasites.contract.pinned_tls import NetworkPolicy
from scientist import Federation, FederationError
from tests.conftest import Launch

PORTS = range(19520, 19560)  # this module's own servers
HOSPITAL = "hospital-a"
FAST = NetworkPolicy(connect_timeout=5, read_timeout=60, retries=1, backoff=0.1)


@dataclass(frozen=True)
class Cert:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""

    pem: str
    cert_file: Path
    key_file: Path


def make_cert(folder: Path, name: str, *, days: tuple[int, int] = (-1, 30)) -> Cert:
    """A self-signed server certificate for 127.0.0.1/localhost, valid from today+days[0]
    to today+days[1] (both in the past makes an expired one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_text(pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Cert(pem, cert_file, key_file)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError(f"no free port in {PORTS}")


def server_context(cert: Cert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


@dataclass
class TLSProxy:
    """TLS on 127.0.0.1:port in front of a plain-HTTP datasite: what a hospital's reverse
    proxy does. Counts the TLS sessions it completed."""

    cert: Cert
    backend: int
    port: int = field(default_factory=free_port)
    handshakes: int = 0

    def __post_init__(self) -> None:
        self._context = server_context(self.cert)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            tls = self._context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused our certificate
            conn.close()
            return
        self.handshakes += 1
        tls.settimeout(None)
        backend = socket.create_connection(("127.0.0.1", self.backend))
        threading.Thread(target=_pump, args=(backend, tls), daemon=True).start()
        _pump(tls, backend)

    def __enter__(self) -> TLSProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class Redirector(http.server.ThreadingHTTPServer):
    """An https server (the pinned certificate) that redirects every request to plain
    HTTP: a downgrade by redirect."""

    def __init__(self, cert: Cert, target: str) -> None:
        target_url = target

        class Handler(http.server.BaseHTTPRequestHandler):
            def _redirect(self) -> None:
                self.send_response(302)
                self.send_header("Location", target_url + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        self.socket = server_context(cert).wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    folder = tmp_path_factory.mktemp("certs")
    return {
        "pinned": make_cert(folder, "pinned"),
        "other": make_cert(folder, "other"),
        "expired": make_cert(folder, "expired", days=(-30, -1)),
    }


@pytest.fixture(scope="module")
def site(federation: Launch) -> dict[str, Any]:
    """hospital-a of the session federation: its plain URL, port and scientist login."""
    entry = federation.hospital(HOSPITAL)
    return {**entry, "port": int(entry["url"].rsplit(":", 1)[1])}


def invite(
    folder: Path, site: dict[str, Any], url: str, pem: str | None, hospital: str = HOSPITAL
) -> Path:
    """The invitation a hospital's IT would hand over, pinning `pem` for `url`."""
    scientist = site["scientist"]
    invitation = Invitation(
        hospital=hospital,
        url=url,
        email=scientist["email"],
        password=scientist["password"],
        certificate_pem=pem,
    )
    return invitation.write(folder / f"{hospital}.invite.json")


@pytest.fixture
def ignore_tls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """syft's global switch, set or not: nothing below may depend on it."""
    value = getattr(request, "param", "0")
    monkeypatch.setenv("IGNORE_TLS_ERRORS", value)
    yield value


def _refusal(paths: list[Path], **kwargs: Any) -> str:
    with pytest.raises(FederationError) as caught:
        Federation.connect(paths, network=FAST, timeout=5, **kwargs)
    message = str(caught.value)
    # One sentence for a person: no traceback text of the HTTP stack, no password.
    for leak in ("urllib3", "HTTPSConnectionPool", "Max retries", "Traceback", "\n"):
        assert leak not in message
    return message


@pytest.mark.parametrize("ignore_tls", ["0", "1"], indirect=True)
def test_the_pinned_certificate_logs_in_and_every_call_crosses_tls(
    site: dict[str, Any],
    certs: dict[str, Cert],
    tmp_path: Path,
    ignore_tls: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: hospital-a behind TLS with the pinned certificate; syft's own module-level
    # `requests.post` (unpinned, no timeout) must never be used
    def unpinned(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a call bypassed the pinned session")

    monkeypatch.setattr(requests, "post", unpinned)
    with TLSProxy(certs["pinned"], site["port"]) as proxy:
        path = invite(tmp_path, site, proxy.url, certs["pinned"].pem)
        # Execute: login, the API, then calls (datasets and a mock are signed API calls)
        fed = Federation.connect([path], network=FAST, workdir=tmp_path / "studies")
        datasets = fed.datasets()
        mock = fed.mock("ehr", hospitals=[HOSPITAL])[HOSPITAL]
        # Assert
        assert fed.hospitals == [HOSPITAL]
        assert fed.email(HOSPITAL) == site["scientist"]["email"]
        assert {"ehr", "pathmnist"} <= set(datasets["dataset"])
        assert len(mock) > 0
        assert proxy.handshakes >= 1
        url = fed.client(HOSPITAL).connection.url
        assert (url.protocol, url.port) == ("https", proxy.port)


@pytest.mark.parametrize("ignore_tls", ["0", "1"], indirect=True)
def test_a_certificate_other_than_the_pinned_one_is_refused(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path, ignore_tls: str
) -> None:
    # Prepare: the hospital's URL answers with another certificate (a machine in between)
    with TLSProxy(certs["other"], site["port"]) as proxy:
        path = invite(tmp_path, site, proxy.url, certs["pinned"].pem)
        # Execute
        message = _refusal([path])
        # Assert
        assert f"{HOSPITAL} ({proxy.url}) presented a certificate that does not match" in message
        assert proxy.handshakes == 0


@pytest.mark.parametrize("ignore_tls", ["0", "1"], indirect=True)
def test_an_expired_certificate_is_refused_even_when_pinned(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path, ignore_tls: str
) -> None:
    with TLSProxy(certs["expired"], site["port"]) as proxy:
        path = invite(tmp_path, site, proxy.url, certs["expired"].pem)
        message = _refusal([path])
        assert f"{HOSPITAL} ({proxy.url}) presented an expired certificate" in message
        assert proxy.handshakes == 0


def test_plain_http_where_tls_was_pinned_is_refused(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path
) -> None:
    # Prepare: the invitation says https, the port speaks plain HTTP (TLS stripped)
    url = f"https://127.0.0.1:{site['port']}"
    path = invite(tmp_path, site, url, certs["pinned"].pem)
    # Execute / Assert
    message = _refusal([path])
    assert f"{HOSPITAL} ({url}) does not speak TLS at its https URL (downgrade refused)" in message


def test_a_redirect_to_plain_http_is_refused(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path
) -> None:
    # Prepare: a server with the pinned certificate sends the client on to plain HTTP
    redirector = Redirector(certs["pinned"], site["url"])
    try:
        path = invite(tmp_path, site, redirector.url, certs["pinned"].pem)
        # Execute / Assert
        message = _refusal([path])
        assert f"{HOSPITAL} ({redirector.url}) was reached over plain HTTP" in message
        assert "downgrade refused" in message
    finally:
        redirector.shutdown()
        redirector.server_close()


def test_an_unreachable_hospital_is_named_and_the_others_are_not(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path
) -> None:
    # Prepare: hospital-a reachable over TLS, hospital-b's port closed
    with TLSProxy(certs["pinned"], site["port"]) as proxy:
        closed = free_port()
        good = invite(tmp_path, site, proxy.url, certs["pinned"].pem)
        silent = invite(
            tmp_path, site, f"https://127.0.0.1:{closed}", certs["other"].pem, "hospital-b"
        )
        # Execute
        message = _refusal([good, silent])
    # Assert
    assert message.startswith("could not connect to 1 of 2 hospitals: ")
    assert f"hospital-b (https://127.0.0.1:{closed}) refused the connection" in message
    assert "hospital-a" not in message


def test_another_hospital_behind_the_invitation_url_is_refused(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path
) -> None:
    # Prepare: an invitation for hospital-b whose URL leads to hospital-a's datasite
    with TLSProxy(certs["pinned"], site["port"]) as proxy:
        path = invite(tmp_path, site, proxy.url, certs["pinned"].pem, hospital="hospital-b")
        # Execute / Assert
        message = _refusal([path])
    assert f"hospital-b ({proxy.url}) answers as 'hospital-a', not as hospital-b" in message


def test_a_refused_login_names_the_hospital_not_the_password(
    site: dict[str, Any], certs: dict[str, Cert], tmp_path: Path
) -> None:
    with TLSProxy(certs["pinned"], site["port"]) as proxy:
        wrong = {**site, "scientist": {**site["scientist"], "password": "not-the-password-1"}}
        path = invite(tmp_path, wrong, proxy.url, certs["pinned"].pem)
        message = _refusal([path])
    assert f"{HOSPITAL} ({proxy.url}) refused the login for {site['scientist']['email']}" in message
    assert "not-the-password-1" not in message
