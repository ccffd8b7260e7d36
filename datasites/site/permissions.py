"""Keep a hospital's folder private to the user that runs its datasite.

`<data-dir>/<hospital>/` holds syft's SQLite database and blob store (the private assets
and every account's signing key; a signing key alone authenticates API calls as its
user), the identity file with the server's key and logins, the ledger, the audit log and
the datasite's log. Any of it readable by another user of the machine hands them the
private data or the operator's powers, so every directory must be 0700 and every file
0600, owned by this user.

`secure_hospital_folder` enforces that at every start (the launcher's `prepare` and the
datasite's `serve`) and returns what was wider, because a store that was readable may
already have been copied: the operator is told to rotate the hospital's keys
(`python -m datasites rotate-keys`), and the finding goes into the audit log.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from datasites.site.audit import AuditLog, Event

if TYPE_CHECKING:
    from datasites.site.paths import HospitalConfig

# The process umask of anything that writes a hospital's files: owner-only, 0600/0700.
PRIVATE_UMASK = 0o077

PRIVATE_BITS = 0o700
OTHERS_BITS = 0o077


class StoreError(RuntimeError):
    """The hospital's folder cannot be made private; the message says what to do."""


def secure_hospital_folder(root: Path) -> list[Path]:
    """Make everything under `root` owner-only; return the paths that were wider.

    Directories become 0700 and files 0600 at most (group and other bits are cleared,
    the owner's are kept). Symbolic links are neither followed nor changed. Raises
    `StoreError` for a path owned by another user (who could read or reopen it whatever
    its mode) or one whose mode cannot be changed; paths fixed before it stay fixed.
    A missing `root` has nothing to secure.
    """
    root = Path(root)
    if not root.exists():
        return []
    widened = []
    for path in _walk(root):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        _check_owner(path, info)
        if info.st_mode & OTHERS_BITS:
            _make_private(path, info)
            widened.append(path)
    return widened


def narrow_permissions(
    config: HospitalConfig, *, warn: bool, log: Callable[[str], None] = print
) -> list[Path]:
    """Make the hospital's folder owner-only; return what was wider.

    With `warn`, a hospital that already had keys (an identity) and whose folder was readable
    by others gets `rotate_advice` through `log` and an audit entry: its keys may have been
    copied. Without, what a setup just created is narrowed silently.

    Raises:
        StoreError: the folder cannot be made private (the message says what to do).
    """
    had_keys = config.identity_path.exists()
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    widened = secure_hospital_folder(config.root)
    if warn and widened and had_keys:
        log(rotate_advice(config.name, config.data_dir, widened))
        record_widened(config.root, widened)
    return widened


def record_widened(root: Path, widened: list[Path]) -> None:
    """Leave an audit entry for a store that was readable by others (no-op if none)."""
    if widened:
        AuditLog.open(root).append(
            Event.STORE_PERMISSIONS_FIXED, paths=len(widened), advice="rotate keys"
        )


def rotate_advice(hospital: str, data_dir: Path, widened: list[Path]) -> str:
    """The operator's line for a hospital whose store was readable by other users."""
    return (
        f"warning: {hospital}: {len(widened)} files of its store were readable by other "
        "users of this machine; they are private now, but rotate its keys: python -m "
        f"datasites rotate-keys --hospital {hospital} --data-dir {data_dir}"
    )


def _walk(root: Path) -> list[Path]:
    """`root` and everything below it, without following symbolic links."""
    paths = [root]
    for folder, dirs, files in os.walk(root, onerror=_raise):
        paths.extend(Path(folder, name) for name in (*dirs, *files))
    return paths


def _raise(error: OSError) -> None:
    raise StoreError(
        f"cannot read {error.filename} ({error.strerror}); give the user that runs the "
        "datasite ownership of the whole hospital folder (chown -R) and start again."
    )


def _check_owner(path: Path, info: os.stat_result) -> None:
    if info.st_uid != os.geteuid():
        raise StoreError(
            f"{path} is owned by uid {info.st_uid}, not by the user that runs the datasite "
            f"(uid {os.geteuid()}); chown -R the hospital folder to that user and start again."
        )


def _make_private(path: Path, info: os.stat_result) -> None:
    try:
        os.chmod(path, stat.S_IMODE(info.st_mode) & PRIVATE_BITS)
    except OSError as error:
        raise StoreError(
            f"cannot make {path} private ({error.strerror}); chmod go-rwx it as its owner "
            "and start again."
        ) from None
