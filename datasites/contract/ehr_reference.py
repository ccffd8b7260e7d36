"""The public reference population that the EHR encoder standardizes features against.

Why standardize: DP-SGD has a small budget of noisy steps, and each step costs privacy.
Raw EHR features are badly conditioned for it. About 20 medication columns are almost always
"No", so they act as copies of the bias. Every row has a norm of about 6.3, and the one-hot
blocks are correlated with each other. Centring and scaling each feature closed most of the
gap between the DP model and the noiseless one in the replica of the full-scale federation
(benchmarks/README.md, "Standardized EHR features").

Why a reference population and not each hospital's own rows: a mean or a standard deviation
computed from a hospital's rows is a release that no DP mechanism accounts for. Hospitals
that scaled their inputs differently would also feed one global model different inputs. The
reference is `synthetic.ehr.generate_ehr` with its default case mix. That generator draws every
column from the public value counts of the UCI Diabetes 130-US table (`synthetic.ehr_schema`),
which is published knowledge about the population. The statistics are frozen in
`ehr_reference.json`, next to this file, for two reasons: encoding must not depend on running
the generator, and a change to the generator must not quietly shift every hospital's inputs
in the middle of a study. A test checks that the file is what `derive` computes.

Regenerate the file after changing the encoder or the schema:
`python -m datasites.contract.derive_reference`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_FILE = Path(__file__).with_name("ehr_reference.json")
REFERENCE_ROWS = 100_000
REFERENCE_SEED = 130  # any fixed seed: the population, not the draw, is what matters
# Rare categories have a tiny standard deviation. Dividing by it would turn a rare one-hot
# into a huge input, which would dominate every clipped gradient, so scales are floored.
SCALE_FLOOR = 0.1
DECIMALS = 4


@dataclass(frozen=True)
class Reference:
    """Per-feature centre and scale, in the encoder's feature order."""

    center: np.ndarray
    scale: np.ndarray

    def standardize(self, features: np.ndarray) -> np.ndarray:
        """(features - center) / scale, as float32, for rows in the encoder's feature order."""
        return ((features - self.center) / self.scale).astype(np.float32, copy=False)


def load(names: Sequence[str], path: Path = REFERENCE_FILE) -> Reference:
    """The frozen reference for the encoder's `names`, checked name by name."""
    regenerate = "regenerate it with python -m datasites.contract.derive_reference"
    name = path.name
    try:
        stored = json.loads(path.read_text())["features"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{name} is missing or unreadable ({error}); {regenerate}.") from None
    if not isinstance(stored, dict) or list(stored) != list(names):
        raise ValueError(f"{name} does not list the encoder's features in order; {regenerate}.")
    try:
        center = np.array([stored[n]["center"] for n in names], dtype=np.float32)
        scale = np.array([stored[n]["scale"] for n in names], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{name} lacks a numeric centre or scale; {regenerate}.") from None
    if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"{name} has a non-finite centre or a non-positive scale; {regenerate}.")
    return Reference(center=center, scale=scale)
