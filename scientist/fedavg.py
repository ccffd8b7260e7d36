"""FedAvg [McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"]: the global model is the sample-weighted mean of the local models.

Weighting by each hospital's sample count makes one round of FedAvg with one local step
equal to one step of centralized gradient descent on the union of the data, which is why a
large hospital counts for more than a small one.

FedAvgM [Hsu et al., 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification"] adds server-side momentum: the scientist treats the change
the hospitals made, w_prev - fedavg, as a pseudo-gradient and steps along its running
average. It only post-processes the hospitals' DP weights, so it costs no privacy, and it
damps the round-to-round oscillation of FedAvg on non-IID hospitals.
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


def fedavgm(
    previous: Mapping[str, np.ndarray],
    updates: Sequence[tuple[Mapping[str, np.ndarray], int]],
    buffer: Mapping[str, np.ndarray] | None = None,
    *,
    server_lr: float = 1.0,
    server_momentum: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One server step of FedAvgM; returns the new global weights and momentum buffer.

    With d = previous - fedavg(updates): m <- server_momentum * m + d, then
    w <- previous - server_lr * m. `buffer` is m from the last round (None or empty at the
    start: zero). With server_momentum 0 and server_lr 1 this is plain FedAvg, returned
    exactly as `fedavg` computes it; with server_momentum 0 no buffer is kept ({}).
    """
    _check_server(server_lr, server_momentum)
    average = fedavg(updates)
    if set(previous) != set(average):
        raise ValueError("the previous global weights and the hospital updates disagree on names.")
    if buffer and set(buffer) != set(average):
        raise ValueError("the momentum buffer and the hospital updates disagree on names.")
    if server_momentum == 0.0 and server_lr == 1.0:
        return average, {}
    weights, momentum = {}, {}
    for name, mean in average.items():
        before = np.asarray(previous[name], np.float64)
        step = before - mean.astype(np.float64)
        if server_momentum:
            if buffer:
                step = server_momentum * np.asarray(buffer[name], np.float64) + step
            momentum[name] = step.astype(np.float32)
        weights[name] = (before - server_lr * step).astype(np.float32)
    return weights, momentum


def _check_server(server_lr: float, server_momentum: float) -> None:
    for name, value in (("server_lr", server_lr), ("server_momentum", server_momentum)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise ValueError(f"{name} must be a number, found {type(value).__name__}.")
    if not (0.0 < server_lr < float("inf")):
        raise ValueError(f"server_lr must be positive and finite, found {server_lr}.")
    if not 0.0 <= server_momentum < 1.0:
        raise ValueError(f"server_momentum must be in [0, 1), found {server_momentum}.")


def weight_average(
    average: Mapping[str, np.ndarray] | None, weights: Mapping[str, np.ndarray], decay: float
) -> dict[str, np.ndarray]:
    """Exponential moving average of the global weights over rounds: decay * average +
    (1 - decay) * weights, starting from the first weights.

    On non-IID hospitals the global model oscillates from round to round; averaging the
    iterates (Polyak & Juditsky, 1992) lands between the swings. It only post-processes
    the DP weights, so it costs no privacy.
    """
    _check_decay(decay)
    if average is None or not average:
        return {name: np.array(value, np.float32, copy=True) for name, value in weights.items()}
    if set(average) != set(weights):
        raise ValueError("the weight average and the new weights disagree on names.")
    return {
        name: (
            decay * np.asarray(average[name], np.float64)
            + (1.0 - decay) * np.asarray(weights[name], np.float64)
        ).astype(np.float32)
        for name in weights
    }


def _check_decay(decay: float) -> None:
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 <= decay < 1.0:
        raise ValueError(f"the averaging decay must be in [0, 1), found {decay!r}.")
