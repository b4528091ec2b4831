"""Stage-1 P@1 of each harder photo variant (`facerank.eval.photo_variants`), per backbone.

A seeded subset of queries from LFW identity half B (people with >= 2 images), each edited on
the photo before detection, detected and embedded again, ranked against all 13,233 clean LFW
images minus its own original (the `lfw-mask-photo` gallery rule).

    python -m benchmarks.photo_variants --backbone sface --n 1000 --variants hand scarf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import EvalData, lfw_extractor
from facerank.ranking import cosine_topk
from facerank.train.data import photo_variant, variant_queries


def p_at_1(data: EvalData, queries, rows: np.ndarray) -> float:  # noqa: ANN001
    """% of queries whose top-1 (own original excluded) is the same person."""
    r = cosine_topk(queries.embeddings, data.features.embeddings, 1, exclude=rows)
    labels = data.lfw.labels
    return float(100.0 * (labels[r.indices[:, 0]] == labels[rows]).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="query subset seed")
    ap.add_argument("--variant-seed", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(PHOTO_VARIANTS))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    data = EvalData.load(lfw_extractor(backbone=a.backbone), progress=False)
    rows = variant_queries(data.lfw.labels, a.n, a.seed)
    out = a.out or Path(f"benchmarks/results/photo_variants_{a.backbone}_n{a.n}.json")
    res = json.loads(out.read_text()) if out.is_file() else {}
    res.setdefault("setup", {"backbone": data.extractor.model_id, "queries": len(rows),
                             "query_seed": a.seed, "variant_seed": a.variant_seed,
                             "half": "identity half B (identity_fold False, split seed 0)",
                             "gallery": "all 13,233 clean LFW images minus the query's original"})
    res.setdefault("p_at_1", {})
    res["p_at_1"]["clean"] = p_at_1(data, data.features.take(rows), rows)
    for name in a.variants:
        t0 = time.perf_counter()
        q = photo_variant(name, rows, a.variant_seed, data=data, progress=False)
        detected = float(np.mean([not s.startswith("fallback") for s in q.det_sources]))
        res["p_at_1"][name] = p_at_1(data, q, rows)
        res.setdefault("detected", {})[name] = detected
        print(f"{name}: P@1 {res['p_at_1'][name]:.2f} detected {detected:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res["p_at_1"], indent=2))
    return res


if __name__ == "__main__":
    main()
