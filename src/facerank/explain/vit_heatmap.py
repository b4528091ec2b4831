"""Heatmap explanations of a Face-ViT match (Face-ViT Fig. 5.7: Chefer et al. relevance).

One PNG, two panels: each face's chip with the relevance of its patches for the pair's ViT
score (red = most relevant, scaled to the face's own maximum), and the scores in the titles.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facerank.explain.figure import heatmap_panel, save_figure  # noqa: E402
from facerank.explain.flow import chip_of  # noqa: E402
from facerank.face.features import FeatureSet  # noqa: E402
from facerank.models.backbone import Backbone  # noqa: E402
from facerank.rerank.vit.reranker import PairHeatmaps, Stage2ViT, explain_pairs  # noqa: E402


def render_heatmaps(chip_a: np.ndarray, chip_b: np.ndarray, heat: PairHeatmaps, i: int,
                    out_path: str | Path, labels: tuple[str, str] = ("query", "candidate"),
                    title: str = "") -> Path:
    """Draw pair i of `heat` over the two chips and save a PNG."""
    hw = heat.heat_a.shape[1:]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 4.2))
    note = f"ViT relevance ({heat.method})"
    heatmap_panel(axes[0], chip_a, heat.heat_a[i], hw, f"{labels[0]}\n{note}")
    heatmap_panel(axes[1], chip_b, heat.heat_b[i], hw, f"{labels[1]}\n{note}")
    fig.suptitle(f"{title}cosine {heat.cosine[i]:.3f}   ViT {heat.score[i]:.3f}   "
                 f"final {heat.final[i]:.3f}", fontsize=9)
    return save_figure(fig, out_path)


def render_vit_pair(a: FeatureSet, b: FeatureSet, out_path: str | Path,
                    scorer: Stage2ViT | None = None, chip_a: np.ndarray | None = None,
                    chip_b: np.ndarray | None = None, labels: tuple[str, str] = ("query",
                                                                               "candidate"),
                    method: str = "chefer", title: str = "",
                    backbone: Backbone | None = None) -> tuple[Path, PairHeatmaps]:
    """Explain the ViT match of a[0] and b[0]; chips are re-cut from the files (with
    `backbone`'s alignment, dlib's if None) if not given."""
    scorer = scorer or Stage2ViT.load()
    heat = explain_pairs(scorer, a.take([0]), b.take([0]), method)
    ca = chip_a if chip_a is not None else chip_of(a, 0, backbone)
    cb = chip_b if chip_b is not None else chip_of(b, 0, backbone)
    return render_heatmaps(ca, cb, heat, 0, out_path, labels, title), heat
