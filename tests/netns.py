"""A small network of hosts on this machine, made of Linux network namespaces.

Each host is a namespace with one veth interface and an address from 198.18.0.0/15 (RFC
2544's benchmarking range), plugged into a bridge that lives in a namespace of its own: the
machine's own namespace gets no address and no route, so nothing a test sends can leave
for a real network, and 127.0.0.1 inside one host is that host's alone. Cutting a host's
link (`link(host, up=False)`) drops its packets silently, as a dead cable or a firewall
would, rather than refusing connections.

Everything made here is torn down by `close()` (also on errors, and at interpreter exit as
a last resort): processes first (their whole process group), then the namespaces, which
takes the veths and the bridge with them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "198.18.0"  # /24 inside 198.18.0.0/15; only ever assigned inside the namespaces
PREFIX_LENGTH = 24
FIRST_HOST = 10


def available() -> str | None:
    """Why namespaces cannot be built here (None when they can): root and iproute2."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    """One machine of the test network."""

    name: str
    namespace: str
    address: str
    switch_port: str  # the veth end on the bridge; down = this host's cable is cut


@dataclass
class Network:
    """Hosts on one bridge; use as a context manager."""

    names: list[str]
    tag: str = field(default_factory=lambda: f"fl{os.getpid() % 100_000}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def __enter__(self) -> Network:
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for index, name in enumerate(self.names):
            namespace = f"{self.tag}-{index}"
            port = f"p{index}"
            address = f"{SUBNET}.{FIRST_HOST + index}"
            _ip("netns", "add", namespace)
            self.hosts[name] = Host(name, namespace, address, port)
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", namespace)  # fmt: skip
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def command(self, host: str, argv: list[str]) -> list[str]:
        """`argv` as run on `host`."""
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def start(self, host: str, argv: list[str], log: Path, **kwargs: object) -> subprocess.Popen:
        """Start a long-running process on `host` (its own process group), output to `log`."""
        handle = open(log, "ab")  # noqa: SIM115 - owned by the child from here on
        try:
            process = subprocess.Popen(
                self.command(host, argv),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,  # type: ignore[arg-type]
            )
        finally:
            handle.close()
        self.processes.append(process)
        return process

    def run(
        self, host: str, argv: list[str], timeout: float = 600, **kwargs: object
    ) -> subprocess.CompletedProcess:
        """Run a command on `host` to completion, capturing its output as text."""
        return subprocess.run(
            self.command(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )

    def link(self, host: str, *, up: bool) -> None:
        """Plug or cut `host`'s cable (on the switch side: the host sees nothing happen)."""
        _ip("-n", self.switch, "link", "set", self.hosts[host].switch_port, "up" if up else "down")

    def close(self) -> None:
        """Stop every process started here, then delete every namespace; never raises."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        self.processes.clear()
        for namespace in [h.namespace for h in self.hosts.values()] + [self.switch]:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self.hosts.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
