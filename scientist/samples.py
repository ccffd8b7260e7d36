"""A picture of what each hospital's images look like, from mocks only.

Pathologists judge data by eye; a grid of mock patches per class and hospital shows at a
glance that the classes differ and what the images are, without any private image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthetic.pathology import CLASS_NAMES


def sample_grid(
    mocks: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, per_class: int = 3
) -> Path:
    """Rows: the 9 classes; columns: `per_class` patches from each hospital's mock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hospitals = list(mocks)
    cols = per_class * len(hospitals)
    fig, axes = plt.subplots(
        len(CLASS_NAMES), cols, figsize=(0.9 * cols + 2.2, 0.9 * 9 + 0.8), squeeze=False
    )
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
