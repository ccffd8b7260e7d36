"""One hospital sets itself up (`python -m datasites init`) and serves over TLS (`serve`).

Real processes throughout: `init` provisions its own datasite on loopback from the
hospital's files, `serve` serves it over TLS on 127.0.0.1 with the certificate `init` made,
and the operator logs in over TLS trusting exactly that certificate. Nothing is sent to
any address but 127.0.0.1: the outside address below is refused before anything binds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from datasites.contract.health import is_up
from datasites.contract.invitation import certificate_fingerprint
from datasites.contract.pinned_tls import pinned_session
from datasites.governance.operator import Operator
from datasites.site.identity import Identity
from datasites.site.paths import HospitalConfig
from datasites.site.tls import create_pair, load_pair
from synthetic.ehr import generate_ehr, write_ehr_csv
from synthetic.pathology import generate_pathmnist, save_pathmnist_npz

REPO = Path(__file__).resolve().parents[2]
HOSPITAL = "hospital-q"
# This module's range is 19100-19199; overridable, as the session's FEDERATION_TEST_BASE_PORT.
PORT = int(os.environ.get("INIT_SERVE_TEST_PORT", "19150"))
OUTSIDE = "198.18.0.1"  # RFC 2544 benchmarking range; refused before any bind
DNS_NAME = "datasite.hospital-q.example"


def datasites(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datasites", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


@dataclass
class Site:
    """The initialised hospital and, while it serves, its `serve` process."""

    data_dir: Path
    init: subprocess.CompletedProcess[str]
    proc: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)

    @property
    def config(self) -> HospitalConfig:
        return HospitalConfig(HOSPITAL, PORT, self.data_dir, tls=True)

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def pem(self) -> str:
        return self.config.tls_cert_path.read_text()

    def start(self) -> None:
        log = open(self.data_dir / "serve.log", "ab")  # noqa: SIM115 (the child keeps it)
        command = ["serve", "--hospital", HOSPITAL, "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datasites", *command, "--port", str(PORT)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 120
        while not is_up(self.url, certificate_pem=self.pem):
            assert self.proc.poll() is None, (self.data_dir / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the datasite did not come up over TLS"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exits.append(self.proc.wait(30))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exits.append(-9)
        self.proc = None


@pytest.fixture(scope="module")
def own_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The hospital's own export: a small EHR extract and slide archive in the real formats."""
    folder = tmp_path_factory.mktemp("export")
    csv, npz = folder / "diabetic_data.csv", folder / "pathmnist.npz"
    write_ehr_csv(generate_ehr(800, seed=41), csv)
    save_pathmnist_npz(
        npz, {"train": generate_pathmnist(300, seed=42), "test": generate_pathmnist(100, seed=43)}
    )
    return csv, npz


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, own_files: tuple[Path, Path]) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("standalone")
    csv, npz = own_files
    result = datasites(
        "init", "--hospital", HOSPITAL, "--data-dir", str(data_dir), "--port", str(PORT),
        "--ehr-csv", str(csv), "--pathmnist-npz", str(npz), "--dns-name", DNS_NAME,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    running = Site(data_dir, result)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_init_prints_the_verify_key_and_fingerprint_and_keeps_the_key_private(site: Site) -> None:
    config = site.config
    identity = Identity.load_or_create(config.identity_path, HOSPITAL)
    out = site.init.stdout
    assert f"datasite verify key: {identity.verify_key}" in out
    assert f"certificate SHA-256 fingerprint: {certificate_fingerprint(site.pem)}" in out
    assert f"URL: https://{DNS_NAME}:{PORT}" in out
    assert oct(config.tls_key_path.stat().st_mode & 0o777) == "0o600"
    names = load_pair(config.tls_cert_path, config.tls_key_path).names()
    assert {"127.0.0.1", DNS_NAME} <= set(names)
    assert re.search(r"ehr [\d,]+\+[\d,]+ rows, pathmnist 300\+100 rows", out), out
    assert identity.admin_password not in out + site.init.stderr


def test_the_operator_logs_in_over_tls(site: Site) -> None:
    op = Operator.open(site.data_dir, HOSPITAL)
    assert op.url == f"https://{DNS_NAME}:{PORT}"  # what invitations name
    assert op.client.connection.url.url == f"https://127.0.0.1:{PORT}"  # where it reached it
    assert {d.name for d in op.client.datasets.get_all()} == {"ehr", "pathmnist"}
    assert op.budget().to_dict()["ehr"]["events"]  # the released size, in the ledger
    assert op.requests() == []


def test_only_tls_with_the_hospitals_own_certificate_gets_through(site: Site) -> None:
    plain = site.url.replace("https://", "http://")
    assert not is_up(plain)
    with pytest.raises(requests.ConnectionError):
        requests.get(plain + "/api/v2/metadata", timeout=10)
    impostor = create_pair(HOSPITAL, ["127.0.0.1"]).cert_pem.decode()
    assert not is_up(site.url, certificate_pem=impostor)
    with pytest.raises(requests.exceptions.SSLError):
        pinned_session(impostor, None).get(site.url + "/api/v2/metadata")
    assert is_up(site.url, certificate_pem=site.pem)
    assert pinned_session(site.pem, None).get(site.url + "/api/v2/metadata").status_code == 200


def test_an_outside_address_without_a_certificate_is_refused_before_binding(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    result = datasites(
        "serve", "--hospital", "hospital-z", "--data-dir", str(tmp_path / "fresh"),
        "--host", OUTSIDE, "--port", str(PORT + 1),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: hospital-z cannot be served on {OUTSIDE} without TLS and it has no "
        "certificate; give --tls-cert and --tls-key, or run python -m datasites init to "
        "create one."
    )
    assert not (tmp_path / "fresh").exists()  # nothing written either
    assert time.monotonic() - started < 30  # refused up front, syft never loaded


def test_init_again_refuses_and_keeps_everything(site: Site) -> None:
    identity = site.config.identity_path.read_bytes()
    cert = site.pem
    result = datasites("init", "--hospital", HOSPITAL, "--data-dir", str(site.data_dir))
    assert result.returncode == 2
    assert "is already initialised" in result.stderr and "\n" not in result.stderr.strip()
    assert site.config.identity_path.read_bytes() == identity
    assert site.pem == cert


def test_a_restart_keeps_the_datasets_and_the_ledger(site: Site) -> None:
    op = Operator.open(site.data_dir, HOSPITAL)
    datasets = {d.name: str(d.id) for d in op.client.datasets.get_all()}
    budget = op.budget().to_dict()
    audit_path = site.config.root / "audit.jsonl"
    audit = audit_path.read_text() if audit_path.exists() else ""
    site.stop()
    # A graceful stop: uvicorn shuts down, then re-raises the signal it caught (so -15);
    # a datasite that would not stop would have been killed (-9).
    assert site.exits[-1] in (0, -signal.SIGTERM)
    assert "Traceback" not in (site.data_dir / "serve.log").read_text()
    assert not is_up(site.url, certificate_pem=site.pem)
    site.start()
    again = Operator.open(site.data_dir, HOSPITAL)
    assert {d.name: str(d.id) for d in again.client.datasets.get_all()} == datasets
    assert again.budget().to_dict() == budget
    assert (audit_path.read_text() if audit_path.exists() else "").startswith(audit)


def test_a_hospital_set_up_alone_gets_its_own_generated_data() -> None:
    """Without files, init generates data from --seed and the hospital's name: the same
    name and seed always give the same table, another name another one."""
    from datasites.local.seeding import single_hospital_plan, synthetic_ehr

    def table(name: str, seed: int) -> object:
        return synthetic_ehr(single_hospital_plan(name, "small", seed, 0.5), 0)

    first = table("hospital-a", 0)
    assert first.equals(table("hospital-a", 0))
    assert not first.equals(table("hospital-b", 0))
    assert not first.equals(table("hospital-a", 1))
