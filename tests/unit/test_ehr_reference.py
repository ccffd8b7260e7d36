"""The frozen reference population behind the EHR standardization: reproducible, honest,
and refused when it does not match the encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasites.contract import derive_reference, ehr_reference
from datasites.contract.encoding import FEATURE_NAMES, encode_ehr, encode_features
from synthetic.ehr import generate_ehr


def test_frozen_file_is_what_derive_computes_from_the_public_schema() -> None:
    # Prepare
    frozen = json.loads(ehr_reference.REFERENCE_FILE.read_text())
    # Execute
    derived = derive_reference.derive()
    # Assert: a change to the encoder or the generator must come with a regenerated file
    assert list(frozen["features"]) == list(FEATURE_NAMES) == list(derived)
    for key in ("center", "scale"):
        stored = np.array([frozen["features"][n][key] for n in FEATURE_NAMES])
        fresh = np.array([derived[n][key] for n in FEATURE_NAMES])
        np.testing.assert_allclose(stored, fresh, atol=1.5 * 10**-ehr_reference.DECIMALS)
    assert frozen["rows"] == ehr_reference.REFERENCE_ROWS
    assert frozen["scale_floor"] == ehr_reference.SCALE_FLOOR


def test_another_draw_of_the_population_comes_out_centred_and_scaled() -> None:
    # Prepare: a draw the reference was not computed from
    frame = generate_ehr(40_000, seed=7, identifiers=False)
    # Execute
    features, _ = encode_ehr(frame)
    raw_std = encode_features(frame).std(axis=0)
    # Assert
    assert np.abs(features.mean(axis=0)).max() < 0.05
    spread = features.std(axis=0)
    common = raw_std > 2 * ehr_reference.SCALE_FLOOR
    assert common.sum() > 50
    np.testing.assert_allclose(spread[common], 1.0, atol=0.05)
    assert spread.max() < 1.1  # rare categories are floored, never blown up


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: doc["features"].pop(FEATURE_NAMES[3]),
        lambda doc: doc.update(features=dict(reversed(list(doc["features"].items())))),
        lambda doc: doc["features"][FEATURE_NAMES[0]].update(scale=0.0),
        lambda doc: doc.pop("features"),
        lambda doc: doc["features"][FEATURE_NAMES[1]].pop("center"),
        lambda doc: doc["features"][FEATURE_NAMES[2]].update(scale="wide"),
    ],
    ids=["missing", "reordered", "zero-scale", "no-features", "no-center", "text-scale"],
)
def test_a_file_that_does_not_match_the_encoder_is_refused(tmp_path: Path, damage) -> None:
    # Prepare
    document = json.loads(ehr_reference.REFERENCE_FILE.read_text())
    damage(document)
    path = tmp_path / "ehr_reference.json"
    path.write_text(json.dumps(document))
    # Execute / Assert
    with pytest.raises(
        ValueError, match="regenerate it with python -m datasites.contract.derive_reference"
    ):
        ehr_reference.load(FEATURE_NAMES, path)


def test_the_frozen_file_loads_for_the_encoder() -> None:
    reference = ehr_reference.load(FEATURE_NAMES)
    assert reference.center.shape == reference.scale.shape == (len(FEATURE_NAMES),)
    assert (reference.scale >= ehr_reference.SCALE_FLOOR).all()
