"""The vetted model zoo: the only architectures a study may train inside a hospital.

Why a zoo instead of the scientist's own `nn.Module`: approved code runs unsandboxed in the
datasite (PySyft <= 0.9.5), so a study names a model and its few hyperparameters and the
hospital builds it from this file. Both sides import it, so the scientist's global model and
every hospital's local copy have the same parameter names and shapes. Every model here is
accepted by Opacus' validator (no BatchNorm: batch statistics mix examples and break
per-example privacy; GroupNorm normalises within one example).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from datasites.contract.encoding import N_CLASSES, N_FEATURES
from datasites.contract.tasks import MODEL_NAMES
from datasites.contract.untrusted import shown

__all__ = ["build_model", "count_parameters", "load_weights", "model_weights"]

_MAX_HIDDEN = 4096
_MAX_LAYERS = 6
_WIDTH_RANGE = (4, 128)
_MAX_DROPOUT = 0.9
_INTERCEPT_SCALE_RANGE = (0.01, 100.0)
_ROW_NORM_RANGE = (0.01, 100.0)  # or 0: rows as encoded
# Weights come from the scientist: a bound decided on them alone (public input), far above
# anything training produces, keeps a forward pass on bounded inputs far from overflow.
MAX_ABS_WEIGHT = 1e6


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised zoo model (deterministic under `torch.manual_seed`).

    ehr_logistic(intercept_scale=1.0, row_norm=0.0): one logit from the N_FEATURES
        encoding; the intercept is the weight of a constant input of `intercept_scale`, and
        with `row_norm` every row is first scaled to that L2 norm (see `_ehr_logistic`).
    ehr_mlp(hidden=(64, 32), dropout=0.0): ReLU layers, then one logit.
    pathmnist_cnn(width=16): three conv/GroupNorm/ReLU/pool stages, 9 logits.
    """
    _check_name(name)
    builder, allowed = _BUILDERS[name]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        options = ", ".join(allowed) if allowed else "none"
        raise ValueError(
            f"{name} does not take the argument {unknown[0]!r}; allowed arguments: {options}."
        )
    return builder(**kwargs)


def model_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as float32 numpy copies, safe to send and to keep."""
    return {
        key: value.detach().cpu().numpy().astype(np.float32, copy=True)
        for key, value in model.state_dict().items()
    }


def load_weights(model: nn.Module, weights: Mapping[str, Any]) -> None:
    """Replace the model's state with `weights` after checking names, shapes and finiteness.

    Weights come from the other side of the trust boundary, so a bad entry is refused with a
    message that names the key and the shapes but never echoes a value.
    """
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be a mapping of names to arrays, found {type(weights)}.")
    state = model.state_dict()
    missing = [key for key in state if key not in weights]
    unexpected = [str(key) for key in weights if key not in state]
    if missing:
        raise ValueError(f"weights lack the entries {', '.join(missing)}; send the full state.")
    if unexpected:
        raise ValueError(f"weights carry unexpected entries {', '.join(unexpected)}.")
    loaded = {key: _checked_array(key, weights[key], tuple(state[key].shape)) for key in state}
    model.load_state_dict({key: torch.from_numpy(value) for key, value in loaded.items()})


# --- builders ---------------------------------------------------------------------------------


class ConstantInput(nn.Module):
    """Appends one constant column, `value`, to every row: the intercept's own input.

    No parameters, so Opacus sees only the Linear layer after it, whose per-example
    gradients (and their clipping) cover the intercept's weight like any other.
    """

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        constant = rows.new_full((rows.shape[0], 1), self.value)
        return torch.cat([rows, constant], dim=1)

    def extra_repr(self) -> str:
        return f"value={self.value}"


class RowNorm(nn.Module):
    """Scales every row to L2 norm `norm` (an all-zero row stays zero).

    No parameters, and each row is scaled by its own norm alone: a fixed per-patient
    transform like the encoding itself, which costs no privacy and mixes no examples.
    """

    def __init__(self, norm: float) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        lengths = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        return rows * (self.norm / lengths.clamp_min(1e-6))

    def extra_repr(self) -> str:
        return f"norm={self.norm}"


def _ehr_logistic(intercept_scale: float = 1.0, row_norm: float = 0.0) -> nn.Module:
    """Logistic regression on the encoding.

    Under DP-SGD every patient's gradient is clipped as a whole, and an encoded row has an
    L2 norm of about 13 against the intercept's input of 1: the intercept gets a thirteenth
    of each clipped step, learns slowly, and the weights drift to stand in for it along the
    features' mean, which real case mix puts off-centre. An intercept input of
    `intercept_scale` (the recipe's 5) gives it its share; at 1 the model is the plain
    `Linear(N_FEATURES, 1)` with its bias (benchmarks/README.md, "recipes").

    `row_norm` removes clipping from the picture: a patient's gradient is (p - y) times the
    input, so rows of one norm c give every patient a gradient of norm at most
    |p - y| * sqrt(c^2 + intercept_scale^2). With that at or below the clipping bound, DP-SGD
    is plain noisy SGD on the logistic loss; on raw rows (norms 9-20) nearly every patient
    was clipped to the same length, which weighs a confident negative like a positive.
    """
    scale = _check_float("intercept_scale", intercept_scale, *_INTERCEPT_SCALE_RANGE)
    norm = _check_float("row_norm", row_norm, 0.0, _ROW_NORM_RANGE[1])
    if 0 < norm < _ROW_NORM_RANGE[0]:
        raise ValueError(f"row_norm must be 0 (off) or in {list(_ROW_NORM_RANGE)}, found {norm:g}.")
    first = [RowNorm(norm)] if norm else []
    if scale == 1.0:
        return nn.Sequential(*first, nn.Linear(N_FEATURES, 1))
    return nn.Sequential(*first, ConstantInput(scale), nn.Linear(N_FEATURES + 1, 1, bias=False))


def _ehr_mlp(hidden: list[int] | tuple[int, ...] = (64, 32), dropout: float = 0.0) -> nn.Module:
    sizes = _check_hidden(hidden)
    rate = _check_float("dropout", dropout, 0.0, _MAX_DROPOUT)
    layers: list[nn.Module] = []
    width = N_FEATURES
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if rate > 0:
            layers.append(nn.Dropout(rate))
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _pathmnist_cnn(width: int = 16) -> nn.Module:
    w = _check_int("width", width, *_WIDTH_RANGE)
    return nn.Sequential(
        *_conv_stage(3, w),  # 28 -> 14
        *_conv_stage(w, 2 * w),  # 14 -> 7
        *_conv_stage(2 * w, 2 * w),  # 7 -> 3
        nn.Flatten(),
        nn.Linear(2 * w * 3 * 3, 8 * w),
        nn.ReLU(),
        nn.Linear(8 * w, N_CLASSES),
    )


def _conv_stage(channels_in: int, channels_out: int) -> list[nn.Module]:
    # GroupNorm, not BatchNorm: normalising within one example keeps examples independent,
    # which per-example clipping needs. Groups of >= 2 channels whenever the width allows.
    groups = math.gcd(channels_out, 4)
    return [
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1),
        nn.GroupNorm(groups, channels_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


_BUILDERS: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "ehr_logistic": (_ehr_logistic, ("intercept_scale", "row_norm")),
    "ehr_mlp": (_ehr_mlp, ("hidden", "dropout")),
    "pathmnist_cnn": (_pathmnist_cnn, ("width",)),
}


def count_parameters(model: str, kwargs: dict[str, Any]) -> int:
    """Trainable parameters of the zoo model, built on torch's meta device: shapes only, no
    memory, so an 85-million-parameter request is counted in milliseconds, not allocated.

    Raises ValueError (from the zoo) when `kwargs` are not valid for `model`.
    """
    try:
        key = json.dumps(kwargs, sort_keys=True)
    except (TypeError, ValueError):
        raise ValueError("model_kwargs must be plain JSON values.") from None
    return _count(model, key)


@lru_cache(maxsize=256)
def _count(model: str, kwargs_json: str) -> int:
    with torch.device("meta"):
        built = build_model(model, **json.loads(kwargs_json))
    return sum(p.numel() for p in built.parameters() if p.requires_grad)


# --- validation -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int in {low}..{high}, found {type(value).__name__}.")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, found {value}.")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number in [{low}, {high}], found {value!r}.")
    # Compared as it is: a hostile 10**400 is out of range instead of overflowing float().
    if not low <= value <= high:  # False for NaN too
        raise ValueError(f"{name} must be in [{low}, {high}], found {shown(value)}.")
    return float(value)


def _check_hidden(hidden: Any) -> list[int]:
    if not isinstance(hidden, list | tuple) or not 1 <= len(hidden) <= _MAX_LAYERS:
        raise ValueError(f"hidden must be a list of 1..{_MAX_LAYERS} layer sizes.")
    return [_check_int("each hidden size", size, 1, _MAX_HIDDEN) for size in hidden]


def _checked_array(key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"weight {key!r} is not a numeric array of shape {shape}.") from None
    if array.shape != shape:
        raise ValueError(f"weight {key!r} must have shape {shape}, found shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"weight {key!r} contains NaN or infinite entries; send finite values.")
    if array.size and float(np.abs(array).max()) > MAX_ABS_WEIGHT:
        raise ValueError(
            f"weight {key!r} has entries beyond +-{MAX_ABS_WEIGHT:g}; send the weights of a "
            "trained model."
        )
    return np.array(array, copy=True)
