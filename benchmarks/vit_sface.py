"""A Face-ViT trained on SFace's 7x7 grid (identity half A), ungated, against SFace's Stage 1
on the people of identity half B: the five LFW protocols (500 seeded queries, half B's share)
and the photo variants through YuNet (300 seeded queries of half B).

    facerank train vit --backbone sface --grid l2 --variants crop --epochs 4 --out vit-sface-l2.pt
    python -m benchmarks.vit_sface --checkpoint vit-sface-l2.pt
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import write_result
from benchmarks.stage2_halves import half_groups
from facerank.eval.protocols import EvalData, lfw_extractor
from facerank.face.features import FeatureSet
from facerank.ranking import cosine_topk
from facerank.rerank.vit.reranker import Stage2ViT


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--protocol-limit", type=int, default=500)
    ap.add_argument("--name", default="vit_sface_halfB")
    a = ap.parse_args(argv)
    data = EvalData.load(lfw_extractor(backbone="sface"), progress=False)
    vit = Stage2ViT.load(a.checkpoint, backbone=data.extractor.model_id, k=100, gate=None)
    out: dict = {"setup": {**vars(a), "alpha": vit.alpha, "gate": None,
                           "config": json.loads(open(a.checkpoint.replace(".pt", ".json")).read()
                                                ).get("command")}, "rows": {}}

    def run(name: str, q: FeatureSet, ql: np.ndarray, gal: FeatureSet, gl: np.ndarray,
            excl: np.ndarray) -> None:
        t0 = time.perf_counter()
        r = cosine_topk(q.embeddings, gal.embeddings, 100, excl)
        b = vit.blend(r, vit.topk_scores(q, gal, r.indices[:, :100]))
        out["rows"][name] = {"queries": len(ql),
                             "p1_stage1": float(100 * (gl[r.indices[:, 0]] == ql).mean()),
                             "p1_vit": float(100 * (gl[b.indices[:, 0]] == ql).mean()),
                             "seconds": round(time.perf_counter() - t0, 1)}
        print(name, out["rows"][name], flush=True)

    for name, *group in half_groups(data, False, a.n, a.protocol_limit, "sface"):
        run(name, *group)
    print(f"wrote {write_result(a.name, out)}")
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
