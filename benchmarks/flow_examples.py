"""docs/img/flow_correct.png and flow_wrong.png: explanations of a right and a wrong top-1.

    python -m benchmarks.flow_examples [--grid l2] [--weighting apc]

Queries are LFW-crop queries (seed 0); each is searched against the clean gallery (minus its
own original) with Stage 1 + EMD; the first query whose Stage-2 top-1 is the right person and
the first whose top-1 is someone else are explained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facerank.eval.occlusion import occlude
from facerank.eval.protocols import EvalData, setup_identification
from facerank.explain.flow import chip_of, render_pair
from facerank.face.align.dlib_chip import extract_chip
from facerank.face.imageio import load_image
from facerank.ranking import cosine_topk
from facerank.rerank.emd.reranker import Stage2EMD

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="l2")
    ap.add_argument("--weighting", default="apc")
    args = ap.parse_args()
    data = EvalData.load()
    st = setup_identification(data, "lfw-crop", limit=200)
    reranker = Stage2EMD(grid=args.grid, weighting=args.weighting)
    ranking = reranker.rerank(st.queries, st.gallery, cosine_topk(
        st.queries.embeddings, st.gallery.embeddings, 100, st.exclude))
    top = ranking.indices[:, 0]
    right = st.gallery_labels[top] == st.query_labels
    names = data.lfw.names
    for tag, want in (("correct", True), ("wrong", False)):
        q = int(np.flatnonzero(right == want)[0])
        i = int(st.query_index[q])
        path = data.lfw.paths[i]
        chip = occlude("crop", extract_chip(load_image(path), data.features.landmarks5[i])[None],
                       None, 0, ids=[str(path.relative_to(data.lfw.root))])[0]
        g = int(top[q])
        out, flows = render_pair(
            st.queries.take([q]), st.gallery.take([g]), OUT / f"flow_{tag}.png", reranker,
            query_chip=chip, cand_chip=chip_of(st.gallery, g),
            labels=(f"crop query: {names[st.query_labels[q]]}",
                    f"top-1: {names[st.gallery_labels[g]]}"))
        print(f"{tag}: {out} (cosine {flows.cosine[0]:.3f}, EMD {flows.emd[0]:.3f})")


if __name__ == "__main__":
    main()
