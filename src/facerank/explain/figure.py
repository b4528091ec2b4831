"""The figure pieces both explanation renderers draw with (flow.py for EMD, vit_heatmap.py
for Face-ViT), so their panels look alike and every PNG is written the same way.

`heatmap_panel` draws one face chip with a per-patch overlay, its grid and a title;
`save_figure` lays the figure out, writes the PNG (creating its folder) and frees the figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def grid_lines(ax: plt.Axes, size: int, hw: tuple[int, int], x0: float = 0.0) -> None:
    """Thin white cell borders of an H x W grid over a chip drawn at x offset x0."""
    h, w = hw
    style = {"color": "white", "lw": 0.4, "alpha": 0.6}
    for r in range(1, h):
        ax.plot([x0, x0 + size], [r * size / h] * 2, **style)
    for c in range(1, w):
        ax.plot([x0 + c * size / w] * 2, [0, size], **style)


def heatmap_panel(ax: plt.Axes, chip: np.ndarray, weights: np.ndarray, hw: tuple[int, int],
                  title: str) -> None:
    """`chip` with `weights` (one per grid cell, min-max scaled) as a jet overlay, the grid
    and `title`; no axes."""
    size = chip.shape[0]
    ax.imshow(chip)
    w = weights.reshape(hw)
    w = (w - w.min()) / max(float(np.ptp(w)), 1e-12)
    ax.imshow(w, cmap="jet", alpha=0.45, extent=(0, size, size, 0), interpolation="nearest",
              vmin=0, vmax=1)
    grid_lines(ax, size, hw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def save_figure(fig: plt.Figure, out_path: str | Path) -> Path:
    """Tight-layout `fig`, save it as a PNG at `out_path` (folders created), close it."""
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return out_path
