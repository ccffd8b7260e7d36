"""Derive the frozen EHR reference (`ehr_reference.json`) from the public population.

Kept apart from `ehr_reference`, which only reads the file: the encoder loads the reference,
and deriving it runs the encoder, so one module doing both would import itself in a circle.
Run it after changing the encoder or the schema: `python -m datasites.contract.derive_reference`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from datasites.contract.ehr_reference import (
    DECIMALS,
    REFERENCE_FILE,
    REFERENCE_ROWS,
    REFERENCE_SEED,
    SCALE_FLOOR,
)
from datasites.contract.encoding import FEATURE_NAMES, encode_features, usable_rows
from datasites.contract.files import atomic_write
from synthetic.ehr import generate_ehr


def derive(rows: int = REFERENCE_ROWS, seed: int = REFERENCE_SEED) -> dict[str, dict[str, float]]:
    """Feature name -> {"center", "scale"} over the usable rows of the reference population."""
    frame = generate_ehr(rows, seed, identifiers=False)
    features = encode_features(frame.loc[usable_rows(frame).to_numpy()]).astype(np.float64)
    center = np.round(features.mean(axis=0), DECIMALS)
    scale = np.round(np.maximum(features.std(axis=0), SCALE_FLOOR), DECIMALS)
    return {
        name: {"center": float(c), "scale": float(s)}
        for name, c, s in zip(FEATURE_NAMES, center, scale, strict=True)
    }


def write(path: Path = REFERENCE_FILE) -> None:
    """Derive the reference and write it, with how it was made, as readable JSON."""
    header = {
        "about": "Centre and scale of each EHR feature in the public reference population "
        "(synthetic.ehr.generate_ehr with the default case mix, drawn from the UCI Diabetes "
        "130-US value counts). Written by python -m datasites.contract.derive_reference.",
        "rows": REFERENCE_ROWS,
        "seed": REFERENCE_SEED,
        "scale_floor": SCALE_FLOOR,
    }
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    features = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in derive().items()]
    text = "{\n" + "\n".join(lines) + '\n "features": {\n' + ",\n".join(features) + "\n }\n}\n"
    atomic_write(path, lambda handle: handle.write(text.encode()), mode=0o644)


if __name__ == "__main__":
    write()
    print(f"wrote {REFERENCE_FILE}", file=sys.stderr)
