"""What a finished study gives the scientist: the model, the history, honest metrics.

Every metric here is computed from the hospitals' noised aggregate counts, the only
evaluation output they release, and every epsilon is what the hospitals' own ledgers
charged. `save` writes what a reader of the study needs: the history as JSON, the model,
and a picture of the metric and the privacy spent per round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datasites.contract.zoo import build_model, load_weights

HEADLINE = {"ehr": "auroc", "pathmnist": "accuracy"}


@dataclass
class StudyResult:
    study_id: str
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    hospitals: list[str]
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def model(self) -> Any:
        model = build_model(self.config["model"], **self.config["model_kwargs"])
        load_weights(model, self.weights)
        return model.eval()

    @property
    def metrics(self) -> dict[str, Any]:
        """The final global model's metrics (the last evaluated round)."""
        evaluated = [h for h in self.history if h.get("metrics")]
        return evaluated[-1]["metrics"] if evaluated else {}

    def table(self) -> pd.DataFrame:
        """One row per round: loss, the headline metrics, epsilon spent (max over hospitals)."""
        rows = []
        for entry in self.history:
            m = entry.get("metrics") or {}
            row = {
                "round": entry["round"],
                "test loss": entry.get("loss"),
                "epsilon": entry.get("epsilon"),
            }
            keys = (
                ("auroc", "auprc", "f1")
                if self.task == "ehr"
                else ("accuracy", "macro_f1", "auroc")
            )
            row.update({k: m.get(k) for k in keys})
            rows.append(row)
        return pd.DataFrame(rows)

    def save(self, out: str | Path) -> Path:
        import torch

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "study_id": self.study_id,
            "config": self.config,
            "hospitals": self.hospitals,
            "excluded": self.excluded,
            "metrics": self.metrics,
            "history": self.history,
        }
        (out / "history.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
        torch.save(
            {k: torch.from_numpy(np.asarray(v)) for k, v in self.weights.items()}, out / "model.pt"
        )
        plot_curves(self, out / "curves.png")
        return out


def plot_curves(result: StudyResult, path: Path) -> Path:
    """Two panels: the headline metric per round, and epsilon spent per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.table()
    key = HEADLINE[result.task]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    evaluated = table.dropna(subset=[key])
    left.plot(evaluated["round"], evaluated[key], marker="o", color="tab:blue")
    left.set(
        xlabel="round",
        ylabel=key.upper() if key == "auroc" else key,
        title=f"global model, {key} (from noised counts)",
    )
    left.grid(alpha=0.3)
    spent = table.dropna(subset=["epsilon"])
    right.plot(spent["round"], spent["epsilon"], marker="o", color="tab:red", label="spent")
    right.axhline(result.config["dp"]["epsilon"], ls="--", color="grey", label="approved")
    right.set(xlabel="round", ylabel="epsilon", title="privacy spent (max over hospitals)")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle(
        f"study {result.study_id}: {result.config['model']} on {result.task}, "
        f"{len(result.hospitals)} hospitals"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
