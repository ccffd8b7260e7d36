"""The data scientist of the multi-host test, run on its own host (network namespace).

`python -m tests.multihost_scientist ACTION WORKDIR [ARGS...]`, one process per step so the
test (outside every namespace) can act between steps, e.g. approve as each hospital's
operator on that hospital's host. Each action prints JSON lines on stdout:

- `connect INVITE...`: {"hospitals": [...]} or {"error": "..."};
- `submit CONFIG_JSON INVITE...`: {"study": id, "requests": {hospital: request id}};
- `run STUDY INVITE...`: one {"round": r, "contributors": [...], "dropped": {...}} per
  completed call, then {"done": true, "history": [...]}; the round-1 global model is saved
  to WORKDIR/round1.npz for the test to check against the hospitals' records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from datasites.contract.pinned_tls import NetworkPolicy

# Short enough that a cut link costs a round seconds, not minutes; long enough for a round.
NETWORK = NetworkPolicy(connect_timeout=5.0, read_timeout=20.0, retries=1, backoff=0.2)


def say(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, default=str), flush=True)


def connect(workdir: Path, invitations: list[str]) -> Any:
    from scientist import Federation

    return Federation.connect(invitations, workdir=workdir, network=NETWORK, timeout=10.0)


def run(study_id: str, workdir: Path, invitations: list[str]) -> None:
    from scientist.checkpoint import Checkpoint

    fed = connect(workdir, invitations)
    study = fed.resume(study_id)

    def on_round(entry: dict[str, Any]) -> None:
        # The first call evaluates round 0 and trains round 1: its checkpoint holds the
        # global model of round 1.
        if not (workdir / "round1.npz").exists():
            weights = Checkpoint.load(study.folder).weights
            np.savez(workdir / "round1.npz", **weights)
        keys = ("round", "contributors", "dropped", "n", "hospitals")
        say({k: entry[k] for k in keys if k in entry})

    result = study.run(progress=False, on_round=on_round)
    say({"done": True, "history": result.rounds})


def main(argv: list[str]) -> int:
    action, workdir = argv[0], Path(argv[1])
    workdir.mkdir(parents=True, exist_ok=True)
    from scientist import DPConfig, StudyConfig
    from scientist.connect import FederationError

    try:
        if action == "connect":
            say({"hospitals": connect(workdir, argv[2:]).hospitals})
        elif action == "submit":
            raw = json.loads(argv[2])
            dp = DPConfig(**raw.pop("dp", {}))
            study = connect(workdir, argv[3:]).submit(StudyConfig(**raw, dp=dp))
            say({"study": study.id, "requests": study.requests})
        elif action == "run":
            run(argv[2], workdir, argv[3:])
        else:
            raise SystemExit(f"unknown action {action!r}")
    except FederationError as error:
        say({"error": str(error)})
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
