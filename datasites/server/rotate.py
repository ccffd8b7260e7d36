"""Rotate a hospital's keys: new signing keys and passwords, the old ones refused.

A copied store or identity file hands out the operator's signing key (which alone
authenticates API calls as ADMIN) and the logins. Rotation happens in two halves:

- `python -m datasites rotate-keys` (`rotate_keys`), run while the datasite is stopped,
  writes a new identity.json in one atomic step: a new server signing key (the operator's
  key, syft's root user), new admin and scientist passwords, and `keys_generation` one
  higher, which marks the rotation as pending.
- The next `serve` applies it (`apply_pending_rotation`) before syft opens the store:
  the root user gets the new key and password, every other account a fresh random key,
  and the scientist account the new password; every stored object that named an old key
  (owner permissions, a request's author) names the new one. syft cannot do this: a Datasite
  built with a key its database does not know fails to start. The generation applied is
  recorded next to the database, so a rotation is applied once, and re-applying after a
  crash is harmless.

Old keys and passwords are refused from that start on; `launch.py` rewrites
credentials.json from identity.json, so it hands out the new logins.

One account's key is rotated on a running datasite too (`rekey_account`): syft
authenticates every call by the key that signs it, so `scientists reset-password` gives the
account a new key as well, and a session opened with the old password ends at its next call.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from datasites.contract.health import is_up
from datasites.site.audit import AuditLog, Event
from datasites.site.identity import Identity, strong_password, write_private_json
from datasites.site.paths import (
    FEDERATION_FILE,
    IDENTITY_FILE,
    LOCK_FILE,
    SYFT_DIR,
    HospitalConfig,
)
from datasites.site.paths import KEYS_APPLIED_FILE as APPLIED_FILE

BCRYPT_ROUNDS = 12  # what syft uses for the passwords it hashes itself


class RotationError(RuntimeError):
    """Keys cannot be rotated now; the message is one sentence for the operator."""


# -- the operator's command ------------------------------------------------------------


def rotate_keys(data_dir: Path, hospital: str, operator: str | None = None) -> Identity:
    """Write a new identity for a stopped hospital and record who rotated it.

    Refused while the datasite answers at its URL or a launcher holds the data dir. If
    anything fails, identity.json is left as it was.
    """
    data_dir = Path(data_dir).resolve()
    path = data_dir / hospital / IDENTITY_FILE
    if not path.exists():
        raise RotationError(f"{path.parent} holds no datasite; check --data-dir and --hospital.")
    url = _hospital_url(data_dir, hospital)
    if is_up(url):
        raise RotationError(
            f"{hospital} is running at {url}; stop it first (Ctrl-C in launch.py), then run "
            "rotate-keys again."
        )
    with _launch_lock(data_dir):
        old = Identity.load_or_create(path, hospital)
        new = rotated(old)
        write_private_json(path, asdict(new))
        try:
            AuditLog.open(path.parent).append(
                Event.KEYS_ROTATED,
                operator=operator or getpass.getuser(),
                generation=new.keys_generation,
                applies="at the datasite's next start",
            )
        except BaseException:
            write_private_json(path, asdict(old))
            raise
    return new


def rotated(identity: Identity) -> Identity:
    """The same datasite (uid, emails) with a new signing key and new passwords."""
    from syft.server.credentials import SyftSigningKey

    return replace(
        identity,
        signing_key=str(SyftSigningKey.generate()),
        admin_password=strong_password(),
        scientist_password=strong_password(),
        keys_generation=identity.keys_generation + 1,
    )


def report(hospital: str, data_dir: Path, identity: Identity) -> list[str]:
    """What was done and what to do next, without any secret."""
    return [
        f"{hospital}: new signing key and new admin and scientist passwords written to "
        f"{Path(data_dir).resolve() / hospital / 'identity.json'} (keys generation "
        f"{identity.keys_generation}).",
        "The datasite applies them at its next start: every account gets a new signing "
        "key and keeps what it owns, and the old keys and passwords are refused.",
        f"Next: start it again (python launch.py --data-dir {data_dir}); the new logins "
        f"are then in {Path(data_dir) / 'credentials.json'}: give the data scientist theirs.",
    ]


def cli(data_dir: Path, hospital: str) -> int:
    """`python -m datasites rotate-keys`: print the outcome, or one sentence on stderr."""
    try:
        identity = rotate_keys(data_dir, hospital)
    except RotationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report(hospital, data_dir, identity)))
    return 0


def _hospital_url(data_dir: Path, hospital: str) -> str:
    path = data_dir / FEDERATION_FILE
    entries: list[dict[str, Any]] = []
    if path.exists():
        entries = json.loads(path.read_text()).get("hospitals", [])
    for entry in entries:
        if entry.get("name") == hospital:
            return str(entry["url"])
    raise RotationError(
        f"{path} does not list {hospital}, so whether it is running cannot be checked; "
        "check --data-dir and --hospital."
    )


@contextlib.contextmanager
def _launch_lock(data_dir: Path) -> Iterator[None]:
    """Hold the launcher's lock, so no launch.py starts the datasite half way through."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RotationError(
                f"a launch.py is serving {data_dir}; stop it first, then run rotate-keys again."
            ) from None
        yield
    finally:
        os.close(fd)


# -- inside the datasite, before syft opens the store ---------------------------------


def apply_pending_rotation(config: HospitalConfig, identity: Identity, database: Path) -> int:
    """Re-key syft's accounts if identity.json is newer than the store; return how many.

    `database` is the SQLite file the Datasite will open. A store that does not exist
    yet needs nothing: syft creates the root user from the new identity.
    """
    if identity.keys_generation <= _applied_generation(config):
        return 0
    accounts = _rekey_users(database, identity) if database.exists() else 0
    write_private_json(
        config.syft_dir / APPLIED_FILE, {"keys_generation": identity.keys_generation}
    )
    AuditLog.open(config.root).append(
        Event.KEYS_APPLIED, generation=identity.keys_generation, accounts=accounts
    )
    return accounts


def _applied_generation(config: HospitalConfig) -> int:
    path = config.syft_dir / APPLIED_FILE
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["keys_generation"])


def _rekey_users(database: Path, identity: Identity) -> int:
    """Give the root user the identity's key and admin password, the scientist the new
    password and every other account a new key, in one transaction."""
    from syft.server.credentials import SyftSigningKey
    from syft.service.user.user_stash import UserStash
    from syft.store.db.sqlite import SQLiteDBConfig, SQLiteDBManager
    from syft.types.uid import UID

    key = SyftSigningKey.from_string(identity.signing_key)
    db = SQLiteDBManager(
        config=SQLiteDBConfig(filename=database.name, path=database.parent),
        server_uid=UID.from_string(identity.server_uid),
        root_verify_key=key.verify_key,
    )
    try:
        stash = UserStash(store=db)
        with db.sessionmaker() as session, session.begin():
            users = stash.get_all(key.verify_key, has_permission=True, session=session).unwrap()
            moved = {}
            for user in _in_rekey_order(users, identity):
                old = str(user.verify_key)
                _set_login(user, identity, key)
                stash.update(key.verify_key, user, has_permission=True, session=session).unwrap()
                moved[old] = str(user.verify_key)
            _move_keys(session, moved)
        return len(users)
    finally:
        db.engine.dispose()


def store_path(root: Path, identity: Identity) -> Path:
    """The SQLite file of the hospital at `root` (`serve.database_path`'s layout)."""
    from syft.types.uid import UID

    uid = str(UID.from_string(identity.server_uid))
    return Path(root) / SYFT_DIR / uid / "db" / f"{uid}_json.db"


def rekey_account(root: Path, email: str) -> bool:
    """Give the account `email` a fresh signing key in the hospital's store, running or not:
    every call signed with its old key finds no account from now (the guard answers such a
    caller as a guest), and what it owns follows the new key. False if no such account."""
    from syft.server.credentials import SyftSigningKey
    from syft.service.user.user_stash import UserStash
    from syft.store.db.sqlite import SQLiteDBConfig, SQLiteDBManager
    from syft.types.uid import UID

    identity = Identity.load_or_create(Path(root) / IDENTITY_FILE, Path(root).name)
    if email == identity.admin_email:
        raise RotationError("the operator's key is rotated with rotate-keys, not per account.")
    database = store_path(root, identity)
    key = SyftSigningKey.from_string(identity.signing_key)
    db = SQLiteDBManager(
        config=SQLiteDBConfig(filename=database.name, path=database.parent),
        server_uid=UID.from_string(identity.server_uid),
        root_verify_key=key.verify_key,
    )
    try:
        stash = UserStash(store=db)
        with db.sessionmaker() as session, session.begin():
            users = stash.get_all(key.verify_key, has_permission=True, session=session).unwrap()
            user = next((u for u in users if str(u.email).lower() == email.lower()), None)
            if user is None:
                return False
            old = str(user.verify_key)
            new = SyftSigningKey.generate()
            user.signing_key, user.verify_key = new, new.verify_key
            stash.update(key.verify_key, user, has_permission=True, session=session).unwrap()
            _move_keys(session, {old: str(new.verify_key)})
        return True
    finally:
        db.engine.dispose()


def _move_keys(session: Any, moved: dict[str, str]) -> None:
    """Replace each old verify key by its account's new one in every stored object.

    syft grants access by verify key as well as by role: every object's `permissions`
    list names its owner's key (the root key owns the private assets), and objects name
    their creator in their fields (a request's scientist, a code's author). Left as they
    were, a stolen old key would still own the assets for a caller syft treats as a guest,
    and the scientist would lose their own requests. A key is 64 hex digits, so replacing
    its text cannot touch anything else nor break the JSON it sits in.
    """
    import sqlalchemy as sa

    tables = session.execute(sa.text("SELECT name FROM sqlite_master WHERE type='table'"))
    for (table,) in tables.all():
        columns = {row[1] for row in session.execute(sa.text(f'PRAGMA table_info("{table}")'))}
        for column in sorted(columns & {"fields", "permissions"}):
            for old, new in moved.items():
                session.execute(
                    sa.text(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", :old, :new) '
                        f'WHERE instr("{column}", :old) > 0'
                    ),
                    {"old": old, "new": new},
                )


def _in_rekey_order(users: list[Any], identity: Identity) -> list[Any]:
    """The root user first (its new key is what the other updates are checked against)."""
    from syft.service.user.user_roles import ServiceRole

    roots = [u for u in users if u.role == ServiceRole.ADMIN and u.email == identity.admin_email]
    if not roots:
        raise RotationError(
            f"the store has no operator account {identity.admin_email}; restore the "
            "identity.json that belongs to this store."
        )
    return [roots[0], *(u for u in users if u is not roots[0])]


def _set_login(user: Any, identity: Identity, root_key: Any) -> None:
    from syft.server.credentials import SyftSigningKey
    from syft.service.user.user import salt_and_hash_password

    is_root = user.email == identity.admin_email
    key = root_key if is_root else SyftSigningKey.generate()
    user.signing_key, user.verify_key = key, key.verify_key
    password = {
        identity.admin_email: identity.admin_password,
        identity.scientist_email: identity.scientist_password,
    }.get(user.email)
    if password is not None:
        user.salt, user.hashed_password = salt_and_hash_password(password, BCRYPT_ROUNDS)
