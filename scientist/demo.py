"""The scientist's half of `make demo`: connect, look at what is hosted, draw the mocks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scientist.federation import Federation


def explore(data_dir: Path) -> Path:
    """Connect to the local federation as the scientist and report what it hosts."""
    fed = Federation.connect(data_dir)
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
    print(f"mock sample grid: {grid}")
    return grid
