"""Three hospitals and a scientist on four hosts, over TLS (issue 16).

Each hospital is its own host (a Linux network namespace with an address from
198.18.0.0/15, `tests.netns`), set up with `python -m datasites init` from its own folder,
told its partners' verify keys, served with `serve` over TLS, and given a scientist
account with `scientists add`. The scientist, on a fourth host, connects from the
invitation files alone and runs a secure study end to end; its first round must equal the
plain weighted average of what the hospitals recorded. The network is then attacked and
broken: plain HTTP, a certificate the invitation did not pin, another host's loopback, and
a hospital's cable cut mid-study and plugged back in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from datasites.contract.stored import loads as stored_loads
from datasites.privacy.ledger import Ledger
from tests import netns
from tests.conftest import REPO

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
PORT = 8443
EMAIL = "ana.lima@research.example.org"
PYTHON = sys.executable
# One torch thread per process: three hospitals and a scientist share two cores.
ENV_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Site:
    net: netns.Network
    root: Path
    invitations: dict[str, Path]
    cut: bool = False  # hospital-c's cable was cut
    restored: bool = False  # ... and plugged back in
    killed: bool = False  # the scientist's first session was killed

    def data_dir(self, hospital: str) -> Path:
        return self.root / hospital

    def url(self, hospital: str) -> str:
        return f"https://{self.net.hosts[hospital].address}:{PORT}"

    def datasites(self, hospital: str, *argv: str, check: bool = True) -> str:
        """`python -m datasites ...` as that hospital's operator, on its own host."""
        command = [PYTHON, "-m", "datasites", *argv, "--hospital", hospital,
                   "--data-dir", str(self.data_dir(hospital))]  # fmt: skip
        done = self.net.run(hospital, command, timeout=900, cwd=REPO)
        if check:
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def scientist(
        self, action: str, *args: str, invitations: list[Path] | None = None
    ) -> list[dict]:
        """One step of `tests.multihost_scientist` on the scientist's host."""
        invites = [str(p) for p in (invitations or self.invitations.values())]
        done = self.net.run(
            "scientist",
            [PYTHON, "-m", "tests.multihost_scientist", action, str(self.root / "scientist"),
             *args, *invites],
            timeout=900,
            cwd=REPO,
        )  # fmt: skip
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, f"{action}: {done.stdout}{done.stderr}"
        return lines

    def probe(self, code: str) -> str:
        """Run Python on the scientist's host; returns what it printed."""
        done = self.net.run("scientist", [PYTHON, "-c", code], timeout=120, cwd=REPO)
        return (done.stdout + done.stderr).strip()


def _init_all(net: netns.Network, root: Path) -> None:
    processes = {}
    for index, hospital in enumerate(HOSPITALS):
        command = [PYTHON, "-m", "datasites", "init", "--hospital", hospital,
                   "--data-dir", str(root / hospital), "--host", net.hosts[hospital].address,
                   "--port", str(PORT), "--seed", str(index + 1)]  # fmt: skip
        processes[hospital] = subprocess.Popen(
            net.command(hospital, command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
    for hospital, process in processes.items():
        out, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"init {hospital}: {out}"


def _each_host(step: Callable[[str], object]) -> list[object]:
    """step(hospital) on every hospital's host at once (each host's own steps stay in
    order): the operators act independently, and each command is mostly its own start-up."""
    with ThreadPoolExecutor(max_workers=len(HOSPITALS)) as pool:
        return list(pool.map(step, HOSPITALS))


def _register_partners(site: Site) -> None:
    def own_key(hospital: str) -> str:
        first = site.datasites(hospital, "partners", "list").splitlines()[0].split()
        assert first[0] == hospital
        return first[1]

    keys = dict(zip(HOSPITALS, _each_host(own_key), strict=True))

    def add_partners(hospital: str) -> None:
        for other in HOSPITALS:
            if other != hospital:
                site.datasites(hospital, "partners", "add", other, keys[other])

    _each_host(add_partners)


def _wait_up(site: Site, hospital: str, deadline: float = 180) -> None:
    cert = (site.data_dir(hospital) / hospital / "tls" / "cert.pem").read_text()
    code = (
        "from datasites.contract.pinned_tls import pinned_session;"
        f"s = pinned_session({cert!r}, None);"
        f"print(s.get('{site.url(hospital)}/api/v2/metadata', timeout=5).status_code)"
    )
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done = site.net.run(hospital, [PYTHON, "-c", code], timeout=60, cwd=REPO)
        if done.stdout.strip() == "200":
            return
        time.sleep(2)
    log = (site.root / f"{hospital}.serve.log").read_text()[-2000:]
    raise AssertionError(f"{hospital} did not come up over TLS: {log}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    import os

    root = tmp_path_factory.mktemp("multihost")
    with netns.Network([*HOSPITALS, "scientist"]) as net:
        site = Site(net, root, {})
        _init_all(net, root)
        _register_partners(site)
        for hospital in HOSPITALS:  # each operator lets a round survive one lost hospital
            policy = site.data_dir(hospital) / hospital / "policy.toml"
            text = policy.read_text()
            assert "min_secure_threshold = 0" in text
            policy.write_text(text.replace("min_secure_threshold = 0", "min_secure_threshold = 2"))
        for hospital in HOSPITALS:
            command = [PYTHON, "-m", "datasites", "serve", "--hospital", hospital,
                       "--data-dir", str(site.data_dir(hospital)),
                       "--host", net.hosts[hospital].address, "--port", str(PORT)]  # fmt: skip
            net.start(hospital, command, root / f"{hospital}.serve.log", cwd=REPO,
                      env=os.environ | ENV_THREADS)  # fmt: skip

        def invite(hospital: str) -> None:
            _wait_up(site, hospital)
            out = root / "invitations" / f"{hospital}.invite.json"
            site.datasites(hospital, "scientists", "add", EMAIL, "--name", "Ana Lima",
                           "--out", str(out))  # fmt: skip
            site.invitations[hospital] = out

        _each_host(invite)
        site.invitations = {h: site.invitations[h] for h in HOSPITALS}  # in hospital order
        yield site


STUDY = {
    "task": "ehr",
    "model": "ehr_logistic",
    "rounds": 8,
    "local_epochs": 1,
    "eval_every": 8,
    "batch_size": 128,
    "lr": 0.5,
    "average_decay": 0.0,
    "dp": {"epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0},
    "threshold": 2,  # 2 of 3, which the operators' policy allows: one cable may be cut
}


def test_invitations_are_owner_only_and_the_scientist_connects_from_them(site: Site) -> None:
    for path in site.invitations.values():
        assert path.stat().st_mode & 0o077 == 0
    assert site.scientist("connect") == [{"hospitals": sorted(HOSPITALS)}]


def test_a_secure_study_across_hosts_is_correct_and_survives_a_cut_cable(site: Site) -> None:
    """Round 1 equals the plain weighted average of the hospitals' recorded updates; then
    hospital-c's cable is cut: it is named, rounds complete with the other two (a
    threshold of 2 of 3, which each operator's policy allows), and once plugged back in it
    contributes again. Last, the scientist's session is killed in the middle of a round:
    `resume` finishes the study and no hospital trains any round twice."""
    submitted = site.scientist("submit", json.dumps(STUDY))[0]
    assert set(submitted["requests"]) == set(HOSPITALS), submitted
    requests = submitted["requests"]
    _each_host(lambda hospital: site.datasites(hospital, "approve", requests[hospital]))
    killed = _follow(site, _driver(site, submitted["study"]))
    assert not killed[-1].get("done") and killed[-1]["round"] == KILL_AFTER, killed
    entries = _follow(site, _driver(site, submitted["study"]))  # fed.resume(id).run()
    assert entries[-1].get("done"), entries
    history = {e["round"]: e for e in entries[-1]["history"]}
    assert sorted(history) == list(range(9))
    assert history[1]["contributors"] == sorted(HOSPITALS)
    _check_round_one(site, submitted["study"])
    # A round's n is the sum of its contributors' released training counts.
    full = history[1]["n"]
    without = [r for r, e in history.items() if "hospital-c" in (e.get("dropped") or {})]
    assert without, history
    assert all(history[r]["contributors"] == ["hospital-a", "hospital-b"] for r in without)
    assert all(history[r]["n"] < full for r in without)
    back = [r for r in range(max(without) + 1, 9) if history[r]["n"] == full]
    assert back and "hospital-c" in history[back[0]]["contributors"], history
    for hospital in HOSPITALS:
        ledger = Ledger(site.data_dir(hospital) / hospital / "ledger.sqlite")
        trained = [r for _, kind, r, _ in ledger.events(study_id=submitted["study"])
                   if kind == "train"]  # fmt: skip
        assert len(trained) == len(set(trained)), (hospital, trained)
        assert hospital == "hospital-c" or sorted(trained) == list(range(1, 9)), trained


# The scientist's first session is killed once this round is complete, as the next begins.
KILL_AFTER = 5


def _driver(site: Site, study: str) -> subprocess.Popen:
    """`run` on the scientist's host: a fresh session that resumes the study from disk."""
    driver = subprocess.Popen(
        site.net.command("scientist", [PYTHON, "-m", "tests.multihost_scientist", "run",
                         str(site.root / "scientist"), study,
                         *map(str, site.invitations.values())]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    site.net.processes.append(driver)  # torn down with the network if the test fails
    return driver


def _follow(site: Site, driver: subprocess.Popen) -> list[dict]:
    """Read the driver's lines. Cut hospital-c's cable after round 1, plug it back once a
    round went on without it; SIGKILL the driver once round KILL_AFTER is reported, as the
    next call goes out (the first session only). Returns the lines read."""
    entries: list[dict] = []
    assert driver.stdout is not None
    for line in driver.stdout:
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        entries.append(entry)
        if entry.get("round") == 1 and entry.get("contributors") and not site.cut:
            site.net.link("hospital-c", up=False)
            site.cut = True
        elif site.cut and not site.restored and "hospital-c" in (entry.get("dropped") or {}):
            site.net.link("hospital-c", up=True)
            site.restored = True
        elif entry.get("round") == KILL_AFTER and not site.killed:
            if not site.restored:  # the drop must still be seen, in the resumed session
                site.net.link("hospital-c", up=True)
            site.killed = True
            driver.kill()
            break
    driver.wait(timeout=60)
    if not entries:
        raise AssertionError(f"the scientist printed nothing: {driver.stderr.read()}")
    return entries


def _check_round_one(site: Site, study: str) -> None:
    from scientist import DPConfig, StudyConfig
    from scientist.study import initial_weights

    raw = dict(STUDY)
    dp = DPConfig(**raw.pop("dp"))
    start = initial_weights(StudyConfig(**raw, dp=dp))
    saved = dict(np.load(site.root / "scientist" / "round1.npz"))
    releases = []
    for hospital in HOSPITALS:
        ledger = Ledger(site.data_dir(hospital) / hospital / "ledger.sqlite")
        releases.append(stored_loads(ledger.result(study, "train", 1)))
    total = sum(r["n"] for r in releases)
    for key, value in start.items():
        plain = value + sum(r["n"] * (r["weights"][key] - value) for r in releases) / total
        assert np.abs(saved[key] - plain).max() < 1e-5, key


def test_plain_http_and_another_hosts_loopback_reach_no_hospital(site: Site) -> None:
    address = site.net.hosts["hospital-a"].address
    plain = site.probe(
        "import urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen('http://{address}:{PORT}/api/v2/metadata', timeout=10)\n"
        "    print('ANSWERED')\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    assert plain.startswith("refused"), plain
    loopback = site.probe(
        "import socket\n"
        "s = socket.socket(); s.settimeout(5)\n"
        f"print('open' if s.connect_ex(('127.0.0.1', {PORT})) == 0 else 'closed')\n"
    )
    assert loopback == "closed"


def test_a_certificate_the_invitation_did_not_pin_is_refused(site: Site, tmp_path: Path) -> None:
    forged = json.loads(site.invitations["hospital-a"].read_text())
    other = json.loads(site.invitations["hospital-b"].read_text())
    forged["certificate_pem"], forged["fingerprint"] = (
        other["certificate_pem"],
        other["fingerprint"],
    )
    path = tmp_path / "hospital-a.invite.json"
    path.write_text(json.dumps(forged))
    path.chmod(0o600)
    reply = site.scientist("connect", invitations=[path])[0]
    assert "hospital-a" in reply.get("error", ""), reply
