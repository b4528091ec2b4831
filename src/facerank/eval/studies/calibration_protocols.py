"""Identity-disjoint anchor sets on LFW and the protocols scored with a calibrator.

Anchors never share an identity with the faces they calibrate (`check_disjoint` enforces it):
  * LFW pairs: for each of the 10 folds, the anchors are LFW images of people who appear in
    none of that fold's 600 pairs;
  * identification and open set: the identity-disjoint halves of `identity_fold` — anchors
    (and IDA-L's training faces) from one half, queries and gallery from the other, both
    directions reported.
By default an anchor set holds one seeded image per person (the paper's real-db: "one image
per identity"); `per_identity=None` keeps every image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facerank.calibrate.anchors import AnchorSet
from facerank.calibrate.base import Calibrator
from facerank.errors import InputError
from facerank.eval import metrics
from facerank.eval.protocols import EvalData, openset_split, verification_metrics
from facerank.ranking import Ranking
from facerank.train.split import identity_fold

Factory = Callable[[np.ndarray], Calibrator | None]  # LFW rows allowed as anchors -> calibrator


def pick_per_identity(rows: np.ndarray, labels: np.ndarray, per_identity: int | None,
                      seed: int = 0) -> np.ndarray:
    """At most `per_identity` seeded rows of each identity among `rows` (None: all), sorted."""
    rows = np.asarray(rows, dtype=np.int64)
    if per_identity is None:
        return rows
    perm = np.random.default_rng(seed).permutation(rows)
    lab = labels[perm]
    order = np.argsort(lab, kind="stable")
    lab_sorted = lab[order]
    first = np.searchsorted(lab_sorted, lab_sorted, side="left")
    rank = np.arange(len(order)) - first
    return np.sort(perm[order[rank < per_identity]])


def check_disjoint(anchor_labels: np.ndarray, compared_labels: np.ndarray) -> None:
    """InputError if any anchor identity is among the compared faces' identities."""
    both = np.intersect1d(np.asarray(anchor_labels), np.asarray(compared_labels))
    if len(both):
        raise InputError(f"{len(both)} anchor identit(y/ies) also among the compared faces "
                         f"(first: {both[0]!r}); anchors must be identity-disjoint")


def anchors_from_rows(data: EvalData, rows: np.ndarray, **meta: object) -> AnchorSet:
    names = np.asarray(data.lfw.names)
    return AnchorSet(data.features.embeddings[rows], data.extractor.model_id,
                     names[data.lfw.labels[rows]], {"source": "lfw", **meta})


def pairs_fold_anchor_rows(data: EvalData, pairs, fold: int,  # noqa: ANN001
                           per_identity: int | None = 1, seed: int = 0) -> np.ndarray:
    """LFW rows of people absent from pairs fold `fold` (sub-sampled per identity)."""
    labels = data.lfw.labels
    in_fold = pairs.fold == fold
    used = np.union1d(labels[pairs.a[in_fold]], labels[pairs.b[in_fold]])
    rows = np.flatnonzero(~np.isin(labels, used))
    return pick_per_identity(rows, labels, per_identity, seed)


def half_anchor_rows(data: EvalData, anchor_fold: bool, split_seed: int = 0,
                     per_identity: int | None = 1, seed: int = 0) -> np.ndarray:
    """LFW rows of identity half `anchor_fold` (sub-sampled per identity)."""
    fold = identity_fold(data.lfw.labels, split_seed)
    return pick_per_identity(np.flatnonzero(fold == anchor_fold), data.lfw.labels,
                             per_identity, seed)


# ---- pairs ----------------------------------------------------------------------------------


def pair_scores(data: EvalData, pairs, factory: Factory,  # noqa: ANN001
                b_emb: np.ndarray | None = None) -> np.ndarray:
    """(P,) calibrated scores of pairs.txt, each fold's calibrator built from the LFW images
    of people absent from that fold (`factory(rows)`).

    b_emb (P, D): replacement embeddings of each pair's second image (occluded variants).
    """
    emb = data.features.embeddings
    labels = data.lfw.labels
    a = emb[pairs.a]
    b = emb[pairs.b] if b_emb is None else b_emb
    out = np.empty(len(pairs.a))
    for f in np.unique(pairs.fold):
        m = pairs.fold == f
        rows = pairs_fold_anchor_rows(data, pairs, int(f), per_identity=None)
        check_disjoint(labels[rows], np.union1d(labels[pairs.a[m]], labels[pairs.b[m]]))
        cal = factory(rows)
        out[m] = (np.einsum("pd,pd->p", a[m], b[m]) if cal is None
                  else cal.score_pairs(a[m], b[m]))
    return out


def verification(scores: np.ndarray, pairs) -> dict:  # noqa: ANN001
    """10-fold accuracy, TAR@FAR 1e-3 / 1e-2 and AUC (the evaluator's metrics)."""
    return verification_metrics(scores, pairs)


# ---- gallery scoring ------------------------------------------------------------------------


def calibrated_matrix(cal: Calibrator | None, q: np.ndarray, g: np.ndarray,
                      g_terms: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """(Q, G) calibrated scores of every query against every gallery face (float32)."""
    if cal is None:
        return (q @ g.T).astype(np.float32)
    tg = cal.face_terms(g) if g_terms is None else g_terms
    out = np.empty((len(q), len(g)), dtype=np.float32)
    for s in range(0, len(q), chunk):
        qs = q[s : s + chunk]
        out[s : s + chunk] = cal.combine(qs @ g.T, cal.face_terms(qs)[:, None, :],
                                         tg[None, :, :])
    return out


def calibrated_topk(cal: Calibrator | None, q: np.ndarray, g: np.ndarray, k: int,
                    exclude: np.ndarray | None = None) -> Ranking:
    """Top-k gallery rows by calibrated score (the whole gallery scored); stage1 = cosine."""
    mat = calibrated_matrix(cal, q, g)
    if exclude is not None:
        has = exclude >= 0
        mat[np.flatnonzero(has), exclude[has]] = -np.inf
    k = min(k, g.shape[0] - int(exclude is not None and (exclude >= 0).any()))
    part = np.argpartition(-mat, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(mat, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    scores = np.take_along_axis(mat, idx, axis=1)
    cos = np.einsum("qd,qkd->qk", q, g[idx]).astype(np.float32)
    return Ranking(idx.astype(np.int64), scores.astype(np.float32),
                   {"stage1": cos, "calibrated": scores.astype(np.float32)})


def retrieval(ranking: Ranking, q_labels: np.ndarray, g_labels: np.ndarray,
              exclude: np.ndarray | None) -> dict:
    """P@1, MAP@R, ... of a ranking (R = the query's relevant gallery images)."""
    r = (g_labels[None, :] == q_labels[:, None]).sum(axis=1)
    if exclude is not None:
        has = exclude >= 0
        r = r - (has & (g_labels[np.where(has, exclude, 0)] == q_labels))
    match = g_labels[ranking.indices] == q_labels[:, None]
    m = metrics.retrieval_metrics_from_ranked(match, r)
    return {k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in m.items()}


def openset(data: EvalData, cal: Calibrator | None, people: np.ndarray, seed: int = 0) -> dict:
    """run_openset's protocol on the people `people` only: TPIR@FPIR 1 % / 10 %, rank 1."""
    lfw = data.lfw
    multi = lfw.people_with_at_least(2)
    multi = multi[np.isin(lfw.labels[multi], people)]
    gallery_index, mated, nonmated = openset_split(lfw.labels, multi, seed)
    emb = data.features.embeddings
    g = emb[gallery_index]
    tg = cal.face_terms(g) if cal is not None else None
    mats = [calibrated_matrix(cal, emb[p], g, tg).astype(np.float64) for p in (mated, nonmated)]
    res = metrics.tpir_at_fpir(mats[0], lfw.labels[mated], mats[1], lfw.labels[gallery_index],
                               [0.01, 0.1])
    return {"tpir_at_fpir_1e-2": float(res["tpir"][0]),
            "tpir_at_fpir_1e-1": float(res["tpir"][1]), "rank1": float(res["rank1"]),
            "n_gallery": len(gallery_index), "n_mated": len(mated),
            "n_nonmated": len(nonmated)}
