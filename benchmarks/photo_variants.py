"""Stage-1 P@1 of each harder photo variant (`facerank.eval.photo_variants`), per backbone.

A seeded subset of queries from one LFW identity half (people with >= 2 images; half B by
default), each edited on the photo before detection, detected and embedded again, ranked
against all 13,233 clean LFW images minus its own original (the `lfw-mask-photo` gallery rule).
The gallery is always the cached evaluation set-up (HOG, centre face).

`--detector lfw` detects the queries with that same set-up. `--detector yunet` uses the
product's defaults for the queries (YuNet, largest face); a query where YuNet finds no face is
still ranked from the central box, and the JSON gives P@1 over all queries (`p_at_1`), over the
queries with a face found (`p_at_1_detected`, as the product would answer) and the share found.
`clean` is then the unedited photo through YuNet too.

    python -m benchmarks.photo_variants --backbone sface --n 1000 --variants hand scarf
    python -m benchmarks.photo_variants --backbone sface --detector yunet --n 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import EvalData, lfw_extractor
from facerank.face.features import FeatureSet
from facerank.ranking import cosine_topk
from facerank.train.data import (
    TRAIN_VARIANT_SEED,
    found_face,
    photo_variant,
    query_extractor,
    variant_queries,
)


def correct_at_1(data: EvalData, queries: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """(Q,) bool: the top-1 (own original excluded) is the same person."""
    r = cosine_topk(queries.embeddings, data.features.embeddings, 1, exclude=rows)
    labels = data.lfw.labels
    return labels[r.indices[:, 0]] == labels[rows]


def p_at_1(data: EvalData, queries: FeatureSet, rows: np.ndarray) -> float:
    """% of queries whose top-1 (own original excluded) is the same person."""
    return float(100.0 * correct_at_1(data, queries, rows).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--detector", default="lfw", choices=["lfw", "yunet"],
                    help="queries: the evaluation set-up (HOG) or the product's YuNet")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="query subset seed")
    ap.add_argument("--variant-seed", type=int, default=TRAIN_VARIANT_SEED)
    ap.add_argument("--half", default="B", choices=["A", "B"],
                    help="identity half of the queries (A = identity_fold True)")
    ap.add_argument("--variants", nargs="+", default=["clean", *PHOTO_VARIANTS])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    data = EvalData.load(lfw_extractor(backbone=a.backbone), progress=False)
    fx = None if a.detector == "lfw" else query_extractor(a.detector, a.backbone)
    rows = variant_queries(data.lfw.labels, a.n, a.seed, train_fold=a.half == "A")
    det = "" if a.detector == "lfw" else f"_{a.detector}"
    half = "" if a.half == "B" else "_halfA"
    out = a.out or Path(f"benchmarks/results/photo_variants_{a.backbone}{det}{half}_n{a.n}.json")
    res = json.loads(out.read_text()) if out.is_file() else {}
    res.setdefault("setup", {
        "backbone": data.extractor.model_id, "queries": len(rows), "query_seed": a.seed,
        "variant_seed": a.variant_seed,
        "half": f"identity half {a.half} (identity_fold {a.half == 'A'}, split seed 0)",
        "query_detector": "evaluation set-up (HOG, centre face, central box)"
        if a.detector == "lfw" else "YuNet, largest face (product defaults); central box "
        "when none is found, counted in p_at_1 and left out of p_at_1_detected",
        "gallery": "all 13,233 clean LFW images (evaluation set-up) minus the query's original",
        "command": "python -m benchmarks.photo_variants " + " ".join(argv or [])})
    for name in a.variants:
        t0 = time.perf_counter()
        q = photo_variant(name, rows, a.variant_seed, data=data, progress=False, queries=fx)
        ok = correct_at_1(data, q, rows)
        found = found_face(q)
        res.setdefault("p_at_1", {})[name] = float(100 * ok.mean())
        res.setdefault("detected", {})[name] = float(found.mean())
        res.setdefault("p_at_1_detected", {})[name] = (float(100 * ok[found].mean())
                                                       if found.any() else None)
        res.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: P@1 {res['p_at_1'][name]:.2f} (found faces "
              f"{res['p_at_1_detected'][name]}) detected {found.mean():.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res["p_at_1"], indent=2))
    return res


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
