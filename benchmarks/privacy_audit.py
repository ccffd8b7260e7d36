"""The canary audit of the suite (`tests/unit/test_privacy_audit.py`) at a larger scale.

`python benchmarks/privacy_audit.py [--runs 4000] [--sigmas 0.5 1 2 4]`

For each noise multiplier: one worst-case DP-SGD step of the hospitals' `dp_train`, with and
without a canary whose clipped gradient points along one weight, `--runs` times each; the
Clopper-Pearson lower bound on epsilon (95%) against the accountant's figure for that step.
Prints one JSON line per sigma; `met` is lower bound <= claimed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The audit's statistics live with its test (tests/ is not an installed package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasites.privacy.accounting import DpEvent, epsilon  # noqa: E402
from tests.unit.test_privacy_audit import DELTA, empirical_epsilon  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4000, help="steps with and without")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args(argv)
    for sigma in args.sigmas:
        started = time.perf_counter()
        found = empirical_epsilon(sigma, runs=args.runs)
        claimed = epsilon([DpEvent(noise_multiplier=sigma, sample_rate=1.0, steps=1)], DELTA)
        line = {
            "benchmark": "privacy_audit",
            "sigma": sigma,
            "runs": args.runs,
            "delta": DELTA,
            "empirical_epsilon_lower_bound": round(found, 3),
            "claimed_epsilon": round(claimed, 3),
            "met": found <= claimed,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
