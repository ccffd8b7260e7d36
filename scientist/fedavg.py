"""FedAvg [McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"]: the global model is the sample-weighted mean of the local models.

Weighting by each hospital's sample count makes one round of FedAvg with one local step
equal to one step of centralized gradient descent on the union of the data, which is why a
large hospital counts for more than a small one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def fedavg(updates: Sequence[tuple[Mapping[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Sample-weighted average of local weights: sum_k n_k w_k / sum_k n_k."""
    if not updates:
        raise ValueError("FedAvg needs at least one hospital's update.")
    names = list(updates[0][0])
    for weights, n in updates:
        if list(weights) != names:
            raise ValueError(
                "hospital updates disagree on parameter names; they must share a model."
            )
        if n <= 0:
            raise ValueError(f"sample counts must be positive, found {n}.")
    total = float(sum(n for _, n in updates))
    return {
        name: (sum(np.asarray(w[name], np.float64) * n for w, n in updates) / total).astype(
            np.float32
        )
        for name in names
    }
