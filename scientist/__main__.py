"""The scientist's command line: `python -m scientist run --federation D --task ehr ...`.

Submits a study to every hospital, waits for the operators' decisions, runs it with a
progress bar and a line per round as it completes, and writes history.json, model.pt and
curves.png.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from datasites.contract.tasks import TASKS
from scientist.config import DPConfig, StudyConfig
from scientist.connect import FederationError
from scientist.intervals import spans_chance
from scientist.recipes import recipe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scientist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="submit and run a federated DP study")
    run.add_argument("--federation", required=True, help="data dir or federation.json")
    run.add_argument("--task", required=True, choices=TASKS)
    # Every training setting defaults to the task's validated recipe (scientist.recipes).
    run.add_argument("--model", help="zoo model (default: the task's recipe)")
    run.add_argument("--rounds", type=int)
    run.add_argument("--epsilon", type=float, help="default: the recipe's (EHR 1, PathMNIST 3)")
    run.add_argument("--delta", type=float, default=1e-5)
    run.add_argument("--max-grad-norm", type=float, default=1.0)
    run.add_argument("--local-epochs", type=int)
    run.add_argument("--local-steps", type=int, help="steps per round, not epochs")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--lr", type=float)
    run.add_argument("--momentum", type=float, help="hospitals' local momentum")
    run.add_argument("--server-lr", type=float, help="FedAvgM server step")
    run.add_argument("--server-momentum", type=float, help="FedAvgM beta")
    run.add_argument("--eval-every", type=int, help="default: before training and at the end")
    run.add_argument(
        "--clip-quantile", type=float, help="adaptive clipping at this gradient-norm quantile"
    )
    run.add_argument(
        "--average-decay",
        type=float,
        help="final model: moving average of the global weights",
    )
    run.add_argument(
        "--aggregation",
        choices=("secure", "plain"),
        default="secure",
        help="secure: the scientist reads only sums over the hospitals (default)",
    )
    run.add_argument("--threshold", type=int, help="secure: least hospitals per sum (over 2/3)")
    run.add_argument("--out", type=Path, help="output folder (default: <workdir>/<study>/report)")
    run.add_argument(
        "--wait-approval",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the hospitals' decisions (default 600)",
    )
    return parser


def metric_text(key: str, value: float, interval: list[float] | None) -> str:
    """`auroc 0.754 (0.70-0.80)`, with its 95% interval from the noise when there is one,
    and said in words when that interval reaches chance."""
    if not interval or any(math.isnan(v) for v in interval):
        return f"{key} {value:.3f}"
    text = f"{key} {value:.3f} ({interval[0]:.2f}-{interval[1]:.2f})"
    return text + (" no better than chance within the noise" if spans_chance(key, interval) else "")


def round_line(entry: dict[str, Any]) -> str:
    """One line per round: loss, headline metrics with their 95% intervals, epsilon spent."""
    parts = [f"round {entry['round']:>3}"]
    if entry.get("n") is not None:
        parts.append(f"n {entry['n']:>6,}")
    if entry.get("loss") is not None:
        parts.append(f"test loss {entry['loss']:.4f}")
    metrics = entry.get("metrics") or {}
    for key in ("auroc", "auprc", "accuracy", "macro_f1"):
        if metrics.get(key) is not None:
            parts.append(metric_text(key, metrics[key], (metrics.get("intervals") or {}).get(key)))
    noise = (entry.get("metrics") or {}).get("count_noise_std")
    if noise is not None:
        parts.append(f"(noise sd {noise:.0f} per count)")
    if entry.get("epsilon") is not None:
        parts.append(f"epsilon {entry['epsilon']:.3f}")
    if entry.get("dropped"):
        parts.append("dropped: " + ", ".join(sorted(entry["dropped"])))
    return "  ".join(parts)


def print_round(entry: dict[str, Any]) -> None:
    """Print a round's line as soon as it completes, above the progress bar: through
    tqdm, which lifts the bar off the terminal line and redraws it after, since a plain
    print would land on the bar's line and be overwritten by its next update. Flushed so a
    pipe or a log file sees each round as it lands, not only when the study ends."""
    from tqdm.auto import tqdm

    tqdm.write(round_line(entry), file=sys.stdout)
    sys.stdout.flush()


def print_statuses(table: Any) -> None:
    for row in table.itertuples():
        reason = f" ({row.reason})" if row.reason else ""
        print(f"  {row.hospital}: {row.status}{reason}")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The study `run` submits: every flag left out takes the task's recipe."""
    return StudyConfig(
        task=args.task,
        model=args.model,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        local_steps=args.local_steps,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        average_decay=args.average_decay,
        eval_every=args.eval_every,
        clip_quantile=args.clip_quantile,
        aggregation=args.aggregation,
        threshold=args.threshold,
        dp=DPConfig(
            epsilon=recipe(args.task)["epsilon"] if args.epsilon is None else args.epsilon,
            delta=args.delta,
            max_grad_norm=args.max_grad_norm,
        ),
    )


def run(args: argparse.Namespace) -> int:
    from scientist.federation import Federation

    config = config_from_args(args)
    fed = Federation.connect(args.federation)
    study = fed.submit(config)
    print(f"submitted {study.id} to {', '.join(fed.hospitals)}; waiting for approval ...")
    print_statuses(study.wait_for_approval(args.wait_approval))
    result = study.run(on_round=print_round)
    out = result.save(args.out or study.folder / "report")
    print(f"final: {round_line({'round': config.rounds, 'metrics': result.metrics})}")
    print(f"wrote {out}/history.json, model.pt, curves.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (FederationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
