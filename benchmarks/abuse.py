"""What a guest and a scientist can cost a datasite, and whether a study survives it.

`python benchmarks/abuse.py [--seconds 10] [--threads 4] [--base-port 8291]`

One hospital (small scale) on loopback. For `--seconds` each, `--threads` clients send as
fast as the datasite answers: a guest's refused call (`request.submit`), then a scientist's
call to a path scientists may not call (`user.get_all`), then a scientist's allowed cheap
call (`user.get_current_user`); for each, the requests per second answered, how many were
refused for rate, and the datasite process's CPU seconds per second of flood (what the
flood costs it). Then 400 MB bodies, with a length and chunked, and a guest's call carrying
1,000,000 integers (104 MB) and 200,000 (21 MB, under the size limit), sent as another user
of the machine (`nobody`, as root; the hospital's own user may send the operator's larger
uploads): the refusal latency and the datasite's resident memory before, at its highest,
and after. Last, a one-round EHR study runs while a guest flood of `GUEST_RATE` calls a
second goes on (from the same address as the scientist, so below that address's budget),
and must complete. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests
import round_overhead

PYTHON = "/usr/bin/python3"
MB = 1_000_000
SERVER_IDS: dict[str, str] = {}
GUEST_RATE = 40.0  # requests a second of the flood that runs alongside the study
SENDER = r"""
import http.client, json, sys, time
method, path, size, chunked, source, port = sys.argv[1:7]
size, chunked = int(size), chunked == "1"
data = open(source, "rb").read() if source != "-" else None
size = len(data) if data is not None else size
block = b"\0" * (1 << 20)
connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=300)
started = time.monotonic()
status = -1
try:
    connection.putrequest(method, path)
    if chunked:
        connection.putheader("Transfer-Encoding", "chunked")
    else:
        connection.putheader("Content-Length", str(size))
    connection.endheaders()
    sent = 0
    while sent < size:
        end = min(size, sent + len(block))
        piece = data[sent:end] if data is not None else block[: end - sent]
        connection.send(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
        sent += len(piece)
    if chunked:
        connection.send(b"0\r\n\r\n")
    status = connection.getresponse().status
except (OSError, http.client.HTTPException):
    pass
print(json.dumps({"status": status, "seconds": time.monotonic() - started}))
"""


def server_process(port: int) -> psutil.Process:
    (pid,) = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
    }
    return psutil.Process(pid)


def signed_call(url: str, path: str, kwargs: dict[str, Any], key: Any = None) -> bytes:
    from syft.client.api import SyftAPICall
    from syft.serde.serialize import _serialize
    from syft.server.credentials import SyftSigningKey
    from syft.types.uid import UID

    if url not in SERVER_IDS:  # once: a flood spends the address's budget /metadata draws on
        SERVER_IDS[url] = requests.get(url + "/api/v2/metadata", timeout=30).json()["id"]
    server = SERVER_IDS[url]
    call = SyftAPICall(server_uid=UID(server), path=path, args=[], kwargs=kwargs)
    return _serialize(call.sign(key or SyftSigningKey.generate()), to_bytes=True)


def int_list_call(url: str, n: int) -> bytes:
    """A guest's call carrying n integers (the int's bytes reused while serializing)."""
    import syft.serde.serialize as ser

    original, cached = ser._serialize, {}

    def fast(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if type(obj) is not int:
            return original(obj, *args, **kwargs)
        name = (obj, args, tuple(sorted(kwargs.items())))
        if name not in cached:
            cached[name] = original(obj, *args, **kwargs)
        return cached[name]

    ser._serialize = fast
    try:
        return signed_call(url, "request.submit", {"uids": [7] * n})
    finally:
        ser._serialize = original


def flood(
    url: str,
    body: bytes,
    seconds: float,
    threads: int,
    stop: threading.Event | None = None,
    rate: float = 0.0,
):
    """Post `body` to api_call from `threads` clients for `seconds` (or until `stop`), each
    at most `rate` / `threads` a second if `rate`."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                try:
                    answer = session.post(url + "/api/v2/api_call", data=body, timeout=30)
                    code = str(answer.status_code)
                except requests.RequestException:
                    code = "error"
                with lock:
                    counts[code] = counts.get(code, 0) + 1
                if rate:
                    time.sleep(threads / rate)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers, counts


def measured_flood(url: str, process: psutil.Process, body: bytes, args: argparse.Namespace):
    cpu = sum(process.cpu_times()[:2])
    started = time.monotonic()
    workers, counts = flood(url, body, args.seconds, args.threads)
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    used = sum(process.cpu_times()[:2]) - cpu
    total = sum(counts.values())
    return {
        "requests_per_s": round(total / elapsed, 1),
        "answered_per_s": round(counts.get("200", 0) / elapsed, 1),
        "rate_refused": counts.get("429", 0),
        "statuses": counts,
        "server_cpu_s_per_s": round(used / elapsed, 3),
    }


def as_nobody(args: list[str]) -> dict[str, Any] | None:
    if os.geteuid() != 0 or shutil.which("runuser") is None or not Path(PYTHON).exists():
        return None
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", PYTHON, "-c", SENDER, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}


def big_body(process: psutil.Process, port: int, how: list[str]) -> dict[str, Any]:
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    reply = as_nobody([*how, str(port)])
    time.sleep(1.0)
    done.set()
    watcher.join()
    after = process.memory_info().rss
    if reply is None:
        return {"skipped": "needs root to send as another user"}
    return {
        **reply,
        "rss_mb_before": before // MB,
        "rss_mb_peak": peak[0] // MB,
        "rss_mb_after": after // MB,
    }


def study_alongside_flood(data_dir: Path, url: str, guest_body: bytes, threads: int) -> dict:
    from datasites.governance.operator import Operator
    from scientist import DPConfig, Federation, StudyConfig

    stop = threading.Event()
    # Bounded: the flood and the scientist share 127.0.0.1 here, and the flood at full speed
    # would spend the address's budget the scientist's logins and metadata also draw on.
    workers, counts = flood(url, guest_body, 3600, threads, stop, rate=GUEST_RATE)
    started = time.monotonic()
    try:
        fed = Federation.connect(data_dir, workdir=data_dir / "abuse-studies")
        config = StudyConfig(
            task="ehr",
            aggregation="plain",
            rounds=1,
            local_epochs=1,
            average_decay=0.0,
            model="ehr_logistic",
            batch_size=128,
            lr=0.5,
            dp=DPConfig(epsilon=1.0, delta=1e-5, max_grad_norm=1.0),
        )
        study = fed.submit(config)
        for hospital, request_id in study.requests.items():
            Operator.open(data_dir, hospital).approve(request_id)
        result = study.run()
        completed = result is not None
        error = ""
    except Exception as e:  # the figure to report is whether it completed
        completed, error = False, f"{type(e).__name__}: {e}"[:300]
    finally:
        stop.set()
        for w in workers:
            w.join()
    elapsed = time.monotonic() - started
    return {
        "completed": completed,
        "seconds": round(elapsed, 1),
        "flood_requests": sum(counts.values()),
        "flood_statuses": counts,
        **({"error": error} if error else {}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--base-port", type=int, default=8291)
    args = p.parse_args()
    launch_args = argparse.Namespace(hospitals=1, base_port=args.base_port, scale="small")
    url = f"http://127.0.0.1:{args.base_port}"
    out: dict[str, Any] = {"threads": args.threads, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        Path(tmp).chmod(0o755)
        data_dir = Path(tmp) / "datasites"
        proc = round_overhead.launch(launch_args, data_dir)
        try:
            from datasites.client.connection import login_client
            from datasites.contract.pinned_tls import pinned_session

            process = server_process(args.base_port)
            out["rss_mb_idle"] = process.memory_info().rss // MB
            creds = json.loads((data_dir / "credentials.json").read_text())["hospitals"][0]
            scientist = login_client(
                url,
                pinned_session(None, None),
                creds["scientist"]["email"],
                creds["scientist"]["password"],
            )
            guest = signed_call(url, "request.submit", {})
            out["guest_refused"] = measured_flood(url, process, guest, args)
            refused = signed_call(url, "user.get_all", {}, scientist.credentials)
            out["scientist_refused"] = measured_flood(url, process, refused, args)
            allowed = signed_call(url, "user.get_current_user", {}, scientist.credentials)
            out["scientist_allowed"] = measured_flood(url, process, allowed, args)

            bodies = {}
            for name, how in {
                "400mb_length": ["POST", "/api/v2/api_call", str(400 * MB), "0", "-"],
                "400mb_chunked": ["POST", "/api/v2/api_call", str(400 * MB), "1", "-"],
                "400mb_stream_put": ["PUT", "/api/v2/stream/x/eA==/", str(400 * MB), "0", "-"],
            }.items():
                bodies[name] = big_body(process, args.base_port, how)
            for n in (1_000_000, 200_000):
                path = Path(tmp) / f"list{n}.bin"
                path.write_bytes(int_list_call(url, n))
                path.chmod(0o644)
                how = ["POST", "/api/v2/api_call", "0", "0", str(path)]
                bodies[f"guest_list_{n}"] = {
                    "bytes": path.stat().st_size,
                    **big_body(process, args.base_port, how),
                }
            out["bodies"] = bodies
            out["rss_mb_end"] = process.memory_info().rss // MB
            out["study_alongside_guest_flood"] = study_alongside_flood(
                data_dir, url, guest, args.threads
            )
        finally:
            proc.send_signal(2)
            proc.wait(120)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
