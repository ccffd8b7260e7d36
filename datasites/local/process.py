"""Run a hospital datasite as a child process and know when it is up, down or broken.

Each hospital is its own OS process (`python -m datasites serve ...`): hospitals share
nothing in memory, a crash in one does not take the others down, and stopping one is a
SIGTERM that lets uvicorn and syft close their databases cleanly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from datasites.contract.health import is_up
from datasites.site.paths import HospitalConfig
from datasites.site.permissions import PRIVATE_UMASK

REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasiteStartError(RuntimeError):
    """A datasite did not come up; the message names it and its log."""


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the datasite if the launcher dies without cleaning up."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_setup() -> None:
    """Runs in the child before the datasite: owner-only files from its first write on
    (syft's database and blobs hold private data and signing keys), and die with the
    launcher."""
    os.umask(PRIVATE_UMASK)
    _die_with_parent()


def open_private_log(path: Path) -> int:
    """Open the datasite's log for appending, 0600 (a log can carry private values in
    tracebacks); an existing log that was wider is narrowed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


class DatasiteProcess:
    """One hospital's datasite process, with its output going to the hospital's log."""

    def __init__(self, config: HospitalConfig, *, torch_threads: int = 1) -> None:
        self.config = config
        self.torch_threads = torch_threads
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = dict(os.environ)
        # Several datasites share the machine's cores; one thread each avoids
        # oversubscription when they train at the same time.
        env.update(
            OMP_NUM_THREADS=str(self.torch_threads),
            MKL_NUM_THREADS=str(self.torch_threads),
        )
        command = [
            sys.executable,
            "-m",
            "datasites",
            "serve",
            "--hospital",
            self.config.name,
            "--port",
            str(self.config.port),
            "--data-dir",
            str(self.config.data_dir),
        ]
        with open(open_private_log(self.config.log_path), "ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,  # a terminal's Ctrl-C goes to the launcher only
                preexec_fn=_child_setup,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the datasite answers, or raise naming the hospital and its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self._proc.returncode if self._proc else None
                raise DatasiteStartError(
                    f"{self.config.name} stopped while starting (exit code {code}); "
                    f"see {self.config.log_path}."
                )
            if is_up(self.config.url):
                return
            time.sleep(0.5)
        raise DatasiteStartError(
            f"{self.config.name} did not answer on {self.config.url} within {timeout:.0f} s; "
            f"see {self.config.log_path}."
        )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it will not go; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode
