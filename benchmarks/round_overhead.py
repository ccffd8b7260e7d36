"""What the federation costs per round, against the same training without it.

`python benchmarks/round_overhead.py [--hospitals 5] [--task pathmnist] [--local-epochs 1]`

Federated: the real stack. launch.py starts the datasites, the scientist submits a study,
every operator approves, and `Study.run` trains; the wall time of each steady-state round
(one call to every hospital at once, FedAvg, checkpoint) is taken from the run's own round
callbacks. Sequential: in this one process, without syft, each hospital's same training
set is encoded and trained for one round with the same noise multiplier (read from the
hospital's ledger) and the same initial weights, one hospital after the other, using all
cores. Prints one JSON line; the issue's target is federated / sequential <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def launch(args: argparse.Namespace, data_dir: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        "--hospitals",
        str(args.hospitals),
        "--base-port",
        str(args.base_port),
        "--data-dir",
        str(data_dir),
        "--scale",
        args.scale,
        "--reset",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready:"):
            return proc
    raise RuntimeError(f"launch.py exited with {proc.wait()} before it was ready")


def federated_rounds(args: argparse.Namespace, data_dir: Path) -> tuple[Any, list[float]]:
    from datasites.governance.operator import Operator
    from scientist import DPConfig, Federation, StudyConfig

    fed = Federation.connect(data_dir, workdir=data_dir / "bench-studies")
    config = StudyConfig(
        task=args.task,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.rounds,
        aggregation=args.aggregation,
        dp=DPConfig(epsilon=args.epsilon),
    )
    study = fed.submit(config)
    for hospital, request_id in study.requests.items():
        Operator.open(data_dir, hospital).approve(request_id)
    stamps: list[float] = [time.perf_counter()]
    study.run(progress=False, on_round=lambda entry: stamps.append(time.perf_counter()))
    calls = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # Call 1 also calibrates and warms up, the last only evaluates: the rest are rounds.
    return study, calls[1:-1]


def sequential_round(args: argparse.Namespace, data_dir: Path, study: Any) -> float:
    import torch

    from datasites.contract.encoding import encode_ehr, encode_images
    from datasites.contract.zoo import build_model, load_weights
    from datasites.privacy.dp import TrainSpec, dp_train
    from datasites.privacy.ledger import Ledger
    from datasites.server.assets import ehr_assets, pathmnist_assets
    from datasites.server.sources import read_ehr, read_pathmnist
    from datasites.site.identity import Identity
    from datasites.site.paths import HospitalConfig
    from scientist.study import initial_weights

    torch.set_num_threads(args.threads)
    weights = initial_weights(study.config)
    total = 0.0
    for hospital in sorted(study.requests):
        config = HospitalConfig(name=hospital, port=1024, data_dir=data_dir)
        if args.task == "ehr":
            key = Identity.load_or_create(config.identity_path, hospital).split_key_bytes
            train = ehr_assets(read_ehr(config), hospital, key)[0].private
            features, labels = encode_ehr(train)
        else:
            train = pathmnist_assets(read_pathmnist(config), hospital)[0].private
            features, labels = encode_images(train["images"], train["labels"])
        record = Ledger(config.root / "ledger.sqlite").study(study.id)
        spec = TrainSpec(
            batch_size=record.batch_size,
            lr=record.lr,
            local_epochs=record.local_epochs,
            max_grad_norm=record.max_grad_norm,
            noise_multiplier=record.noise_multiplier,
        )
        model = build_model(study.config.model, **study.config.model_kwargs)
        load_weights(model, weights)
        started = time.perf_counter()
        dp_train(model, features, labels, spec, task=args.task)
        total += time.perf_counter() - started
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hospitals", type=int, default=5)
    p.add_argument("--task", choices=("ehr", "pathmnist"), default="pathmnist")
    p.add_argument("--scale", choices=("small", "full"), default="small")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the sequential run (1, as in each datasite)",
    )
    p.add_argument("--base-port", type=int, default=8181)
    p.add_argument(
        "--aggregation",
        choices=("plain", "secure"),
        default="plain",
        help="plain (default: the figures in benchmarks/README.md) or secure",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="round-overhead-") as tmp:
        data_dir = Path(tmp) / "datasites"
        proc = launch(args, data_dir)
        try:
            study, rounds = federated_rounds(args, data_dir)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
        sequential = sequential_round(args, data_dir, study)
    federated = statistics.median(rounds)
    print(
        json.dumps(
            {
                "benchmark": "round_overhead",
                "task": args.task,
                "scale": args.scale,
                "hospitals": args.hospitals,
                "local_epochs": args.local_epochs,
                "aggregation": args.aggregation,
                "federated_round_s": round(federated, 2),
                "federated_rounds_s": [round(r, 2) for r in rounds],
                "sequential_round_s": round(sequential, 2),
                "ratio": round(federated / sequential, 3),
                "target": 1.10,
                "met": federated / sequential <= 1.10,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
