"""A study's progress on the scientist's disk, so a crash costs nothing but a restart.

After every round the global weights, the server's FedAvgM momentum buffer (if any), the
history and the next round are written to one file, atomically (temporary file, then
rename): either the previous checkpoint or the new one exists, never half of one.
`Federation.resume(study_id)` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasites.contract.files import atomic_write

STUDY_FILE = "study.json"
CHECKPOINT_FILE = "checkpoint.npz"


@dataclass
class Checkpoint:
    """Where a study stands: the next call's round, the global weights, the history, and
    the FedAvgM momentum buffer (empty without server momentum) and the running average of
    the global weights (empty without `StudyConfig.average_decay`)."""

    next_round: int
    weights: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    momentum: dict[str, np.ndarray] = field(default_factory=dict)
    average: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        meta = json.dumps({"next_round": self.next_round, "history": self.history})
        arrays = {f"w/{k}": v for k, v in self.weights.items()}
        arrays.update({f"m/{k}": v for k, v in self.momentum.items()})
        arrays.update({f"a/{k}": v for k, v in self.average.items()})
        atomic_write(
            folder / CHECKPOINT_FILE, lambda f: np.savez(f, __meta__=np.array(meta), **arrays)
        )

    @classmethod
    def load(cls, folder: Path) -> Checkpoint | None:
        path = folder / CHECKPOINT_FILE
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            weights = {k[2:]: data[k] for k in data.files if k.startswith("w/")}
            momentum = {k[2:]: data[k] for k in data.files if k.startswith("m/")}
            average = {k[2:]: data[k] for k in data.files if k.startswith("a/")}
        return cls(
            next_round=meta["next_round"],
            weights=weights,
            history=meta["history"],
            momentum=momentum,
            average=average,
        )


def save_study(folder: Path, record: dict[str, Any]) -> None:
    payload = (json.dumps(record, indent=2) + "\n").encode()
    atomic_write(folder / STUDY_FILE, lambda f: f.write(payload))


def load_study(folder: Path) -> dict[str, Any]:
    path = folder / STUDY_FILE
    if not path.exists():
        raise FileNotFoundError(f"no study at {folder}; check the study id and the workdir.")
    return json.loads(path.read_text())
