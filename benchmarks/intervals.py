"""Coverage of the metrics' 95% intervals (`scientist.intervals`) over repeated noise draws.

    .venv/bin/python benchmarks/intervals.py [--trials 200]

For fixed noiseless counts (EHR histograms at several scales and noise levels, and a
9-class PathMNIST release), draws the hospitals' noise again and again, builds each
interval from the noised counts and the published noise sd alone, and prints how often it
contains the metric of the noiseless counts (ideal: 0.95). One JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# The settings are the coverage test's (tests/ is not an installed package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scientist.intervals import binary_intervals, multiclass_intervals
from scientist.metrics import binary_metrics, multiclass_metrics
from tests.unit.test_intervals import BINS, ehr_counts, pathmnist_counts

EHR_SETTINGS = [
    # positives, negatives, noise sd per summed cell, separation
    (300, 2700, 21.0, 0.5),
    (300, 2700, 21.0, 0.2),
    (1000, 9000, 10.0, 0.5),
    (100, 900, 30.0, 0.3),
]


def ehr(trials: int, rng: np.random.Generator) -> None:
    edges = np.linspace(0, 1, BINS + 1)
    for positives, negatives, sd, shift in EHR_SETTINGS:
        hist = ehr_counts(positives, negatives, shift)
        truth = binary_metrics(hist, edges=edges)
        hits: dict[str, int] = {}
        started = time.perf_counter()
        for _ in range(trials):
            noised = hist + rng.normal(0, sd, hist.shape)
            for key, (low, high) in binary_intervals(noised, sd, edges=edges).items():
                hits[key] = hits.get(key, 0) + int(low <= truth[key] <= high)
        print(
            json.dumps(
                {
                    "benchmark": "intervals",
                    "task": "ehr",
                    "positives": positives,
                    "negatives": negatives,
                    "noise_sd": sd,
                    "auroc": round(truth["auroc"], 3),
                    "coverage": {k: round(v / trials, 3) for k, v in hits.items()},
                    "seconds_per_interval": round((time.perf_counter() - started) / trials, 3),
                }
            )
        )


def pathmnist(trials: int, rng: np.random.Generator, per_class: float, accuracy: float) -> None:
    confusion, ovr = pathmnist_counts(per_class=per_class, accuracy=accuracy)
    truth = multiclass_metrics(confusion, ovr)
    sd = 15.0
    hits: dict[str, int] = {}
    started = time.perf_counter()
    for _ in range(trials):
        intervals = multiclass_intervals(
            confusion + rng.normal(0, sd, confusion.shape), ovr + rng.normal(0, sd, ovr.shape), sd
        )
        for key, (low, high) in intervals.items():
            hits[key] = hits.get(key, 0) + int(low <= truth[key] <= high)
    print(
        json.dumps(
            {
                "benchmark": "intervals",
                "task": "pathmnist",
                "noise_sd": sd,
                "accuracy": round(truth["accuracy"], 3),
                "coverage": {k: round(v / trials, 3) for k, v in hits.items()},
                "seconds_per_interval": round((time.perf_counter() - started) / trials, 3),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    ehr(args.trials, rng)
    pathmnist(args.trials, rng, per_class=1100.0, accuracy=0.6)
    pathmnist(args.trials, rng, per_class=280.0, accuracy=0.72)  # the demo's scale


if __name__ == "__main__":
    main()
