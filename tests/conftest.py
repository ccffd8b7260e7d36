"""Fixtures that start real hospital datasites with `launch.py`, once per test session."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

Completed = subprocess.CompletedProcess[str]

REPO = Path(__file__).resolve().parent.parent
# Overridable so that two test runs on one machine (helpers, CI) do not fight over ports.
SESSION_BASE_PORT = int(os.environ.get("FEDERATION_TEST_BASE_PORT", "18181"))
SESSION_HOSPITALS = 3
# Many studies share the session's datasites; a roomy cap keeps them from exhausting each
# other's budget (tests of the cap itself ask for more than this).
SESSION_CAP = 40.0
SESSION_POLICY = f"""
[budget]
epsilon_cap = {SESSION_CAP}

[study]
max_epsilon = 100.0
# 2 of 3: the dropout tests need a round to survive a lost hospital (the default is 3 of 3).
min_secure_threshold = 2
"""


# The fixtures that start datasites (or name the session's): a test of tests/integration or
# tests/security is live when one of them is among its fixtures (directly or through
# another fixture), or when it is marked `live` (it starts processes itself).
LIVE_FIXTURES = frozenset({"federation", "guarded", "site"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder (`integration`, `security`), and a test of those folders
    that starts and reaches no datasite `in_process`, so that it runs with the unit tests:
    `-m "in_process or not (integration or security)"` is the half without datasites. A live
    test that uses the session federation is also marked `session`: `make test` runs those,
    the other live tests of tests/security (the guarded federation, test_store's and
    test_guest_floods' launches) and those of tests/integration (launches of their own) in
    three processes at once, each with datasites of its own on its own ports."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        folders = [m for m in ("integration", "security") if m in parts]
        for marker in folders:
            item.add_marker(marker)
        fixtures = set(getattr(item, "fixturenames", ()))
        live = item.get_closest_marker("live") is not None or fixtures & LIVE_FIXTURES
        if folders and not live:
            item.add_marker("in_process")
        if folders and "federation" in fixtures:
            item.add_marker("session")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "session: a live test that uses the session federation (set at collection); "
        "`make test` runs them in a process of their own, beside the other live tests",
    )
    # syft and its dependencies emit hundreds of deprecation warnings that are not ours.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore::PendingDeprecationWarning")


# The account in-process runtime calls run for (a datasite sets it from the key that
# submitted the code, `datasites.server.code_owner`); the plans tests build name it.
IN_PROCESS_ACCOUNT = "scientist@research.org"


@pytest.fixture(autouse=True)
def in_process_account() -> Any:
    """Run every test as IN_PROCESS_ACCOUNT; a test acts as another with `acting_as`."""
    from datasites.site.caller import acting_as

    with acting_as(IN_PROCESS_ACCOUNT):
        yield


@dataclass
class Launch:
    """A running `python launch.py` and everything it printed so far."""

    proc: subprocess.Popen[str]
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def credentials(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "credentials.json").read_text())

    def hospital(self, name: str) -> dict[str, Any]:
        return next(h for h in self.credentials()["hospitals"] if h["name"] == name)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def load_benchmark(name: str) -> Any:
    """A script of benchmarks/ as a module. Not `import benchmarks.x`: the folder is not a
    package, and opacus installs one named `benchmarks`. Its folder goes on sys.path, as
    when the script runs, so it imports its siblings (`scoring`) the same way."""
    import importlib

    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name)


def one_round_ehr(epsilon: float) -> dict[str, Any]:
    """The smallest real study (one plain round of ehr_logistic) as StudyConfig keywords:
    what governance, account and attack tests submit when the training itself is not the
    point."""
    from scientist import DPConfig

    return dict(
        task="ehr",
        aggregation="plain",
        local_epochs=1,
        average_decay=0.0,
        model="ehr_logistic",
        rounds=1,
        batch_size=128,
        lr=0.5,
        dp=DPConfig(epsilon=epsilon, delta=1e-5, max_grad_norm=1.0),
    )


def launch_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "launch.py"), *args]


@dataclass
class Starting:
    """A launch.py begun and not yet waited for (`begin_launch`)."""

    launch: Launch
    ready: threading.Event
    deadline: float
    timeout: float

    def wait(self) -> Launch:
        """Its `ready:` line, or fail with its output."""
        launch, proc = self.launch, self.launch.proc
        while not self.ready.wait(0.5):
            if time.monotonic() > self.deadline:
                proc.kill()
                pytest.fail(f"launch.py not ready after {self.timeout} s:\n{launch.output}")
        if not any(x.startswith("ready:") for x in launch.lines):
            pytest.fail(f"launch.py exited with {proc.wait(30)}:\n{launch.output}")
        return launch


def start_launch(
    *args: str, data_dir: Path, timeout: float = 300, ignore_sigint: bool = False
) -> Launch:
    """Start launch.py and wait for its `ready:` line (or fail with its output).

    `ignore_sigint` starts it as a background job of a non-interactive shell would be."""
    return begin_launch(
        *args, data_dir=data_dir, timeout=timeout, ignore_sigint=ignore_sigint
    ).wait()


def begin_launch(
    *args: str, data_dir: Path, timeout: float = 300, ignore_sigint: bool = False
) -> Starting:
    """Start launch.py without waiting for it: `.wait()` when its datasites are needed."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen(
        launch_command(*args, "--data-dir", str(data_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=ignore,
    )
    launch = Launch(proc=proc, data_dir=data_dir)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            launch.lines.append(line)
            if line.startswith("ready:"):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    return Starting(launch, ready, time.monotonic() + timeout, timeout)


def run_launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run launch.py to completion (for inputs it must refuse)."""
    return subprocess.run(
        launch_command(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def _in_process(main: Callable[[list[str]], int], args: Sequence[str]) -> Completed:
    """`main(args)` with its output captured: what a subprocess of it would have returned."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    except SystemExit as exit_:  # argparse refuses with exit code 2
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:  # launch.main installs handlers that turn Ctrl-C into its own exception
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def launch_in_process(*args: str) -> Completed:
    """launch.py's `main` in this process, for inputs it refuses before starting anything:
    the same exit code and output as `run_launch`, without a second interpreter."""
    import launch

    return _in_process(launch.main, args)


def datasites_cli(data_dir: Path, hospital: str, *args: str) -> Completed:
    """`python -m datasites <args> --hospital H --data-dir D`, by its `main` in this process.

    The same code, exit code and output as the command; a second interpreter would spend
    about 7 s importing syft for each command (the entry point itself is run as a process
    by tests/integration/test_init_serve.py and test_multihost.py)."""
    from datasites.cli.main import main

    return _in_process(main, [*args, "--hospital", hospital, "--data-dir", str(data_dir)])


# Launches begun in the background before a fixture asks for them, by fixture name: the
# session federation begins the guarded one (tests/security/conftest.py) once it is ready
# itself, so that its start overlaps the integration tests, which mostly wait on replies.
EARLY: dict[str, Starting] = {}


def wanted(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether a test of this run uses `fixture`."""
    return any(fixture in getattr(item, "fixturenames", ()) for item in request.session.items)


@pytest.fixture(scope="session")
def federation(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """Three hospital datasites on loopback, started once for the whole session."""
    data_dir = tmp_path_factory.mktemp("federation") / "datasites"
    for name in ("hospital-a", "hospital-b", "hospital-c")[:SESSION_HOSPITALS]:
        (data_dir / name).mkdir(parents=True)
        (data_dir / name / "policy.toml").write_text(SESSION_POLICY)
    launch = start_launch(
        "--hospitals",
        str(SESSION_HOSPITALS),
        "--base-port",
        str(SESSION_BASE_PORT),
        "--seed",
        "7",
        data_dir=data_dir,
    )
    if wanted(request, "guarded") and "guarded" not in EARLY:
        from tests.security.conftest import begin_guarded

        EARLY["guarded"] = begin_guarded(tmp_path_factory)
    yield launch
    launch.stop()
    unused = EARLY.pop("guarded", None)  # begun, but the run ended before a test used it
    if unused is not None:
        unused.launch.stop()


def login(url: str, email: str, password: str) -> Any:
    """A syft client for one hospital (raises if the login is refused)."""
    import contextlib
    import io

    import syft as sy

    host, port = url.rsplit(":", 1)
    with contextlib.redirect_stdout(io.StringIO()):
        return sy.login(url=host, port=int(port), email=email, password=password)


def admin_login(launch: Launch, name: str) -> Any:
    """A hospital operator's client: it signs with the key in the hospital's identity.json
    (the admin has no password login)."""
    import contextlib
    import io

    from datasites.server.admin_key import admin_client
    from datasites.site.identity import Identity
    from datasites.site.paths import HospitalConfig

    port = int(launch.hospital(name)["url"].rsplit(":", 1)[1])
    config = HospitalConfig(name=name, port=port, data_dir=launch.data_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        return admin_client(config, Identity.load_or_create(config.identity_path, name))


@pytest.fixture(scope="session")
def admin_clients(federation: Launch) -> dict[str, Any]:
    """Each hospital's operator login: used to check what the private assets hold."""
    return {
        h["name"]: admin_login(federation, h["name"]) for h in federation.credentials()["hospitals"]
    }


@pytest.fixture(scope="module")
def fed(federation: Launch, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The data scientist's federation over the session's hospitals (own workdir per module)."""
    from scientist import Federation

    return Federation.connect(federation.data_dir, workdir=tmp_path_factory.mktemp("studies"))


def listening_addresses(port: int) -> list[str]:
    """The addresses a TCP server listens on at `port`."""
    import psutil

    return [
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def outside_address() -> str | None:
    """One of this machine's non-loopback IPv4 addresses, if it has any."""
    import socket

    import psutil

    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


@pytest.fixture
def secure_trio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Three in-process hospital folders registered with each other (tests/secure_harness)."""
    from datasites.runtime.execute import current_hospital
    from datasites.site.paths import HOSPITAL_ROOT_ENV
    from tests.secure_harness import build_trio

    trio = build_trio(tmp_path)
    monkeypatch.setenv(HOSPITAL_ROOT_ENV, str(next(iter(trio["roots"].values()))))
    yield trio
    current_hospital.cache_clear()


@pytest.fixture(scope="session")
def secure_tables() -> Any:
    """Each in-process hospital's EHR table (tests/secure_harness)."""
    from tests.secure_harness import build_tables

    return build_tables()
