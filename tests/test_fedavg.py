"""FedAvg is the exact sample-weighted mean."""

from __future__ import annotations

import numpy as np
import pytest

from scientist.fedavg import fedavg


def test_weighted_mean_is_exact() -> None:
    rng = np.random.default_rng(0)
    updates = [({"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}, n) for n in (10, 30, 60)]
    out = fedavg(updates)
    for key in ("w", "b"):
        expected = sum(w[key] * n for w, n in updates) / 100
        np.testing.assert_allclose(out[key], expected, rtol=1e-6)
        assert out[key].dtype == np.float32


def test_one_hospital_is_returned_unchanged_and_equal_weights_average() -> None:
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(fedavg([(w, 5)])["w"], w["w"])
    v = {"w": np.ones((2, 3), np.float32)}
    np.testing.assert_allclose(fedavg([(w, 7), (v, 7)])["w"], (w["w"] + 1) / 2)


def test_mismatched_updates_are_refused() -> None:
    with pytest.raises(ValueError, match="parameter names"):
        fedavg([({"a": np.zeros(1)}, 1), ({"b": np.zeros(1)}, 1)])
    with pytest.raises(ValueError, match="positive"):
        fedavg([({"a": np.zeros(1)}, 0)])
    with pytest.raises(ValueError, match="at least one"):
        fedavg([])
