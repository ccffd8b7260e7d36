"""The hospitals this hospital federates with, and the key each signs its datasite with.

A secure study's plan names its partners and their datasite verify keys. A scientist could
name an invented "hospital" whose key it holds: its masks would be the scientist's own, and
a real hospital's update could then be unmasked. So a hospital takes part only with the
partners its operator registered here (`<hospital>/partners.json`, name -> verify key, hex),
and refuses a plan naming a key that is not the registered one, at `approve` and again in
the runtime on every call. The local federation (`launch.py`) registers its hospitals with
each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from datasites.contract.files import read_bounded_json, write_json
from datasites.contract.plan import HOSPITAL_NAME
from datasites.site.audit import AuditLog, Event

PARTNERS_FILE = "partners.json"
_VERIFY_KEY = re.compile(r"^[0-9a-f]{64}$")


class PartnerError(ValueError):
    """A partner change that cannot be made; one sentence says why."""


def load_partners(root: Path) -> dict[str, str]:
    """The registered partners (name -> verify key hex); empty when none are."""
    path = Path(root) / PARTNERS_FILE
    if not path.exists():
        return {}
    data = read_bounded_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path} must map hospital names to verify keys (hex strings).")
    return data


def write_partners(root: Path, partners: Mapping[str, str]) -> None:
    # Owner-only like everything in the hospital folder (the store check flags the rest).
    write_json(Path(root) / PARTNERS_FILE, dict(sorted(partners.items())), mode=0o600)


def partner_violations(
    named: Mapping[str, str], registered: Mapping[str, str], own_name: str, own_key: str
) -> list[str]:
    """What is wrong with a plan's partners here; one short sentence each."""
    out = []
    if named.get(own_name) != own_key:
        out.append(f"the plan does not name {own_name} with this datasite's own verify key")
    for name, key in sorted(named.items()):
        if name == own_name:
            continue
        if name not in registered:
            out.append(f"{name} is not a registered partner of {own_name} (partners.json)")
        elif registered[name] != key:
            out.append(f"the plan names a key for {name} that is not its registered key")
    return out


def register_partner(root: Path, own_name: str, name: str, key: str) -> bool:
    """Register (or re-key) partner `name`; audited. False if it was already so registered.

    The key is what the partner's operator read from `python -m datasites init` (or
    `partners list` there), handed over out of band like an invitation.
    """
    if not isinstance(name, str) or not HOSPITAL_NAME.match(name):
        raise PartnerError(
            "a partner's name is lowercase letters, digits and dashes, starting with a letter."
        )
    if name == own_name:
        raise PartnerError(f"{own_name} cannot register itself as its own partner.")
    key = key.strip().lower() if isinstance(key, str) else ""
    if not _VERIFY_KEY.match(key):
        raise PartnerError(
            "a verify key is 64 hex digits; copy it from the partner's `datasites init` output."
        )
    partners = load_partners(root)
    if partners.get(name) == key:
        return False
    used_by = [other for other, k in partners.items() if k == key and other != name]
    if used_by:
        raise PartnerError(
            f"that key is already registered for {used_by[0]}; each hospital has its own key."
        )
    previous = partners.get(name)
    write_partners(root, partners | {name: key})
    AuditLog.open(root).append(
        Event.PARTNER_ADDED, partner=name, verify_key=key, replaced=previous is not None
    )
    return True


def remove_partner(root: Path, name: str) -> bool:
    """Forget partner `name`; audited. Its studies are refused from the next call on."""
    partners = load_partners(root)
    if name not in partners:
        return False
    key = partners.pop(name)
    write_partners(root, partners)
    AuditLog.open(root).append(Event.PARTNER_REMOVED, partner=name, verify_key=key)
    return True
