"""A picture of what each hospital's images look like, from mocks only.

Pathologists judge data by eye; a grid of mock patches per class and hospital shows at a
glance that the classes differ and what the images are, without any private image.

The grid is drawn on a bare matplotlib `Figure`, not through pyplot: nothing switches the
caller's backend (a notebook keeps its inline one) and no global figure is left open, so
the figure can be handed back to the scientist along with the PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from synthetic.pathology import CLASS_NAMES

DPI = 110


@dataclass(frozen=True)
class SampleGrid:
    """A drawn sample grid: `path` is the PNG written, `figure` the matplotlib Figure to
    show, resize or save again. A notebook displays it as the picture itself."""

    path: Path
    figure: Figure

    def __repr__(self) -> str:
        return f"SampleGrid({str(self.path)!r})"

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def sample_grid(
    mocks: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, per_class: int = 3
) -> SampleGrid:
    """Rows: the 9 classes; columns: `per_class` patches from each hospital's mock. Writes
    the PNG to `path` and returns it with its figure."""
    hospitals = list(mocks)
    cols = per_class * len(hospitals)
    fig = Figure(figsize=(0.9 * cols + 2.2, 0.9 * 9 + 0.8))
    axes = fig.subplots(len(CLASS_NAMES), cols, squeeze=False)
    for h, hospital in enumerate(hospitals):
        images, labels = mocks[hospital]
        labels = np.asarray(labels).reshape(-1)
        for c in range(len(CLASS_NAMES)):
            picks = np.flatnonzero(labels == c)[:per_class]
            for k in range(per_class):
                ax = axes[c, h * per_class + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(picks):
                    ax.imshow(images[picks[k]], interpolation="nearest")
                if h == 0 and k == 0:
                    ax.set_ylabel(CLASS_NAMES[c], rotation=0, ha="right", va="center", fontsize=8)
                if c == 0 and k == per_class // 2:
                    ax.set_title(hospital, fontsize=9)
    fig.suptitle(
        "Mock PathMNIST patches per class and hospital (synthetic, not patient data)", fontsize=10
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return SampleGrid(path, fig)
