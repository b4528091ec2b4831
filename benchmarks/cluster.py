"""Clustering all of LFW as unlabelled faces: baselines against facerank's probability clustering.

    python -m benchmarks.cluster [--backbone dlib|sface] [--edited 1500] [--synthetic 100000]

Thresholds and the probability map are fitted on identity fold True (`train.split.identity_fold`,
seed 0) and reported on fold False; the same settings are then run on all 13,233 images.
Variant "edited": a seeded subset of the images of people with >= 2 images is replaced by its
chip-level mask / 24-px versions (`eval.protocols.occluded_queries`, half each).
Timing: each method on all 13,233 faces after extraction (2 cores, shared machine); ours also on
`--synthetic` random vectors around 10,000 synthetic identities (time only).
Writes benchmarks/results/cluster-<backbone>.json.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import write_result
from facerank.clustering import algorithms as A
from facerank.clustering import metrics as M
from facerank.clustering.probability import LogisticProb, fit_logistic
from facerank.eval.protocols import EvalData, lfw_extractor, occluded_queries
from facerank.train.split import identity_fold

P_LINKS = (0.4, 0.5, 0.6, 0.7, 0.8)
FLOORS = (None, 0.5, 0.7)


def baselines(backbone: str) -> list:
    """face_recognition's habit on dlib (0.6 on descriptors); SFace's cosine 0.363."""
    if backbone == "dlib":
        return [A.ChineseWhispers(0.6), A.DBSCANCluster(0.6), A.Agglomerative(0.6)]
    cos = 0.363
    return [A.ChineseWhispers(None, cosine=cos), A.DBSCANCluster(1 - cos, metric="cosine"),
            A.Agglomerative(1 - cos, metric="cosine")]


def confidence_of(data_features, backbone_id: str) -> np.ndarray | None:
    from facerank.uncertainty.confidence import confidences, default_head, relative

    found = default_head(backbone_id)
    if found is None:
        return None
    head, meta = found
    try:
        return relative(confidences(data_features, head).face, meta)
    except Exception:  # noqa: BLE001 - no grid in these features: no confidence
        return None


def run(backbone: str, edited: int, synthetic: int, seed: int = 0) -> dict:
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=False)
    y = data.lfw.labels
    feats = data.features
    variants = {"clean": feats.descriptors.astype(np.float32)}
    conf = {"clean": confidence_of(feats, data.extractor.model_id)}
    if edited:
        rng = np.random.default_rng(seed)
        multi = data.lfw.people_with_at_least(2)
        pool = np.flatnonzero(np.isin(y, multi))
        pick = np.sort(rng.choice(pool, size=min(edited, len(pool)), replace=False))
        halves = {"mask": pick[::2], "lowres24": pick[1::2]}
        x = variants["clean"].copy()
        edited_sets = {}
        for kind, rows in halves.items():
            occ = occluded_queries(data, kind, rows, seed, progress=False)
            x[rows] = occ.descriptors.astype(np.float32)
            edited_sets[kind] = (rows, occ)
        variants["edited"] = x
        c = conf["clean"]
        if c is not None:
            from facerank.face.features import FeatureSet

            c = c.copy()
            for rows, occ in edited_sets.values():
                c[rows] = confidence_of(FeatureSet.take(occ, np.arange(len(rows))),
                                        data.extractor.model_id)
        conf["edited"] = c
    fold = identity_fold(y, seed)
    tr, te = np.flatnonzero(fold), np.flatnonzero(~fold)
    out: dict = {"backbone": backbone, "model_id": data.extractor.model_id, "images": len(y),
                 "people": int(len(np.unique(y))), "edited_images": edited,
                 "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "variants": {}}
    for name, x in variants.items():
        cv = conf[name]
        xs = A.unit(x[tr])
        s, i = A.knn(xs, 30)
        r, c, ss = A.edges(s, i)
        prob = fit_logistic(ss, y[tr][r] == y[tr][c])
        # choose p_link then the confidence floor on fold True
        sel = []
        for pl in P_LINKS:
            for fl in FLOORS if cv is not None else (None,):
                lab = A.ProbabilityCluster(prob, p_link=pl, min_confidence=fl).fit(
                    x[tr], None if cv is None else cv[tr])
                sel.append((M.bcubed(lab, y[tr])["f1"], pl, fl))
        best = max(sel, key=lambda t: t[0])
        ours = A.ProbabilityCluster(prob, p_link=best[1], min_confidence=best[2])
        res: dict = {"probability": prob.to_dict(), "cosine_at_p50": prob.score_at(0.5),
                     "chosen_on_fold_true": {"p_link": best[1], "min_confidence": best[2],
                                             "bcubed_f1": round(best[0], 2)},
                     "selection": [[round(a, 2), b, f] for a, b, f in sel],
                     "fold_false": {}, "all": {}}
        methods = [ours, *baselines(backbone)]
        out["variants"][name] = res
        for part, rows in (("fold_false", te), ("all", np.arange(len(y)))):
            for m in methods:
                t0 = time.perf_counter()
                if m is ours:
                    lab = m.fit(x[rows], None if cv is None else cv[rows])
                else:
                    lab = m.fit(x[rows])
                dt = time.perf_counter() - t0
                res[part][m.name] = {**M.summary(lab, y[rows]), "seconds": round(dt, 2)}
                print(backbone, name, part, m.name, res[part][m.name], flush=True)
                write_result(f"cluster-{backbone}", {**out, "partial": True})
        # ours without the confidence floor, for the ablation
        if best[2] is not None:
            lab = A.ProbabilityCluster(prob, p_link=best[1]).fit(x[te])
            res["fold_false"]["probability-no-url"] = M.summary(lab, y[te])
    if synthetic:
        rng = np.random.default_rng(seed)
        d = variants["clean"].shape[1]
        centres = A.unit(rng.normal(size=(10_000, d)).astype(np.float32))
        who = rng.integers(0, len(centres), synthetic)
        xv = A.unit(centres[who] + 0.05 * rng.normal(size=(synthetic, d)).astype(np.float32))
        prob = LogisticProb(20.0, -14.0)  # p = 0.5 at cosine 0.7 (time only)
        t0 = time.perf_counter()
        lab = A.ProbabilityCluster(prob).fit(xv)
        out["synthetic"] = {"n": synthetic, "seconds": round(time.perf_counter() - t0, 2),
                            "clusters": int(lab.max() + 1)}
        print("synthetic", out["synthetic"], flush=True)
    out["loadavg_end"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dlib", choices=["dlib", "sface"])
    ap.add_argument("--edited", type=int, default=1500)
    ap.add_argument("--synthetic", type=int, default=100_000)
    a = ap.parse_args()
    out = run(a.backbone, a.edited, a.synthetic)
    print(write_result(f"cluster-{a.backbone}", out))


if __name__ == "__main__":
    main()
