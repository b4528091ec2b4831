"""The URL paper's figures on LFW (supplement Fig. 2-3 style), held-out identities only.

Top: the most and least confident clean faces of the people the fold-True head never saw.
Bottom: a few of those faces clean and edited (crop, mask, 24 px, blur, JPEG), each with its
K sub-embedding uncertainties 1/s^(k) as a 4 x 4 heatmap (dark = uncertain).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerank.eval.occlusion import occlude
from facerank.eval.protocols import EvalData
from facerank.face.align.dlib_chip import extract_chip
from facerank.face.imageio import load_image
from facerank.train.split import identity_fold
from facerank.uncertainty.url import run_head

EDITS = ("clean", "crop", "mask", "lowres24", "blur", "jpeg")


def figure(data: EvalData, heads: dict, path: Path, n_extreme: int = 8, n_faces: int = 4,
           seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head, meta = heads[True]
    ref = float(meta.get("reference_confidence") or 1.0)
    lfw, fs = data.lfw, data.features
    held = np.flatnonzero(~identity_fold(lfw.labels, 0))  # fold False: unseen by this head
    grid = None if head.config.grid is None else fs.grids[head.config.grid][held]
    out = run_head(head, fs.descriptors[held], grid)
    order = np.argsort(out.face)
    least, most = held[order[:n_extreme]], held[order[::-1][:n_extreme]]

    def chip(i: int) -> np.ndarray:
        return extract_chip(load_image(lfw.paths[i]), fs.landmarks5[i])

    rng = np.random.default_rng(seed)
    multi = np.intersect1d(held, lfw.people_with_at_least(2))
    picks = rng.choice(multi, n_faces, replace=False)
    chips = np.stack([chip(i) for i in picks])
    rel = [str(lfw.paths[i].relative_to(lfw.root)) for i in picks]
    rows = []
    for kind in EDITS:
        c = chips if kind == "clean" else occlude(kind, chips, fs.chip_landmarks68[picks], seed,
                                                   ids=rel)
        desc, grids = data.extractor.embed_chips(c)
        g = None if head.config.grid is None else grids[head.config.grid]
        rows.append((kind, c, run_head(head, desc, g)))

    k = head.config.k
    side = int(np.ceil(np.sqrt(k)))
    fig = plt.figure(figsize=(2 * n_extreme * 0.9, 2.2 * 2 + 2.0 * n_faces))
    gs = fig.add_gridspec(2 + n_faces, 2 * len(EDITS), height_ratios=[1.1, 1.1] + [1] * n_faces)
    for r, (title, idx) in enumerate((("most confident", most), ("least confident", least))):
        sub = gs[r, :].subgridspec(1, n_extreme)
        for j, i in enumerate(idx):
            ax = fig.add_subplot(sub[0, j])
            ax.imshow(chip(i))
            ax.set_xticks([])
            ax.set_yticks([])
            conf = out.face[np.searchsorted(held, i)] / ref
            ax.set_title(f"{conf:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(title, fontsize=9)
    vmax = max(float((1 / r[2].conf).max()) for r in rows)
    for f in range(n_faces):
        for e, (kind, c, res) in enumerate(rows):
            ax = fig.add_subplot(gs[2 + f, 2 * e])
            ax.imshow(c[f])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{kind} {res.face[f] / ref:.2f}", fontsize=7)
            ax = fig.add_subplot(gs[2 + f, 2 * e + 1])
            u = np.full(side * side, np.nan)
            u[:k] = 1 / res.conf[f]
            ax.imshow(u.reshape(side, side), cmap="magma_r", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("URL confidence on held-out LFW identities (1.0 = median clean training face); "
                 "heatmaps: uncertainty 1/s of the 16 sub-embeddings", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
