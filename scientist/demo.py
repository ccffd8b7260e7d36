"""The scientist's half of `make demo`: explore the mocks, then run two DP studies.

The hospital operators' half (approving each request) is passed in as a callback, so this
module stays on the scientist's side of the trust boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from datasites.contract.secure_sum import default_threshold
from scientist.__main__ import round_line
from scientist.config import DPConfig, StudyConfig
from scientist.federation import Federation
from scientist.study import Study

# Chosen to finish in a few minutes on 2 cores while still learning something real.
DEMO_STUDIES = (
    # The EHR recipe (scientist.recipes: ehr_logistic on rows at norm 2, 3 local epochs,
    # batch 512, epsilon 1, evaluated before training and at the end), shortened to 6 rounds
    # for the demo's time; its weight average shrinks with it (0.8 over 20 rounds is 0.33
    # over 6). Both studies aggregate securely (the default): the scientist reads sums only.
    StudyConfig(task="ehr", rounds=6),
    # Short rounds: each hospital has its own stain and class mix, and a whole local epoch
    # pulls the shared model toward it; 5 steps between averages keep the hospitals together.
    StudyConfig(
        task="pathmnist",
        model="pathmnist_cnn",
        rounds=16,
        local_epochs=1,
        local_steps=5,
        batch_size=128,
        lr=0.2,
        momentum=0.9,
        average_decay=0.7,
        eval_every=16,
        dp=DPConfig(epsilon=3.0, delta=1e-5, max_grad_norm=1.0),
    ),
)


def explore(fed: Federation, data_dir: Path) -> Path:
    """Report what each hospital hosts and draw the mock images; return the PNG's path."""
    print(f"\nconnected as the data scientist to {len(fed.hospitals)} hospitals")
    table = fed.datasets().drop(columns="description")
    with pd.option_context("display.width", 120):
        print(table.to_string(index=False))
    ehr = next(iter(fed.mock("ehr").values()))
    print(
        f"\nEHR mock: {ehr.shape[0]} rows x {ehr.shape[1]} columns, e.g. "
        + ", ".join(ehr.columns[:6])
        + ", ..."
    )
    grid = fed.show_samples("pathmnist", Path(data_dir) / "reports" / "samples.png")
    print(f"mock sample grid: {grid.path}")
    return grid.path


def run_studies(fed: Federation, data_dir: Path, approve: Callable[[Study], None]) -> None:
    """Submit each demo study, let the operators decide, run it, write its report."""
    for config in DEMO_STUDIES:
        study = fed.submit(config)
        print(
            f"\nsubmitted {study.id}: {config.model} on {config.task}, {config.rounds} rounds, "
            f"epsilon {config.dp.epsilon} per hospital, {_aggregation(study)}"
        )
        approve(study)
        result = study.run(progress=False, on_round=lambda e: print("  " + round_line(e)))
        out = result.save(Path(data_dir) / "reports" / study.id)
        final = {"round": config.rounds, "metrics": result.metrics}
        print(f"  final model: {round_line(final)}")
        print(f"  report: {out}/history.json, model.pt, curves.png")


def _aggregation(study: Study) -> str:
    if not study.config.secure:
        return "plain aggregation"
    partners = len(study.partners)
    threshold = study.config.threshold or default_threshold(partners)
    return f"secure aggregation (sums over at least {threshold} of {partners} hospitals)"
