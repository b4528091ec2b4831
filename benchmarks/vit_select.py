"""Choose among Face-ViT checkpoints on people none of them trained on: identity half A's
sub-fold 0 (`train.split.sub_fold`), the people a `--subfold 1` model leaves for its gate.

    facerank train vit --backbone sface --grid l2 --variants crop,mask,sunglasses \\
        --epochs 20 --subfold 1 --extra-seeds 2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17 \\
        --out a.pt
    python -m benchmarks.vit_select --kinds crop clean mask --checkpoints a.pt b.pt

Queries: `--n` seeded images of those people (people with >= 2 images), clean or as the
evaluator's chip-level variant (seed 0, the evaluation seed; training uses seed 1 and the
`--extra-seeds`). Gallery: every clean image of half A but the query's own. For each query,
Stage 1's cosine top-100, re-ordered by alpha x ViT + (1 - alpha) x cosine: P@1 (%) per alpha
(0 is Stage 1), and the share of queries with a mate in the top 100 (the ceiling). Identity
half B is never read. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result
from facerank.eval.protocols import lfw_extractor, occluded_queries
from facerank.ranking import cosine_topk
from facerank.rerank.vit.reranker import load_model
from facerank.rerank.vit.train import GridTable, blend_p_at_1, score_table_pairs
from facerank.train.data import load_training_data
from facerank.train.split import sub_fold

ALPHAS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--kinds", nargs="+", default=["crop"])
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--name", default="vit_select_sface_halfA_sub0")
    args = ap.parse_args(argv)

    kinds = tuple(k for k in args.kinds if k != "clean")
    td = load_training_data(lfw_extractor(backbone=args.backbone), kinds=kinds, progress=False)
    rows_a, _ = td.rows(True)
    labels = td.labels
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    pool = rows_a[~sub_fold(labels, True, td.split_seed)[rows_a] & (counts[inverse][rows_a] >= 2)]
    q = np.sort(np.random.default_rng(args.seed).choice(pool, min(args.n, len(pool)),
                                                        replace=False))
    gallery = td.clean.take(rows_a)
    own = np.searchsorted(rows_a, q)  # each query's own image in the gallery, left out
    match_of = labels[rows_a]
    out: dict = {"queries": int(len(q)), "gallery": int(len(rows_a)), "seed": args.seed,
                 "people": "identity half A, sub-fold 0", "results": {}}
    for ck in args.checkpoints:
        model, cfg = load_model(ck, args.backbone)
        model.eval()
        grid = cfg["grid"]
        res = {}
        for kind in args.kinds:
            t0 = time.perf_counter()
            fs = td.clean.take(q) if kind == "clean" else occluded_queries(td.data, kind, q, 0,
                                                                            False)
            rank = cosine_topk(fs.embeddings, gallery.embeddings, 100, own)
            cand = rank.indices
            nq, kk = cand.shape
            table = GridTable([np.concatenate([fs.grids[grid], gallery.grids[grid]])], None)
            vit = score_table_pairs(model, table, np.repeat(np.arange(nq), kk),
                                    np.zeros(nq * kk, np.int64), (nq + cand).reshape(-1)
                                    ).reshape(nq, kk)
            match = match_of[cand] == labels[q][:, None]
            row = {a: round(100 * p1, 2)
                   for a, p1 in blend_p_at_1(rank.scores, vit, match, ALPHAS).items()}
            row["mate_in_top100"] = round(100 * float(match.any(1).mean()), 2)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            res[kind] = row
            print(ck, kind, row, flush=True)
        out["results"][ck] = {"command": cfg.get("command"), "alpha": cfg.get("alpha"), **res}
    write_result(args.name, out)
    return out


if __name__ == "__main__":
    main()
