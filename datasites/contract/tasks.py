"""The learning tasks a study may run, their labels and the zoo models for each.

One definition for every side: the plan schema validates against it, the zoo builds its
models for it, the datasite hosts one dataset per task, the operator's budget lists them and
the scientist's configuration and command line offer them.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("ehr", "pathmnist")
"""Each task is also the name of the dataset it trains on, at every hospital."""
EHR_LABELS: tuple[str, ...] = ("readmitted_30", "readmitted_any")
"""The EHR outcomes a study may predict (PathMNIST has one: the tissue class)."""
MODEL_TASKS: dict[str, str] = {
    "ehr_logistic": "ehr",
    "ehr_mlp": "ehr",
    "pathmnist_cnn": "pathmnist",
}
"""The vetted zoo's models and the task each trains on; the builders are in `zoo` (torch)."""
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_TASKS)


def model_task(name: str) -> str:
    """The dataset a zoo model trains on: "ehr" or "pathmnist"."""
    if name not in MODEL_TASKS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
    return MODEL_TASKS[name]
