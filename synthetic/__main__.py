"""Write synthetic data files: `python -m synthetic ehr|pathmnist --out PATH [--rows N] [--seed S]`.

`ehr` writes a CSV in the UCI Diabetes 130-US format ('?' for missing) with the identifier
columns a real extract carries (drop them with --no-identifiers); `pathmnist` writes a
MedMNIST-format npz whose train split has --rows images (val and test in the real ratios).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthetic.ehr import generate_ehr, write_ehr_csv
from synthetic.pathology import generate_pathmnist, save_pathmnist_npz

DEFAULT_ROWS = {"ehr": 4_000, "pathmnist": 2_000}
# Real PathMNIST: 89,996 train, 10,004 val, 7,180 test.
SPLIT_RATIOS = {"train": 1.0, "val": 10_004 / 89_996, "test": 7_180 / 89_996}


def write_pathmnist(out: Path, rows: int, seed: int) -> str:
    splits = {
        name: generate_pathmnist(max(1, round(rows * ratio)), seed=seed * 10 + i)
        for i, (name, ratio) in enumerate(SPLIT_RATIOS.items())
    }
    save_pathmnist_npz(out, splits)
    return ", ".join(f"{len(labels):,} {name}" for name, (_, labels) in splits.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthetic", description=__doc__)
    parser.add_argument("kind", choices=("ehr", "pathmnist"))
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--rows", type=int, help="encounters (ehr) or train images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-identifiers", action="store_true", help="ehr: only the 50 columns")
    args = parser.parse_args(argv)
    rows = args.rows if args.rows is not None else DEFAULT_ROWS[args.kind]
    if rows < 1:
        print(f"error: --rows must be at least 1, found {rows}.", file=sys.stderr)
        return 2
    if not args.out.parent.exists():
        print(f"error: folder {args.out.parent} does not exist; create it first.", file=sys.stderr)
        return 2
    if args.kind == "ehr":
        write_ehr_csv(
            generate_ehr(rows, seed=args.seed, identifiers=not args.no_identifiers), args.out
        )
        what = f"{rows:,} encounters"
    else:
        what = write_pathmnist(args.out, rows, args.seed)
    print(f"wrote {args.out} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
