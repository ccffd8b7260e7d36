"""The hospital's store is private, and its keys can be rotated.

An attacker running as another user of the machine copied `<hospital>/syft/` (0755, files
0644), decoded private data and used the operator's signing key to act as ADMIN. These
tests run a launch of their own in a data dir that other users can traverse, so only the
hospital folder's own modes keep them out, and check: every path is owner-only while the
datasite works, `nobody` is refused, an old world-readable store is fixed (with a warning
and an audit entry) at the next start, and `rotate-keys` makes a stolen key and the old
passwords useless while the new logins work.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from datasites.governance.operator import Operator
from datasites.local.process import DatasiteProcess
from datasites.server.rotate import RotationError, rotate_keys, rotated
from datasites.site.audit import AuditLog
from datasites.site.identity import Identity
from datasites.site.paths import HospitalConfig
from datasites.site.permissions import StoreError, secure_hospital_folder
from scientist import Federation, StudyConfig
from tests.conftest import REPO, Launch, login, one_round_ehr, start_launch
from tests.security.forge import quiet as attempt

# Overridable, as the session's FEDERATION_TEST_BASE_PORT, for two runs on one machine.
BASE_PORT = int(os.environ.get("STORE_TEST_PORT", "18581"))
HOSPITAL = "hospital-a"
URL = f"http://127.0.0.1:{BASE_PORT}"
LAUNCH_ARGS = ("--hospitals", "1", "--base-port", str(BASE_PORT), "--seed", "13")
STUDY = one_round_ehr(epsilon=0.5)


@dataclass
class Site:
    """The module's own launch, restarted by tests that need the datasite stopped.

    Started with SIGINT ignored, as `nohup ... &` from a script starts it: each restart
    also checks that SIGINT still stops such a launch, with exit code 0 (the check of
    tests/integration/test_lifecycle.py's former one-hospital launch)."""

    data_dir: Path
    launch: Launch

    @property
    def root(self) -> Path:
        return self.data_dir / HOSPITAL

    def restart(self, while_stopped: Callable[[], Any] = lambda: None) -> Any:
        """Stop the launch, run `while_stopped`, start again; return what it returned."""
        assert self.launch.stop(signal.SIGINT, timeout=60) == 0, self.launch.output
        result = while_stopped()
        self.launch = start_launch(*LAUNCH_ARGS, data_dir=self.data_dir, ignore_sigint=True)
        return result


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    # Under /tmp and 0755 (pytest's own tmp dirs are 0700, which would hide whether the
    # hospital folder keeps others out by itself).
    parent = Path(tempfile.mkdtemp(dir="/tmp", prefix="store-test-"))
    parent.chmod(0o755)
    data_dir = parent / "datasites"
    running: Site | None = None
    try:
        running = Site(data_dir, start_launch(*LAUNCH_ARGS, data_dir=data_dir, ignore_sigint=True))
        yield running
    finally:
        if running is not None:
            running.launch.stop()
        shutil.rmtree(parent, ignore_errors=True)


def tree(root: Path) -> list[Path]:
    return [root, *(p for p in root.rglob("*") if not p.is_symlink())]


def wide(paths: list[Path]) -> list[str]:
    """The paths that group or others may read, write or enter, with their modes."""
    return [
        f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p}" for p in paths if p.lstat().st_mode & 0o077
    ]


def database(root: Path) -> Path:
    (found,) = root.glob("syft/*/db/*_json.db")
    return found


def rotate_cli(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "datasites",
            "rotate-keys",
            "--hospital",
            HOSPITAL,
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *command], capture_output=True, text=True, timeout=30
    )


def signed_call(signing_key: str, path: str, **kwargs: Any) -> Any:
    """One call signed with `signing_key`, as a thief holding the key would make it (no
    login, no API map: the datasite serves a scientist's map only after its login); the
    reply's data, or the exception raised."""
    import syft as sy
    from syft.client.api import SyftAPICall
    from syft.server.credentials import SyftSigningKey

    host, port = URL.rsplit(":", 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            guest = sy.login_as_guest(url=host, port=int(port))
            call = SyftAPICall(server_uid=guest.id, path=path, args=[], kwargs=kwargs)
            signed = call.sign(SyftSigningKey.from_string(signing_key))
            data = guest.connection.make_call(signed).message.data
    except Exception as error:
        return error
    from syft.service.response import SyftSuccess

    return data.value if isinstance(data, SyftSuccess) else data


def emails(users: Any) -> list[str]:
    return [u.email for u in users] if isinstance(users, list) else []


def audit_events(root: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in AuditLog.open(root).entries() if e["event"] == event]


# -- the private store, live ----------------------------------------------------------------


def test_every_path_of_the_hospital_folder_is_owner_only_while_it_works(
    site: Site, tmp_path: Path
) -> None:
    fed = Federation.connect(site.data_dir, workdir=tmp_path / "studies")
    study = fed.submit(StudyConfig(**STUDY), hospitals=[HOSPITAL])
    Operator.open(site.data_dir, HOSPITAL, name="test").approve(study.requests[HOSPITAL])

    study.run(progress=False)  # the datasite writes its database, blobs, ledger and audit

    root = site.root
    required = [
        root,
        root / "syft",
        database(root),
        root / "datasite.log",
        root / "identity.json",
        root / "ledger.sqlite",
        root / "audit.jsonl",
        root / "audit.head",
        root / "source",
        root / "policy.toml",
    ]
    blobs = list(root.glob("syft/*/blob/*"))
    assert blobs, "the datasite holds no blobs"
    assert all(p.exists() for p in required), [p for p in required if not p.exists()]
    assert wide(tree(root)) == []
    assert {p.lstat().st_uid for p in tree(root)} == {os.geteuid()}


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"),
    reason="needs root and runuser to act as the user nobody",
)
def test_the_user_nobody_cannot_read_the_store(site: Site) -> None:
    db, syft_dir = database(site.root), site.root / "syft"
    # Others can walk up to the hospital folder: any refusal is the folder's own doing.
    listing = as_nobody("ls", str(site.data_dir))

    read = as_nobody("cat", str(db))
    listed = as_nobody("ls", str(syft_dir))
    identity = as_nobody("cat", str(site.root / "identity.json"))

    assert listing.returncode == 0 and HOSPITAL in listing.stdout, listing.stderr
    for result in (read, listed, identity):
        assert result.returncode != 0 and "Permission denied" in result.stderr, result
        assert result.stdout == ""


# -- an old store that was readable by others -------------------------------------------------


def test_a_world_readable_store_is_fixed_at_the_next_start_with_a_warning(site: Site) -> None:
    root, audited = site.root, len(audit_events(site.root, "store_permissions_fixed"))

    def widen() -> int:
        subprocess.run(["chmod", "-R", "go+rX", str(root)], check=True)
        assert stat.S_IMODE(database(root).stat().st_mode) & 0o044 == 0o044
        return len(tree(root))

    widened = site.restart(widen)

    warning = (
        f"warning: {HOSPITAL}: {widened} files of its store were readable by other users of "
        "this machine; they are private now, but rotate its keys: python -m datasites "
        f"rotate-keys --hospital {HOSPITAL} --data-dir {site.data_dir}"
    )
    assert warning in site.launch.output
    assert wide(tree(root)) == []
    entries = audit_events(root, "store_permissions_fixed")[audited:]
    assert [(e["paths"], e["advice"]) for e in entries] == [(widened, "rotate keys")]


def test_the_datasite_itself_fixes_a_world_readable_store_when_started_alone(site: Site) -> None:
    root, audited = site.root, len(audit_events(site.root, "store_permissions_fixed"))
    config = HospitalConfig(name=HOSPITAL, port=BASE_PORT, data_dir=site.data_dir)

    def serve_alone() -> tuple[int, list[str], str]:
        subprocess.run(["chmod", "-R", "go+rX", str(root)], check=True)
        # Starting the process narrows datasite.log itself; `serve` finds the rest.
        widened = len([p for p in tree(root) if p.name != "datasite.log"])
        process = DatasiteProcess(config)  # no launcher: only `serve` checks the folder
        try:
            process.start()
            process.wait_ready()
            return widened, wide(tree(root)), (root / "datasite.log").read_text()
        finally:
            process.stop()

    widened, still_wide, log = site.restart(serve_alone)

    assert still_wide == []
    assert f"{HOSPITAL}: {widened} files of its store were readable by other users" in log
    entries = audit_events(root, "store_permissions_fixed")[audited:]
    assert [(e["paths"], e["advice"]) for e in entries] == [(widened, "rotate keys")]


# -- rotate-keys -----------------------------------------------------------------------------


def test_rotate_keys_is_refused_while_the_datasite_is_up(site: Site) -> None:
    before = (site.root / "identity.json").read_bytes()

    result = rotate_cli(site.data_dir)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {HOSPITAL} is running at {URL}; stop it first (Ctrl-C in launch.py), then "
        "run rotate-keys again."
    )
    assert (site.root / "identity.json").read_bytes() == before


@dataclass(frozen=True)
class Rotation:
    """What an attacker stole before the rotation, and what rotate-keys printed."""

    admin_key: str
    scientist_key: str
    old: dict[str, Any]
    before: Identity
    pending_request: str
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def rotation(site: Site) -> Rotation:
    path, old = site.root / "identity.json", site.launch.hospital(HOSPITAL)
    stolen = json.loads(path.read_text())["signing_key"]
    scientist = login(URL, old["scientist"]["email"], old["scientist"]["password"])
    # Before: the copied key really is the operator's, and the scientist's key works.
    assert old["admin"]["email"] in emails(signed_call(stolen, "user.get_all"))
    scientist_key = str(scientist.credentials)
    me = signed_call(scientist_key, "user.get_current_user")
    assert getattr(me, "email", None) == old["scientist"]["email"]
    fed = Federation.connect(site.data_dir, workdir=site.data_dir.parent / "studies")
    pending = fed.submit(StudyConfig(**STUDY), hospitals=[HOSPITAL]).requests[HOSPITAL]
    before = Identity(**json.loads(path.read_text()))
    result = site.restart(lambda: rotate_cli(site.data_dir))
    return Rotation(stolen, scientist_key, old, before, pending, result)


def stored_text(db: Path) -> str:
    """Every object's fields and permissions as syft's database holds them now."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [
            row for t in tables for row in conn.execute(f'SELECT fields, permissions FROM "{t}"')
        ]
        return "\n".join(str(row) for row in rows)


def test_rotate_keys_writes_a_new_identity_and_says_what_to_do(
    site: Site, rotation: Rotation
) -> None:
    after = Identity(**json.loads((site.root / "identity.json").read_text()))
    out = rotation.result.stdout

    assert rotation.result.returncode == 0, rotation.result.stderr
    assert after.keys_generation == rotation.before.keys_generation + 1
    assert (after.server_uid, after.admin_email, after.scientist_email) == (
        rotation.before.server_uid,
        rotation.before.admin_email,
        rotation.before.scientist_email,
    )
    secrets = ("signing_key", "admin_password", "scientist_password")
    assert all(getattr(after, s) != getattr(rotation.before, s) for s in secrets)
    assert stat.S_IMODE((site.root / "identity.json").stat().st_mode) == 0o600
    assert "start it again" in out and f"keys generation {after.keys_generation}" in out
    logged = (site.root / "audit.jsonl").read_text()
    for secret in (
        *(getattr(after, s) for s in secrets),
        *(getattr(rotation.before, s) for s in secrets),
    ):
        assert secret not in out and secret not in logged
    (rotated_entry,) = audit_events(site.root, "keys_rotated")
    assert rotated_entry["generation"] == after.keys_generation and rotated_entry["operator"]
    assert [e["generation"] for e in audit_events(site.root, "keys_applied")] == [
        after.keys_generation
    ]


def test_the_stolen_admin_key_is_refused_after_rotation(rotation: Rotation) -> None:
    users = signed_call(rotation.admin_key, "user.get_all")
    me = signed_call(rotation.admin_key, "user.get_current_user")

    assert emails(users) == [], users
    assert getattr(me, "email", None) != rotation.old["admin"]["email"]


def test_no_stored_object_names_the_old_keys_after_rotation(site: Site, rotation: Rotation) -> None:
    from syft.server.credentials import SyftSigningKey

    old_keys = [
        str(SyftSigningKey.from_string(k).verify_key)
        for k in (rotation.admin_key, rotation.scientist_key)
    ]

    text = stored_text(database(site.root))

    new_key = json.loads((site.root / "identity.json").read_text())["signing_key"]
    assert f"{SyftSigningKey.from_string(new_key).verify_key}_OWNER" in text
    assert [k for k in old_keys if k in text] == []


def test_the_scientist_keeps_their_requests_after_rotation(site: Site, rotation: Rotation) -> None:
    new = site.launch.hospital(HOSPITAL)["scientist"]
    scientist = login(URL, new["email"], new["password"])

    requests = {str(r.id): r for r in scientist.api.services.request.get_all()}

    assert rotation.pending_request in requests, list(requests)
    assert str(requests[rotation.pending_request].status).endswith("PENDING")


def test_the_scientists_old_key_is_refused_after_rotation(rotation: Rotation) -> None:
    me = signed_call(rotation.scientist_key, "user.get_current_user")

    assert getattr(me, "email", None) != rotation.old["scientist"]["email"]


def test_old_passwords_are_refused_and_the_new_logins_work(site: Site, rotation: Rotation) -> None:
    new = site.launch.hospital(HOSPITAL)
    before = rotation.before
    after = Identity(**json.loads((site.root / "identity.json").read_text()))

    old_logins = (
        (before.admin_email, before.admin_password),
        (before.scientist_email, before.scientist_password),
    )
    refused = [
        attempt(lambda e=email, p=password: login(URL, e, p)) for email, password in old_logins
    ]
    scientist = login(URL, new["scientist"]["email"], new["scientist"]["password"])

    assert all(isinstance(r, Exception) for r in refused), refused
    assert before.scientist_password != new["scientist"]["password"]
    assert new["scientist"]["email"] in emails(signed_call(after.signing_key, "user.get_all"))
    datasets = {d.name for d in scientist.api.services.dataset.get_all()}
    assert datasets == {"ehr", "pathmnist"}


# -- quick checks on real files, no datasite ----------------------------------------------------


def test_secure_hospital_folder_returns_and_fixes_what_was_wider(tmp_path: Path) -> None:
    root = tmp_path / "hospital-x"
    (root / "syft" / "db").mkdir(parents=True)
    (root / "syft" / "db" / "x.db").write_text("private")
    (root / "identity.json").write_text("{}")
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours to change")
    (root / "link").symlink_to(outside)
    for path, mode in (
        (root, 0o755),
        (root / "syft", 0o700),
        (root / "syft" / "db", 0o751),
        (root / "syft" / "db" / "x.db", 0o644),
        (root / "identity.json", 0o600),
        (outside, 0o644),
    ):
        path.chmod(mode)

    found = secure_hospital_folder(root)

    assert sorted(found) == sorted([root, root / "syft" / "db", root / "syft" / "db" / "x.db"])
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (root, root / "syft" / "db", root / "syft" / "db" / "x.db")
    }
    assert modes == {"hospital-x": 0o700, "db": 0o700, "x.db": 0o600}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # the link was not followed
    assert secure_hospital_folder(root) == []
    assert secure_hospital_folder(tmp_path / "missing") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_path_owned_by_another_user_is_a_one_sentence_error(tmp_path: Path) -> None:
    root = tmp_path / "hospital-x"
    root.mkdir(mode=0o700)
    planted = root / "planted.db"
    planted.write_text("x")
    os.chown(planted, 65534, 65534)

    with pytest.raises(StoreError) as error:
        secure_hospital_folder(root)

    message = str(error.value)
    assert str(planted) in message and "uid 65534" in message and "chown -R" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_identity_files_from_before_rotation_load_as_generation_zero(tmp_path: Path) -> None:
    fields = {
        "server_uid": "0" * 32,
        "signing_key": "k",
        "admin_email": "a@h.org",
        "admin_password": "p",
        "scientist_email": "s@r.org",
        "scientist_password": "q",
    }
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(fields))

    identity = Identity.load_or_create(path, "hospital-x")
    new = rotated(identity)

    assert identity.keys_generation == 0 and new.keys_generation == 1
    assert asdict(new)["server_uid"] == fields["server_uid"]
    assert (new.admin_email, new.scientist_email) == ("a@h.org", "s@r.org")


def test_rotate_keys_needs_the_hospital_listed_and_leaves_identity_unchanged(
    tmp_path: Path,
) -> None:
    root = tmp_path / HOSPITAL
    root.mkdir()
    identity = root / "identity.json"
    identity.write_text(json.dumps(asdict(Identity.create(HOSPITAL))))
    before = identity.read_bytes()

    with pytest.raises(RotationError, match=re.escape("does not list hospital-a")):
        rotate_keys(tmp_path, HOSPITAL)

    assert identity.read_bytes() == before
