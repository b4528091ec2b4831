"""Choose IDA's tau and k (and AS-norm's cohort size) on anchor-side people only.

The people allowed as anchors are split again by identity (`identity_fold`, seed 1): one part
becomes the anchors, the other the tuning faces; every image pair of the tuning faces is
scored and the setting with the best TAR at FAR 1e-3 wins (calibration matters most at low
false accept rates). The faces a protocol finally evaluates never enter this choice.
"""

from __future__ import annotations

import numpy as np

from facerank.calibrate.anchors import AnchorSet, SupportIndex
from facerank.calibrate.ida import log_dao, log_density
from facerank.eval.protocols import EvalData
from facerank.eval.studies.calibration_protocols import pick_per_identity
from facerank.train.split import identity_fold

TAUS = (1.0, 10.0, 30.0, 100.0, 300.0)
KS = (1, 5, 10, 20, 50)
TOP_NS = (10, 50, 100, 200, 400)
TUNING_FACES = 1500


def _tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-3) -> float:
    neg = np.sort(scores[~same])[::-1]
    thr = neg[max(0, int(np.floor(far * len(neg))) - 1)]
    return float((scores[same] > thr).mean())


def tuning_split(data: EvalData, rows: np.ndarray, seed: int = 0, n_faces: int = TUNING_FACES
                 ) -> tuple[AnchorSet, np.ndarray, np.ndarray]:
    """(anchors, tuning embeddings (N, D), tuning labels) from `rows` only."""
    labels = data.lfw.labels[rows]
    sub = identity_fold(labels, 1)
    a_rows = pick_per_identity(rows[sub], data.lfw.labels, 1, seed)
    t_rows = rows[~sub]
    counts = np.bincount(data.lfw.labels[t_rows])
    t_rows = t_rows[counts[data.lfw.labels[t_rows]] >= 2]  # faces with a genuine partner
    if len(t_rows) > n_faces:
        t_rows = np.sort(np.random.default_rng(seed).choice(t_rows, n_faces, replace=False))
    emb = data.features.embeddings
    names = np.asarray(data.lfw.names)
    anchors = AnchorSet(emb[a_rows], data.extractor.model_id, names[data.lfw.labels[a_rows]])
    return anchors, emb[t_rows], data.lfw.labels[t_rows]


def sweep(anchors: AnchorSet, x: np.ndarray, y: np.ndarray, taus=TAUS, ks=KS,  # noqa: ANN001
          top_ns=TOP_NS) -> dict:
    """TAR@FAR=1e-3 on all pairs of x for cosine, IDA (tau x k) and AS-norm (top N)."""
    iu = np.triu_indices(len(x), 1)
    cos = (x @ x.T)[iu]
    same = (y[:, None] == y[None, :])[iu]
    kmax = max(max(ks), max(top_ns))
    sims = SupportIndex(anchors).search(x, min(kmax, len(anchors)))[0]
    out: dict = {"cosine": _tar_at_far(cos, same), "ida": {}, "asnorm": {}}
    for k in ks:
        for tau in taus:
            u = log_density(sims[:, :k], tau)
            s = log_dao(cos, u[iu[0]], u[iu[1]], tau)
            out["ida"][f"k={k},tau={tau:g}"] = _tar_at_far(s, same)
    for n in top_ns:
        mu, sd = sims[:, :n].mean(1), sims[:, :n].std(1)
        s = 0.5 * ((cos - mu[iu[0]]) / sd[iu[0]] + (cos - mu[iu[1]]) / sd[iu[1]])
        out["asnorm"][f"top_n={n}"] = _tar_at_far(s, same)
    return out


def choose(data: EvalData, rows: np.ndarray, seed: int = 0) -> dict:
    """{"k", "tau", "top_n", "sweep"} chosen on the people of `rows` (see module doc)."""
    anchors, x, y = tuning_split(data, rows, seed)
    res = sweep(anchors, x, y)
    best_ida = max(res["ida"], key=lambda n: res["ida"][n])
    best_as = max(res["asnorm"], key=lambda n: res["asnorm"][n])
    k, tau = (float(v.split("=")[1]) for v in best_ida.split(","))
    return {"k": int(k), "tau": tau, "top_n": int(best_as.split("=")[1]), "sweep": res,
            "n_tuning_faces": len(x), "n_tuning_anchors": len(anchors)}
