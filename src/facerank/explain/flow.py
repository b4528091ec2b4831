"""Flow explanations of a Stage-2 EMD match (DeepFace-EMD §3.2).

One PNG with four panels:
  1. the query chip, its patch grid and its patch weights as a heatmap;
  2. both chips side by side with the strongest flows drawn as lines coloured by their mass;
  3. the candidate chip with its grid and weights;
  4. DeepEMD's reconstruction: each query patch replaced by the candidate patch that receives
     most of its mass, darkened by that flow (normalised to [0, 1] as in Eq. 3.9, then shown
     at 20-100 % brightness so the weakest patches stay visible).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from facerank.explain.figure import grid_lines, heatmap_panel, save_figure  # noqa: E402
from facerank.face.align.dlib_chip import extract_chip  # noqa: E402
from facerank.face.features import FeatureSet  # noqa: E402
from facerank.face.imageio import load_image  # noqa: E402
from facerank.models.backbone import Backbone  # noqa: E402
from facerank.rerank.emd.reranker import PairFlows, Stage2EMD  # noqa: E402


def chip_of(fs: FeatureSet, i: int, backbone: Backbone | None = None) -> np.ndarray:
    """Re-cut the aligned chip of row i from its image file, (S, S, 3) uint8: the chip the
    backbone's grids were computed on (dlib's 150 x 150 by default, SFace's ArcFace 112 x 112),
    so that the patch overlays sit on the face regions they describe."""
    image = load_image(fs.paths[i])
    if backbone is None:
        return extract_chip(image, fs.landmarks5[i])
    return backbone.align_points(image, fs.landmarks5[i])


def _centres(hw: tuple[int, int], size: int) -> np.ndarray:
    """(H*W, 2) x, y pixel centres of the grid cells, row-major."""
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([(xs.ravel() + 0.5) * size / w, (ys.ravel() + 0.5) * size / h], axis=1)


def render_flow(query_chip: np.ndarray, cand_chip: np.ndarray, flows: PairFlows, b: int,
                out_path: str | Path, labels: tuple[str, str] = ("query", "candidate"),
                weighting: str = "", top: int = 24) -> Path:
    """Draw pair b of `flows` over the two chips and save a PNG."""
    size = query_chip.shape[0]
    hw = flows.grid_hw
    flow = flows.flow[b]  # (N, M)
    gap = size * 0.25
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6),
                             gridspec_kw={"width_ratios": [1, 2.25, 1, 1]})
    note = f"weights ({weighting})"
    heatmap_panel(axes[0], query_chip, flows.query_weights[b], hw, f"{labels[0]}\n{note}")
    heatmap_panel(axes[2], cand_chip, flows.cand_weights[b], hw, f"{labels[1]}\n{note}")

    ax = axes[1]
    canvas = np.full((size, int(2 * size + gap), 3), 255, dtype=np.uint8)
    canvas[:, :size] = query_chip
    canvas[:, int(size + gap):] = cand_chip
    ax.imshow(canvas)
    grid_lines(ax, size, hw)
    grid_lines(ax, size, hw, x0=size + gap)
    centres = _centres(hw, size)
    order = np.argsort(flow.ravel())[::-1][:top]
    qi, cj = np.unravel_index(order, flow.shape)
    mass = flow[qi, cj]
    segs = [[centres[i], centres[j] + (size + gap, 0)] for i, j in zip(qi, cj, strict=True)]
    norm = plt.Normalize(vmin=float(mass.min()), vmax=float(mass.max()) + 1e-12)
    lines = LineCollection(segs, cmap="plasma", norm=norm, linewidths=1.6, alpha=0.9)
    lines.set_array(mass)
    ax.add_collection(lines)
    fig.colorbar(lines, ax=ax, fraction=0.025, pad=0.01, label="flow mass")
    ax.set_title(f"top {top} flows   cosine {flows.cosine[b]:.3f}   EMD {flows.emd[b]:.3f}   "
                 f"{flows.alpha:g}-blend {flows.final[b]:.3f}", fontsize=9)
    ax.axis("off")

    # DeepEMD reconstruction of the query from the candidate's highest-flow patches
    h, w = hw
    ph, pw = size // h, size // w
    best = flow.argmax(axis=1)
    strength = flow.max(axis=1)
    strength = (strength - strength.min()) / max(float(np.ptp(strength)), 1e-12)
    strength = 0.2 + 0.8 * strength  # Eq. 3.9, lifted so the weakest patch stays visible
    recon = np.zeros((ph * h, pw * w, 3), dtype=np.float32)
    for i in range(h * w):
        r, c = divmod(i, w)
        sr, sc = divmod(int(best[i]), w)
        recon[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = (
            cand_chip[sr * ph:(sr + 1) * ph, sc * pw:(sc + 1) * pw] * strength[i])
    axes[3].imshow(recon.astype(np.uint8))
    axes[3].set_title("query rebuilt from the\ncandidate's highest-flow patches", fontsize=9)
    axes[3].axis("off")
    return save_figure(fig, out_path)


def render_pair(query: FeatureSet, cand: FeatureSet, out_path: str | Path,
                reranker: Stage2EMD | None = None, query_chip: np.ndarray | None = None,
                cand_chip: np.ndarray | None = None,
                labels: tuple[str, str] = ("query", "candidate"),
                backbone: Backbone | None = None) -> tuple[Path, PairFlows]:
    """Explain the match of query[0] and cand[0]; chips are re-cut from the files (with
    `backbone`'s alignment, dlib's if None) if not given."""
    reranker = reranker or Stage2EMD()
    flows = reranker.explain_pairs(query, cand)
    qc = query_chip if query_chip is not None else chip_of(query, 0, backbone)
    cc = cand_chip if cand_chip is not None else chip_of(cand, 0, backbone)
    path = render_flow(qc, cc, flows, 0, out_path, labels, reranker.weighting)
    return path, flows
