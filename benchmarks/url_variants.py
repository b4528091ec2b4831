"""URL head on the photo variants of held-out people: does its confidence rank degraded faces
below clean ones, and do its sub-embeddings change P@1?

    python -m benchmarks.url_variants --backbone sface \
        --head src/facerank/uncertainty/models/url-sface_2021dec_int8bq.pt

The head was trained on identity half A (fold True); the queries are `--n` seeded images of
half B through the product's query chain (YuNet, largest face), clean and under every photo
variant (`benchmarks.photo_variants`, same cache). Per variant: AUROC of "clean vs this
variant" for the URL face confidence, for the raw descriptor norm and for the detector score
(1.0 = the measure always ranks the clean photo above the degraded one); Stage-1 cosine P@1
and URL confidence-weighted P@1 against all 13,233 clean LFW images minus the query's original
(the head's training people stay in the gallery as distractors); and Stage-1 P@1 of all variant
queries pooled after dropping the 20 % least confident.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import EvalData, lfw_extractor
from facerank.ranking import cosine_topk
from facerank.train.data import TRAIN_VARIANT_SEED, photo_variant, query_extractor, variant_queries
from facerank.uncertainty.confidence import load_url_head
from facerank.uncertainty.url import match_scores, run_head


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties count half."""
    scores = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable").astype(np.float64) + 1
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2)
                 / (len(pos) * len(neg)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--head", type=Path, required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop", type=float, default=0.2)
    ap.add_argument("--name", default=None)
    a = ap.parse_args(argv)
    data = EvalData.load(lfw_extractor(backbone=a.backbone), progress=False)
    head, meta = load_url_head(a.head, data.extractor.model_id)
    fold = bool(meta["split"]["train_fold"])
    labels = data.lfw.labels
    rows = variant_queries(labels, a.n, a.seed, train_fold=not fold)
    gal = data.features
    grid = head.config.grid
    g_out = run_head(head, gal.descriptors, None if grid is None else gal.grids[grid], batch=512)
    fx = query_extractor("yunet", a.backbone)
    res: dict = {"setup": {"head": str(a.head), "head_train_fold": fold,
                           "queries": len(rows), "half": f"identity_fold {not fold}",
                           "query_chain": "YuNet, largest face", "variant_seed":
                           TRAIN_VARIANT_SEED, "command": "python -m benchmarks.url_variants "
                           + " ".join(argv or [])}, "variants": {}}
    measures: dict[str, dict[str, np.ndarray]] = {}
    pooled_ok, pooled_conf = [], []
    for name in ["clean", *PHOTO_VARIANTS]:
        q = photo_variant(name, rows, TRAIN_VARIANT_SEED, data=data, progress=False, queries=fx)
        out = run_head(head, q.descriptors, None if grid is None else q.grids[grid])
        r1 = cosine_topk(q.embeddings, gal.embeddings, 1, exclude=rows)
        ok1 = labels[r1.indices[:, 0]] == labels[rows]
        s = match_scores(out.sub, out.conf, g_out.sub, g_out.conf)  # (Q, G)
        s[np.arange(len(rows)), rows] = -np.inf
        ok_url = labels[s.argmax(axis=1)] == labels[rows]
        measures[name] = {"url": out.face, "norm": np.linalg.norm(q.descriptors, axis=1),
                          "det": np.asarray(q.det_scores, np.float64)}
        row = {"p1_cosine": float(100 * ok1.mean()), "p1_url": float(100 * ok_url.mean()),
               "median_confidence": float(np.median(out.face) / meta["reference_confidence"])}
        if name != "clean":
            for m, v in measures[name].items():
                row[f"auroc_{m}"] = auroc(measures["clean"][m], v)
            pooled_ok.append(ok1)
            pooled_conf.append(out.face)
        res["variants"][name] = row
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    ok, conf = np.concatenate(pooled_ok), np.concatenate(pooled_conf)
    keep = conf >= np.quantile(conf, a.drop)
    res["pooled_variants"] = {"p1_cosine": float(100 * ok.mean()),
                              f"p1_cosine_drop{int(100 * a.drop)}": float(100 * ok[keep].mean())}
    print(res["pooled_variants"])
    path = write_result(a.name or f"url_variants_{a.backbone}_n{a.n}", res)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
