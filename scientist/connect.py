"""Find the hospitals of a federation and the scientist's login at each, then log in.

A federation can be named four ways:

- invitations: a list of `*.invite.json` paths, one such path, or a folder holding them (and
  no `federation.json`). Each is the file a hospital's IT handed over
  (`python -m datasites scientists add`): hospital name, URL, login and the hospital's TLS
  certificate, which is then the only certificate trusted for that hospital;
- a local data dir (its `federation.json`, with the scientist's logins from
  `credentials.json`) or a `federation.json` path. Besides `name` and `url`, an entry may
  pin the hospital's certificate: `{"name": "hospital-a", "url": "https://host:8443",
  "certificate_pem": "-----BEGIN CERTIFICATE-----..."}` (an optional `fingerprint`, the
  SHA-256 of the certificate, is checked against it). An https entry without one is refused:
  nothing is trusted that was not pinned;
- a list of URLs with `email=` / `password=` (plain HTTP, loopback only, or pinned through
  a federation file for anything else).

Each hospital issues its own account, so a password may also be a mapping from hospital
name or URL to password. Every login goes through one `requests` session per hospital
(`datasites.contract.pinned_tls.pinned_session`): pinned TLS, timeouts, bounded retries.
syft's own HTTP calls are routed through it, so nothing reaches a hospital any other way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from datasites.contract.files import (
    CREDENTIALS_FILE,
    FEDERATION_FILE,
    JsonFileError,
    read_bounded_json,
)
from datasites.contract.health import READY_PATH
from datasites.contract.invitation import (
    INVITATION_SUFFIX,
    Invitation,
    InvitationError,
    check_url,
    read_invitation,
)
from datasites.contract.pinned_tls import NetworkPolicy, pinned_session

Password = str | Mapping[str, str] | None
Source = str | Path | Sequence[str | Path]


class FederationError(RuntimeError):
    """The federation could not be reached or used; one sentence says why and what to do."""


@dataclass(frozen=True)
class HospitalLogin:
    """Where one hospital is, how the scientist logs in there (name may be unknown), and
    the certificate pinned for it (None: plain HTTP on loopback)."""

    url: str
    email: str
    password: str
    name: str | None = None
    certificate_pem: str | None = None
    fingerprint: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.url})" if self.name else self.url

    @property
    def pinned(self) -> bool:
        return self.certificate_pem is not None

    def __repr__(self) -> str:
        """Never the password: a login may end up in a log or a traceback."""
        return f"HospitalLogin({self.label}, {self.email}, pinned={self.pinned})"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = read_bounded_json(path)
    except (OSError, JsonFileError) as error:
        raise FederationError(f"cannot read {what} {path}: {error}.") from None
    if not isinstance(data, dict):
        raise FederationError(f"{what} {path} is not a JSON object.")
    return data


def _from_files(path: Path) -> tuple[list[dict], dict[str, dict]]:
    federation_path = path / FEDERATION_FILE if path.is_dir() else path
    if not federation_path.exists():
        raise FederationError(
            f"{federation_path} does not exist; start the hospitals with `python launch.py`, "
            "or pass the federation's URLs or the invitation files the hospitals sent."
        )
    hospitals = _read_json(federation_path, "federation file").get("hospitals", [])
    if not isinstance(hospitals, list) or not all(isinstance(h, dict) for h in hospitals):
        raise FederationError(f"federation file {federation_path}: hospitals must be a list.")
    credentials_path = federation_path.parent / CREDENTIALS_FILE
    logins: dict[str, dict] = {}
    if credentials_path.exists():
        for entry in _read_json(credentials_path, "credentials file").get("hospitals", []):
            logins[entry["url"]] = entry["scientist"]
    return hospitals, logins


def _password_for(password: Password, name: str | None, url: str) -> str | None:
    if isinstance(password, Mapping):
        return password.get(name or "", password.get(url))
    return password


def invitation_paths(source: Source) -> list[Path] | None:
    """The invitation files `source` names, or None when it names something else."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if str(source).endswith(INVITATION_SUFFIX):
            return [path]
        if path.is_dir() and not (path / FEDERATION_FILE).exists():
            found = sorted(path.glob(f"*{INVITATION_SUFFIX}"))
            return found or None
        return None
    items = list(source)
    if items and all(str(item).endswith(INVITATION_SUFFIX) for item in items):
        return [Path(item) for item in items]
    if any(str(item).endswith(INVITATION_SUFFIX) for item in items):
        raise FederationError(
            "pass either invitation files or URLs, not both; every hospital of one "
            "federation is named the same way."
        )
    return None


def logins_from_invitations(paths: list[Path]) -> list[HospitalLogin]:
    """One pinned login per invitation; a bad file or a hospital named twice is refused."""
    logins: list[HospitalLogin] = []
    for path in paths:
        try:
            invitation = read_invitation(path)
        except InvitationError as error:
            raise FederationError(str(error).rstrip(".") + ".") from None
        logins.append(_from_invitation(invitation))
    _refuse_duplicates(logins)
    return logins


def _from_invitation(invitation: Invitation) -> HospitalLogin:
    return HospitalLogin(
        url=invitation.url,
        email=invitation.email,
        password=invitation.password,
        name=invitation.hospital,
        certificate_pem=invitation.certificate_pem,
        fingerprint=invitation.fingerprint,
    )


def _refuse_duplicates(logins: list[HospitalLogin]) -> None:
    for key in ("name", "url"):
        seen: set[str] = set()
        for login in logins:
            value = getattr(login, key)
            if value is not None and value in seen:
                raise FederationError(
                    f"two entries name {key} {value}; connect to each hospital once."
                )
            if value is not None:
                seen.add(value)


def _pinned_entry(hospital: dict) -> tuple[str, str | None, str | None]:
    """The entry's URL and pinned certificate, checked as an invitation's are."""
    url = hospital.get("url")
    label = hospital.get("name") or url
    try:
        url = check_url(url)
        pem, fingerprint = hospital.get("certificate_pem"), hospital.get("fingerprint")
        if pem is None and fingerprint is None and url.startswith("http://"):
            return url, None, None
        probe = Invitation(
            hospital=hospital.get("name") or "hospital",
            url=url,
            email="check@example.org",
            password="placeholder",
            certificate_pem=pem,
            fingerprint=fingerprint,
        )
    except InvitationError as error:
        raise FederationError(f"{label}: {str(error).rstrip('.')}.") from None
    return url, probe.certificate_pem, probe.fingerprint


def resolve_logins(source: Source, *, email: str | None, password: Password) -> list[HospitalLogin]:
    """Turn what the scientist passed into one login per hospital."""
    invitations = invitation_paths(source)
    if invitations is not None:
        return logins_from_invitations(invitations)
    if isinstance(source, (str, Path)) and not str(source).startswith("http"):
        hospitals, stored = _from_files(Path(source))
    else:
        urls = [source] if isinstance(source, str) else list(source)
        hospitals, stored = [{"url": str(u).rstrip("/")} for u in urls], {}
    if not hospitals:
        raise FederationError("the federation lists no hospitals; check its federation.json.")
    logins = []
    for hospital in hospitals:
        url, pem, fingerprint = _pinned_entry(hospital)
        name = hospital.get("name")
        mail = email or stored.get(url, {}).get("email")
        secret = _password_for(password, name, url) or stored.get(url, {}).get("password")
        if not mail or not secret:
            raise FederationError(
                f"no login for {name or url}; pass email= and password=, or connect to a "
                "data dir that has credentials.json."
            )
        logins.append(HospitalLogin(url, mail, secret, name, pem, fingerprint))
    _refuse_duplicates(logins)
    return logins


# -- logging in ------------------------------------------------------------------------------


def network_reason(error: BaseException, network: NetworkPolicy | None = None) -> str | None:
    """What went wrong on the wire, in a few words, or None if `error` is not a network fault.

    syft wraps (and sometimes replaces) the `requests` exception it hit, so the whole chain
    of causes is searched; the words never include a URL's credentials or a password."""
    import requests

    for cause in _chain(error):
        if isinstance(cause, requests.exceptions.SSLError):
            return _tls_reason(cause)
        if isinstance(cause, requests.exceptions.ConnectTimeout):
            return "did not accept a connection in time"
        if isinstance(cause, requests.exceptions.ReadTimeout):
            seconds = f" within {network.read_timeout:g} s" if network else " in time"
            return f"did not answer{seconds}"
        if isinstance(cause, requests.exceptions.ConnectionError):
            return _connection_reason(cause)
        if isinstance(cause, (requests.exceptions.ChunkedEncodingError, ConnectionResetError)):
            return "reset the connection"
    return None


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _tls_reason(error: BaseException) -> str:
    text = str(error).lower()
    if "refusing plain http" in text:
        return "was reached over plain HTTP, which a pinned hospital never is (downgrade refused)"
    if "expired" in text:
        return "presented an expired certificate"
    if "wrong version number" in text or "record layer failure" in text:
        return "does not speak TLS at its https URL (downgrade refused)"
    if "fingerprint" in text or "certificate verify failed" in text or "hostname" in text:
        return "presented a certificate that does not match the pinned one"
    return "failed the TLS handshake with the pinned certificate"


def _connection_reason(error: BaseException) -> str:
    text = str(error).lower()
    if "refused" in text:
        return "refused the connection"
    if "reset" in text or "aborted" in text or "remote end closed" in text:
        return "reset the connection"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "has a host name that does not resolve"
    if "no route" in text or "unreachable" in text:
        return "is unreachable"
    return "could not be reached"


def hospital_session(login: HospitalLogin, network: NetworkPolicy) -> Any:
    """The `requests` session every call to this hospital goes through."""
    try:
        return pinned_session(login.certificate_pem, login.fingerprint, network)
    except InvitationError as error:
        raise FederationError(f"{login.label}: {str(error).rstrip('.')}.") from None


def probe(session: Any, url: str, timeout: float) -> None:
    """One GET of the public metadata route through `session`; raises what `requests` does."""
    import requests

    response = session.get(url + READY_PATH, timeout=(timeout, timeout))
    if response.status_code != 200:
        raise requests.ConnectionError(f"the datasite answered {response.status_code}")


def prober(login: HospitalLogin, network: NetworkPolicy) -> Callable[[], None]:
    """A quick check that the hospital answers: one attempt (no retries), the connect
    timeout for the whole wait, through a session pinned like the client's."""
    session = hospital_session(login, replace(network, retries=0))
    return partial(probe, session, login.url, network.connect_timeout)


def login_client(login: HospitalLogin, network: NetworkPolicy, timeout: float) -> Any:
    """A syft client logged in at one hospital, every request through its pinned session.

    Refusals are one `FederationError` naming the hospital: unreachable, the wrong (or an
    expired) certificate, plain HTTP where TLS was pinned, or a refused login."""
    session = hospital_session(login, network)
    try:
        probe(session, login.url, timeout)
    except Exception as error:
        raise FederationError(f"{login.label} {_reason(error, network)}") from None
    try:
        client = _syft_login(login, session)
    except Exception as error:
        reason = network_reason(error, network)
        if reason is not None:
            raise FederationError(f"{login.label} {reason}") from None
        raise FederationError(f"{login.label} refused the login for {login.email}") from None
    if login.name is not None and client.name != login.name:
        raise FederationError(
            f"{login.label} answers as {str(client.name)[:60]!r}, not as {login.name}; "
            "check the URL with the hospital."
        )
    return client


def _reason(error: BaseException, network: NetworkPolicy) -> str:
    return network_reason(error, network) or "could not be reached"


def _syft_login(login: HospitalLogin, session: Any) -> Any:
    """What `syft.login(url=..)` does, from a connection whose session is set before its
    first request, so the metadata, the login, the API and every call use it
    (`datasites.client.connection`)."""
    from datasites.client.connection import login_client as syft_login

    return syft_login(login.url, session, login.email, login.password)
