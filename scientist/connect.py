"""Find the hospitals of a federation and the scientist's login at each.

A federation can be named three ways: a local data dir (its `federation.json`, with the
scientist's logins from `credentials.json`), a `federation.json` path, or a list of URLs
with `email=` / `password=`. Each hospital issues its own account, so a password may also
be a mapping from hospital name or URL to password.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasites.contract.files import CREDENTIALS_FILE, FEDERATION_FILE

Password = str | Mapping[str, str] | None


class FederationError(RuntimeError):
    """The federation could not be reached or used; one sentence says why and what to do."""


@dataclass(frozen=True)
class HospitalLogin:
    """Where one hospital is and how the scientist logs in there (name may be unknown)."""

    url: str
    email: str
    password: str
    name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.url})" if self.name else self.url


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FederationError(f"cannot read {what} {path}: {error}.") from None


def _from_files(path: Path) -> tuple[list[dict], dict[str, dict]]:
    federation_path = path / FEDERATION_FILE if path.is_dir() else path
    if not federation_path.exists():
        raise FederationError(
            f"{federation_path} does not exist; start the hospitals with `python launch.py` "
            "or pass the federation's URLs."
        )
    hospitals = _read_json(federation_path, "federation file").get("hospitals", [])
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


def resolve_logins(
    source: str | Path | Sequence[str], *, email: str | None, password: Password
) -> list[HospitalLogin]:
    """Turn what the scientist passed into one login per hospital."""
    if isinstance(source, (str, Path)) and not str(source).startswith("http"):
        hospitals, stored = _from_files(Path(source))
    else:
        urls = [source] if isinstance(source, str) else list(source)
        hospitals, stored = [{"url": u.rstrip("/")} for u in urls], {}
    if not hospitals:
        raise FederationError("the federation lists no hospitals; check its federation.json.")
    logins = []
    for hospital in hospitals:
        url, name = hospital["url"], hospital.get("name")
        mail = email or stored.get(url, {}).get("email")
        secret = _password_for(password, name, url) or stored.get(url, {}).get("password")
        if not mail or not secret:
            raise FederationError(
                f"no login for {name or url}; pass email= and password=, or connect to a "
                "data dir that has credentials.json."
            )
        logins.append(HospitalLogin(url=url, email=mail, password=secret, name=name))
    return logins
