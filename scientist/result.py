"""What a finished study gives the scientist: the model, the history, honest metrics.

Every metric here is computed from the hospitals' noised aggregate counts, the only
evaluation output they release, and every epsilon is what the hospitals' own ledgers
charged. `save` writes what a reader of the study needs: the history as JSON, the model,
and a picture of the metric and the privacy spent per round.

Scientists work in notebooks, so a result (like a `Federation` or a `Study`) shows itself
in one line as a repr and as a small table in HTML; `names_text` and `facts_html` are the
shared pieces. Hospital names and operators' reasons are text a hospital chose: reprs keep
them on one line and the HTML escapes them, since a notebook renders HTML as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datasites.contract.zoo import build_model, load_weights

HEADLINE = {"ehr": "auroc", "pathmnist": "accuracy"}
# The metrics `table()` and the repr show, per task.
SUMMARY = {"ehr": ("auroc", "auprc", "f1"), "pathmnist": ("accuracy", "macro_f1", "auroc")}
# The scalar metrics `history` shows, per task; per-class lists stay in `rounds`.
HISTORY_METRICS = {
    "ehr": ("auroc", "auprc", "accuracy", "precision", "recall", "f1"),
    "pathmnist": ("accuracy", "macro_f1", "auroc"),
}


def names_text(names: Sequence[str], limit: int = 5) -> str:
    """Names for a one-line repr: at most `limit` of them, and any name a hospital gave with
    a newline or a terminal escape in it shown as a Python literal, so a repr stays one
    line however the hospital is named."""
    shown = [name if name.isprintable() else repr(name) for name in names[:limit]]
    more = len(names) - limit
    return ", ".join(shown) + (f", ... (+{more})" if more > 0 else "")


def facts_html(title: str, facts: dict[str, Any]) -> str:
    """A two-column HTML table of `facts` under `title`, every key and value escaped:
    hospital names, emails and deny reasons are text from outside, and a notebook would
    otherwise run any markup or script in them."""
    cell = "text-align: left"
    rows = "".join(
        f'<tr><th style="{cell}">{escape(str(key))}</th><td style="{cell}">{escape(str(value))}'
        "</td></tr>"
        for key, value in facts.items()
    )
    return f'<table><caption style="{cell}"><b>{escape(title)}</b></caption>{rows}</table>'


@dataclass(repr=False)
class StudyResult:
    """A finished study. `rounds` is the raw history, one dict per round as the checkpoint
    and history.json keep it (per-hospital n and epsilon, metrics, bin edges); `history`
    is the same as a DataFrame to read, plot or compare."""

    study_id: str
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    rounds: list[dict[str, Any]]
    hospitals: list[str]
    excluded: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"StudyResult({self.study_id!r}, {self.config['model']} on {self.task}, "
            f"{len(self.hospitals)} hospitals, {self._rounds_done()}/{self.config['rounds']} "
            f"rounds: {self._final_text()})"
        )

    def _repr_html_(self) -> str:
        facts = {
            "model": f"{self.config['model']} on {self.task}",
            "hospitals": ", ".join(self.hospitals),
            "rounds": f"{self._rounds_done()} of {self.config['rounds']}",
            "final": self._final_text(),
        }
        facts.update({f"excluded: {h}": why for h, why in self.excluded.items()})
        history = self.history.to_html(index=False, na_rep="", float_format="{:.4f}".format)
        return facts_html(f"study {self.study_id}", facts) + history

    def _rounds_done(self) -> int:
        """Rounds the hospitals trained (round 0 only evaluates the initial model)."""
        return sum(1 for entry in self.rounds if entry.get("n") is not None)

    def _final_text(self) -> str:
        """The final model's summary metrics and the epsilon spent, for one line."""
        metrics = self.metrics
        parts = [f"{k} {_number(metrics[k])}" for k in SUMMARY[self.task] if k in metrics]
        spent = [e["epsilon"] for e in self.rounds if e.get("epsilon") is not None]
        if spent:
            parts.append(f"epsilon {max(spent):.3f}")
        return ", ".join(parts) or "not evaluated"

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
        evaluated = [h for h in self.rounds if h.get("metrics")]
        return evaluated[-1]["metrics"] if evaluated else {}

    @property
    def history(self) -> pd.DataFrame:
        """One row per round, in order: `round`; `n`, the examples trained on in that round
        (summed over hospitals; missing for round 0, which only evaluates); `loss`, the test
        loss; the task's scalar metrics (missing where the round was not evaluated) and
        their 95% intervals from the noise (`<metric>_low`, `<metric>_high`);
        `count_noise_std`, the noise on each summed count behind them; `epsilon`, spent so
        far (max over hospitals). Built from `rounds` on each access, so it is never stale.
        """
        metric_names = HISTORY_METRICS[self.task]
        bounds = [f"{k}_{end}" for k in metric_names for end in ("low", "high")]
        columns = ["round", "n", "loss", *metric_names, *bounds, "count_noise_std", "epsilon"]
        rows = []
        for entry in self.rounds:
            metrics = entry.get("metrics") or {}
            intervals = metrics.get("intervals") or {}
            rows.append(
                [
                    entry["round"],
                    entry.get("n"),
                    entry.get("loss"),
                    *(metrics.get(k) for k in metric_names),
                    *(_bound(intervals, name) for name in bounds),
                    metrics.get("count_noise_std"),
                    entry.get("epsilon"),
                ]
            )
        table = pd.DataFrame(rows, columns=columns)
        floats = {c: "float64" for c in columns if c not in ("round", "n")}
        return table.astype({"round": "int64", "n": "Int64", **floats})

    def table(self) -> pd.DataFrame:
        """One row per round: loss, the headline metrics, epsilon spent (max over hospitals)."""
        rows = []
        for entry in self.rounds:
            m = entry.get("metrics") or {}
            row = {
                "round": entry["round"],
                "test loss": entry.get("loss"),
                "epsilon": entry.get("epsilon"),
            }
            row.update({k: m.get(k) for k in SUMMARY[self.task]})
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
            "history": self.rounds,
        }
        (out / "history.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
        torch.save(
            {k: torch.from_numpy(np.asarray(v)) for k, v in self.weights.items()}, out / "model.pt"
        )
        plot_curves(self, out / "curves.png")
        return out


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


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
    bands = result.history.dropna(subset=[f"{key}_low"])
    if len(bands):
        left.fill_between(
            bands["round"],
            bands[f"{key}_low"],
            bands[f"{key}_high"],
            color="tab:blue",
            alpha=0.2,
            label="95% interval (noise)",
        )
        left.legend()
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


def _bound(intervals: dict[str, list[float]], name: str) -> float | None:
    """`auroc_low` -> intervals["auroc"][0]; None where the metric has no interval."""
    key, end = name.rsplit("_", 1)
    interval = intervals.get(key)
    return None if not interval else interval[0 if end == "low" else 1]
