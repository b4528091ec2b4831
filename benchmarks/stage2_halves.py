"""The shipped Stage 2 methods as the product runs them (their bundled gates and pre-gates),
against Stage 1, per LFW protocol and photo variant, on the people of one identity half.

    python -m benchmarks.stage2_halves --backbone sface --methods vit+emd vit emd

Groups as `facerank train gate` builds them (`train.gate.gate_groups` set-up, without any
Stage-2 scoring): `--protocol-limit` seeded queries per LFW protocol (the half's share of
them) and `--n` seeded photos per photo variant from the half, through YuNet (largest face,
a central box when none is found), against all 13,233 clean LFW images minus the query's
original. Each method is `make_stage2(name, backbone=...)` and re-ranks through its own
`rerank`, so a pre-gate skips Stage 2 where it would. Writes
benchmarks/results/stage2_halves_<backbone>_half<H>.json: per group, queries, P@1 of Stage 1
and of each method, and seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np

from benchmarks.common import write_result
from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import IDENTIFICATION, EvalData, lfw_extractor, setup_identification
from facerank.ranking import cosine_topk
from facerank.rerank.base import make_stage2
from facerank.train.data import TRAIN_VARIANT_SEED, photo_variant, query_extractor, variant_queries
from facerank.train.split import identity_fold


def half_groups(data: EvalData, half_a: bool, n: int, protocol_limit: int, backbone: str
                ) -> Iterator[tuple]:
    """(name, queries, query labels, gallery, gallery labels, exclude) of each LFW protocol
    (the half's share of `protocol_limit` seeded queries) and photo variant (`n` seeded photos
    of the half through YuNet), against all clean LFW images minus the query's original."""
    labels = data.lfw.labels
    in_half = identity_fold(labels, 0) == half_a
    for protocol in IDENTIFICATION:
        st = setup_identification(data, protocol, seed=0, limit=protocol_limit, progress=False)
        m = in_half[st.query_index]
        yield (protocol, st.queries.take(np.flatnonzero(m)), st.query_labels[m], st.gallery,
               st.gallery_labels, st.exclude[m])
    fx = query_extractor("yunet", backbone)
    rows = variant_queries(labels, n, 0, 0, train_fold=half_a)
    for name in ["clean", *PHOTO_VARIANTS]:
        q = photo_variant(name, rows, TRAIN_VARIANT_SEED, data=data, progress=False, queries=fx)
        yield f"photo-{name}", q, labels[rows], data.features, labels, rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="sface", choices=["dlib", "sface"])
    ap.add_argument("--methods", nargs="+", default=["vit+emd"])
    ap.add_argument("--half", default="B", choices=["A", "B"])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--protocol-limit", type=int, default=1000)
    ap.add_argument("--name", default=None)
    a = ap.parse_args(argv)
    data = EvalData.load(lfw_extractor(backbone=a.backbone), progress=False)
    on = {} if a.backbone == "dlib" else {"backbone": a.backbone}
    methods = {m: make_stage2(m, **on) for m in a.methods}
    out: dict = {"setup": vars(a), "describe": {m: r.describe() for m, r in methods.items()},
                 "rows": []}

    def run(name: str, q, ql: np.ndarray, gal, gl: np.ndarray, excl: np.ndarray) -> None:  # noqa: ANN001
        ranking = cosine_topk(q.embeddings, gal.embeddings, 100, excl)
        row = {"group": name, "queries": len(ql),
               "p1_stage1": float(100 * (gl[ranking.indices[:, 0]] == ql).mean())}
        for m, rr in methods.items():
            t0 = time.perf_counter()
            got = rr.rerank(q, gal, ranking)
            row[f"p1_{m}"] = float(100 * (gl[got.indices[:, 0]] == ql).mean())
            row[f"seconds_{m}"] = round(time.perf_counter() - t0, 1)
        out["rows"].append(row)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)

    for name, *group in half_groups(data, a.half == "A", a.n, a.protocol_limit, a.backbone):
        run(name, *group)
    print(f"wrote {write_result(a.name or f'stage2_halves_{a.backbone}_half{a.half}', out)}")
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
