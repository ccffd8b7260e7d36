"""The validated recipe of each task: what `StudyConfig(task=...)` runs when told nothing else.

One place, read by `scientist.config.StudyConfig` (and so by `python -m scientist run`) and by
`benchmarks/utility.py` and `benchmarks/recipes.py`, so the settings a user gets by default
are the settings the benchmarks measured. How each was chosen, and what it reached on every
population of the family, is in benchmarks/README.md ("recipes").

`eval_every` None means "before training and after the last round only": two releases, each
with the whole evaluation budget, so the final metric's interval is as narrow as the
epsilon allows (evaluations read the test part, which training never reads, so they cost
training nothing).
"""

from __future__ import annotations

import copy
from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # The best found on the 11 EHR populations of synthetic.populations at epsilon 1 with the
    # in-process replica (benchmarks/recipes.py): every row scaled to norm 2 (so clipping at
    # 1 no longer weighs every patient alike) and an intercept input of 1.2. Within 0.02 of
    # centralized on the ten populations of real hospital sizes except `scattered` (0.023);
    # 0.036 with five hospitals of 2,000 patients, where each one's noise is calibrated on
    # its own small n (benchmarks/README.md, "recipes").
    "ehr": {
        "model": "ehr_logistic",
        "model_kwargs": {"intercept_scale": 1.2, "row_norm": 2.0},
        "rounds": 20,
        "local_epochs": 3,
        "local_steps": 0,
        "batch_size": 512,
        "lr": 0.5,
        "momentum": 0.0,
        "server_lr": 1.0,
        "server_momentum": 0.0,
        "average_decay": 0.8,
        "clip_quantile": 0.0,
        "eval_every": None,
        "epsilon": 1.0,
    },
    # Validated end to end at full scale at epsilon 3 (benchmarks/utility.py): 0.911-0.917
    # accuracy against 0.950 centralized.
    "pathmnist": {
        "model": "pathmnist_cnn",
        "model_kwargs": {"width": 16},
        "rounds": 200,
        "local_epochs": 1,
        "local_steps": 5,
        "batch_size": 256,
        "lr": 0.2,
        "momentum": 0.9,
        "server_lr": 1.0,
        "server_momentum": 0.0,
        "average_decay": 0.9,
        "clip_quantile": 0.0,
        "eval_every": None,
        "epsilon": 3.0,
    },
}


def recipe(task: str) -> dict[str, Any]:
    """A copy of `task`'s recipe (callers may change it freely)."""
    if task not in RECIPES:
        raise ValueError(f"task must be one of {', '.join(RECIPES)}, found {task!r}.")
    return copy.deepcopy(RECIPES[task])
