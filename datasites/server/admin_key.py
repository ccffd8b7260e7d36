"""The operator's signing key lives in identity.json only, never in syft's store.

syft keeps every account's signing key in its database so that a password login can hand
the key back, and a signing key alone authenticates API calls as its user. For the
datasite's admin that means one copied database file is the whole hospital. Here the admin
never logs in with a password: the datasite removes the admin's key from its store at every
start (and compacts the file so no freed page still holds it), a password login for the
admin fails like any wrong password, and the operator's tools sign with the key from
identity.json (0600), which never crosses the wire.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasites.client.connection import guest_client
from datasites.contract.invitation import certificate_fingerprint
from datasites.contract.syft_io import quiet

if TYPE_CHECKING:
    import requests
    from syft.server.datasite import Datasite

    from datasites.site.identity import Identity
    from datasites.site.paths import HospitalConfig

log = logging.getLogger("datasites.server.admin_key")


def forget_admin_key(worker: Datasite, database: Path) -> bool:
    """Remove the admin's signing key from syft's user store; True if one was there."""
    stash = worker.services.user.stash
    user = stash.get_by_verify_key(
        credentials=worker.verify_key, verify_key=worker.verify_key
    ).unwrap()
    if user.signing_key is None:
        return False
    user.signing_key = None
    stash.update(credentials=worker.verify_key, obj=user, has_permission=True).unwrap()
    compact(database)
    log.info("the admin's signing key is kept in identity.json only")
    return True


def compact(database: Path) -> None:
    """Rewrite the SQLite file so freed pages holding the old row are gone."""
    connection = sqlite3.connect(database, timeout=30)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("VACUUM")
    finally:
        connection.close()


def admin_client(config: HospitalConfig, identity: Identity) -> Any:
    """A syft client of the hospital's admin, signing with the key from identity.json.

    Over TLS it trusts exactly the certificate in the hospital's own folder (pinned, no
    CA); on loopback it is plain HTTP, with the same timeouts and retries.
    """
    from syft.server.credentials import SyftSigningKey

    with quiet():
        guest = guest_client(config.url, hospital_session(config))
    return type(guest)(
        connection=guest.connection,
        metadata=guest.metadata,
        credentials=SyftSigningKey.from_string(identity.signing_key),
    )


def hospital_session(config: HospitalConfig) -> requests.Session:
    """The session the operator's tools reach their own datasite through."""
    from datasites.contract.pinned_tls import pinned_session

    if not config.tls:
        return pinned_session(None, None)
    pem = config.tls_cert_path.read_text()
    return pinned_session(pem, certificate_fingerprint(pem))
