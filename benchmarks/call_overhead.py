"""What one study call costs in syft alone: a recorded round asked again, timed.

`python benchmarks/call_overhead.py [--hospitals 3] [--repeats 30] [--width 16] [--task ehr]`

A hospital answers a repeated round from its record (no training, no charge), so timing
that call measures everything a call costs besides the hospital's own work: the
scientist's upload of the weights, syft's policies, reading its stored objects back,
storing and returning the result. Attach `py-spy record -p <datasite pid>` while it
repeats to see where a datasite spends it. Also times the scientist's fetch of one
datasite's API (what each login and each new study's first call does). Prints one JSON line
(seconds).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import round_overhead


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hospitals", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--task", choices=("pathmnist", "ehr"), default="pathmnist")
    p.add_argument("--base-port", type=int, default=8181)
    args = p.parse_args()
    from datasites.governance.operator import Operator
    from scientist import DPConfig, Federation, StudyConfig
    from scientist.study import Study

    launch_args = argparse.Namespace(
        hospitals=args.hospitals, base_port=args.base_port, scale="small"
    )
    with tempfile.TemporaryDirectory(prefix="call-overhead-") as tmp:
        data_dir = Path(tmp) / "datasites"
        proc = round_overhead.launch(launch_args, data_dir)
        try:
            fed = Federation.connect(data_dir, workdir=Path(tmp) / "studies")
            shape: dict[str, Any] = (
                {"model_kwargs": {"width": args.width}, "local_steps": 5, "batch_size": 64}
                if args.task == "pathmnist"
                else {"local_epochs": 1, "batch_size": 128}
            )
            config = StudyConfig(
                task=args.task, rounds=1, aggregation="plain", dp=DPConfig(epsilon=3.0), **shape
            )
            study = fed.submit(config)
            for hospital, request_id in study.requests.items():
                Operator.open(data_dir, hospital).approve(request_id)
            seen: list[tuple[str, Any, dict]] = []
            original = Study._call_one

            def recording(self: Study, hospital: str, client: Any, payload: dict) -> dict:
                seen.append((hospital, client, payload))
                return original(self, hospital, client, payload)

            Study._call_one = recording  # type: ignore[method-assign]
            try:
                study.run(progress=False)
            finally:
                Study._call_one = original  # type: ignore[method-assign]
            hospital, client, payload = next(s for s in seen if "round" in s[2])
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                study._call_one(hospital, client, payload)
                times.append(time.perf_counter() - start)
            fetches = []
            for _ in range(max(3, args.repeats // 3)):
                start = time.perf_counter()
                client._fetch_api(client.credentials)
                fetches.append(time.perf_counter() - start)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
    out = {
        "benchmark": "call_overhead",
        "hospitals": args.hospitals,
        "task": args.task,
        "width": args.width,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "api_fetch_median_s": round(statistics.median(fetches), 3),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
