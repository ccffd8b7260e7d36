"""Histogram bin edges for each evaluation, chosen from the mocks before anything is released.

Hospitals release their test-set evaluation as noised histograms of predicted probabilities;
the rank metrics (AUROC, AUPRC) can only resolve what the bins separate. A DP-trained model
of a rare outcome predicts within a narrow band (0.002-0.04 for 30-day readmission), so any
fixed bins either waste most cells on empty ranges, which the noise then dominates, or lump
every patient together. Quantiles of the current global model's predictions on the mocks put
about the same share of patients in every bin. The mocks are public, so the edges cost no
privacy, and the hospitals count private patients into them unchanged.

In simulation at the demo's noise (std 55 per summed cell, 14,000 test patients), ten
quantile bins estimated the AUROC with an RMSE of 0.03-0.04, against 0.05-0.08 for 16
logit-spaced fixed bins and 0.11 for ten equal-width bins on [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from datasites.contract.release import MAX_BINS
from scientist.config import StudyConfig

DEFAULT_BINS = 10
MIN_BINS = 3
THRESHOLD = 0.5  # the decision threshold of the binary metrics is always an edge


def quantile_edges(
    scores: np.ndarray, bins: int = DEFAULT_BINS, threshold: float | None = None
) -> np.ndarray:
    """Edges 0 < q_1 < ... < 1 at the scores' quantiles, plus `threshold` if given.

    Tied quantiles collapse into one edge; the result never exceeds MAX_BINS bins.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    inner = np.quantile(scores, np.linspace(0.0, 1.0, bins + 1)[1:-1]) if scores.size else []
    extra = [] if threshold is None else [threshold]
    edges = np.unique(np.concatenate(([0.0, 1.0], inner, extra)))
    edges = edges[(edges >= 0.0) & (edges <= 1.0)]
    if edges.size - 1 > MAX_BINS:
        keep = np.unique(np.linspace(0, edges.size - 1, MAX_BINS + 1).round().astype(int))
        edges = edges[keep]
    if edges.size < 3:  # constant predictions: split at the threshold or the middle
        edges = np.array([0.0, threshold or 0.5, 1.0])
    return edges


def bins_for(positives: float, noise_std: float) -> int:
    """How many bins an outcome with about `positives` positives (summed over hospitals)
    should be counted into when every summed cell carries noise of sd `noise_std`.

    More bins resolve more of the ranking; each bin also adds a noised cell to both rows.
    With few positives per bin the noise wins: in simulation (binormal scores, AUROC 0.6,
    9% positives, quantile bins plus the threshold's bin) the RMSE of the noised AUROC was
    least at 3 bins for 250 positives at sd 12-17 (the demo: 0.028-0.038 against
    0.044-0.057 at ten), and at 5-6 for 1,260 positives (full scale: 0.008-0.010 against
    0.009-0.013). 0.6 sqrt(positives / sd) follows both, within [MIN_BINS, DEFAULT_BINS]
    (tests/unit/test_metrics.py repeats the simulation). Both inputs are public: an earlier
    release's noised total and its published sd.
    """
    if not (math.isfinite(positives) and math.isfinite(noise_std)) or noise_std <= 0:
        return DEFAULT_BINS
    wanted = round(0.6 * math.sqrt(max(positives, 0.0) / noise_std))
    return int(min(max(wanted, MIN_BINS), DEFAULT_BINS))


class MockScorer:
    """Scores the global model on the union of the approving hospitals' test mocks."""

    def __init__(self, config: StudyConfig, mocks: Mapping[str, Any], bins: int = DEFAULT_BINS):
        from datasites.contract.encoding import encode_ehr, encode_images

        parts = []
        for mock in mocks.values():
            if config.task == "ehr":
                parts.append(encode_ehr(mock, config.label)[0])
            else:
                parts.append(encode_images(*mock)[0])
        self.config = config
        self.bins = bins
        self.features = np.concatenate(parts) if parts else None

    def edges(self, weights: Mapping[str, np.ndarray], bins: int | None = None) -> list | None:
        """The edges for evaluating `weights`, as lists, into `bins` bins (the scorer's own
        count by default); None without any mock rows."""
        if self.features is None or not len(self.features):
            return None
        scores = self._predict(weights)
        if self.config.task == "ehr":
            return quantile_edges(scores, bins or self.bins, THRESHOLD).tolist()
        rows = [quantile_edges(scores[:, c], self.bins) for c in range(scores.shape[1])]
        return _common_width(rows)

    def _predict(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        import torch

        from datasites.contract.zoo import build_model, load_weights

        model = build_model(self.config.model, **self.config.model_kwargs)
        load_weights(model, weights)
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(self.features)).double()
        if self.config.task == "ehr":
            return torch.sigmoid(logits.reshape(-1)).numpy()
        return torch.softmax(logits, dim=1).numpy()


def _common_width(rows: list[np.ndarray]) -> list[list[float]]:
    """Per-class edges padded to one width (the release is one array): a row short of the
    widest gets extra edges split off its widest bin, which only refines it."""
    width = max(row.size for row in rows)
    out = []
    for row in rows:
        row = row.copy()
        while row.size < width:
            k = int(np.argmax(np.diff(row)))
            row = np.insert(row, k + 1, (row[k] + row[k + 1]) / 2)
        out.append(row.tolist())
    return out
