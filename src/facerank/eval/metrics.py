"""Retrieval, verification and open-set metrics (DESIGN.md §4), vectorised numpy/torch.

Conventions shared by every function here:

- Higher score = more similar (cosine, negative EMD, ...).
- A pair or probe is *accepted* iff ``score > threshold`` (strict). With a strict rule the
  threshold can be one of the observed scores, and ties are never split.
- Rates are fractions in [0, 1], not percentages.
- Bad arguments (shapes that do not fit, NaN scores, rates outside [0, 1]) raise `InputError`.

Retrieval metrics follow pytorch-metric-learning's `AccuracyCalculator` (v2.9) exactly, with
``R`` = number of *other* gallery items that carry the query's label:

- ``p_at_1``: is the top-ranked gallery item of the query's label.
- ``r_precision``: fraction of the top ``R`` that carry the query's label.
- ``map_at_r``: ``(1/R) * sum_{i<=R, item i relevant} P@i`` (MAP@R, Musgrave et al. 2020).

Queries with ``R = 0`` are left out of all three and counted in ``n_skipped_no_relevant``
(PML calls them "lone" queries and does the same). When only the top ``K < R`` items are known
(PML with ``k`` smaller than the largest class), PML computes R-precision over the first
``min(R, K)`` items with denominator ``min(R, K)``, but MAP@R over the first ``min(R, K)``
items with denominator ``R`` -- so a truncated list can still reach RP = 1 but not MAP@R = 1.
`retrieval_metrics_from_ranked` reproduces both, and counts such queries in ``n_truncated``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from facerank.errors import InputError

__all__ = [
    "retrieval_metrics",
    "retrieval_metrics_from_ranked",
    "roc_auc",
    "tar_at_far",
    "tpir_at_fpir",
    "verification_accuracy_10fold",
]

# Elements of one (chunk, G) block that `retrieval_metrics` works on at a time (~32 MiB of
# float32 scores plus a few bool/int temporaries of the same shape).
_CHUNK_ELEMENTS = 1 << 23
_EPS_COUNT = 1e-9  # guards floor(rate * n) against 0.29 * 100 = 28.999...


# --------------------------------------------------------------------------------------------
# Argument checks


def _vector(x: ArrayLike, name: str) -> NDArray[Any]:
    a = np.asarray(x)
    if a.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _bool_vector(x: ArrayLike, name: str) -> NDArray[np.bool_]:
    a = _vector(x, name)
    if a.dtype != np.bool_:
        if a.size and not np.isin(a, (0, 1)).all():
            raise InputError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
        a = a.astype(bool)
    return a


def _int_vector(x: ArrayLike, name: str) -> NDArray[np.int64]:
    a = _vector(x, name)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def _score_vector(x: ArrayLike, name: str) -> NDArray[np.float64]:
    a = _vector(x, name)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{name} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return a


def _score_matrix(x: ArrayLike, name: str) -> NDArray[np.floating[Any]]:
    """(N, G) float32/float64 matrix, checked finite chunk by chunk (no (N, G) temporary)."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be 2-D (queries x gallery), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise InputError(f"{name} must be real numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
    elif a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    step = max(1, _CHUNK_ELEMENTS // max(1, a.shape[1]))
    for start in range(0, a.shape[0], step):
        if not np.isfinite(a[start : start + step]).all():
            raise InputError(f"{name} contains NaN or infinite values (rows {start}..)")
    return a


def _same_length(**arrays: NDArray[Any]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise InputError(f"lengths do not match: {desc}")


def _rates(rate: float | Sequence[float], name: str) -> tuple[NDArray[np.float64], bool]:
    scalar = np.ndim(rate) == 0
    r = np.atleast_1d(np.asarray(rate, dtype=np.float64))
    if r.ndim != 1 or r.size == 0:
        raise InputError(f"{name} must be a float or a non-empty sequence of floats")
    if not (np.isfinite(r).all() and (r >= 0).all() and (r <= 1).all()):
        raise InputError(f"{name} must lie in [0, 1] (a fraction, not a percentage), got {rate}")
    return r, scalar


def _encode_labels(
    query_labels: ArrayLike, gallery_labels: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    """Map both label arrays (ints, strings, ...) to shared codes 0..n-1."""
    q = _vector(query_labels, "query_labels")
    g = _vector(gallery_labels, "gallery_labels")
    try:
        uniq, inv = np.unique(np.concatenate([q, g]), return_inverse=True)
    except TypeError as exc:
        raise InputError(f"query_labels and gallery_labels cannot be compared: {exc}") from exc
    inv = inv.astype(np.int64).reshape(-1)
    return inv[: len(q)], inv[len(q) :], len(uniq)


# --------------------------------------------------------------------------------------------
# Retrieval (P@1, R-precision, MAP@R)


def _per_query_retrieval(
    match: NDArray[np.bool_], r: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """P@1, RP, AP@R per query from a ranked match matrix; NaN where r == 0."""
    q, k = match.shape  # (Q, K)
    valid = r > 0  # (Q,)
    lim = np.minimum(r, k)  # (Q,) ranks that count: first min(R, K)
    within = np.arange(k)[None, :] < lim[:, None]  # (Q, K)
    hits = match & within  # (Q, K)
    cum = np.cumsum(hits, axis=1, dtype=np.int64)  # (Q, K) relevant items up to rank i
    ranks = np.arange(1, k + 1, dtype=np.float64)  # (K,)
    prec_sum = np.where(hits, cum / ranks, 0.0).sum(axis=1)  # (Q,)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = match[:, 0].astype(np.float64)
        rp = hits.sum(axis=1) / lim.astype(np.float64)
        ap = prec_sum / r.astype(np.float64)
    nan = np.full(q, np.nan)
    return np.where(valid, p1, nan), np.where(valid, rp, nan), np.where(valid, ap, nan)


def _summarise(
    p1: NDArray[np.float64],
    rp: NDArray[np.float64],
    ap: NDArray[np.float64],
    r: NDArray[np.int64],
    k: NDArray[np.int64] | int,
    return_per_query: bool,
) -> dict[str, Any]:
    valid = r > 0
    n = int(valid.sum())

    def mean(x: NDArray[np.float64]) -> float:
        return float(x[valid].mean()) if n else float("nan")

    out: dict[str, Any] = {
        "p_at_1": mean(p1),
        "r_precision": mean(rp),
        "map_at_r": mean(ap),
        "n_queries": n,
        "n_skipped_no_relevant": int((~valid).sum()),
        "n_truncated": int((valid & (r > k)).sum()),
    }
    if return_per_query:
        out["per_query"] = {"p_at_1": p1, "r_precision": rp, "map_at_r": ap, "r": r}
    return out


def retrieval_metrics_from_ranked(
    ranked_labels_match: ArrayLike, r: ArrayLike, *, return_per_query: bool = False
) -> dict[str, Any]:
    """P@1, R-precision and MAP@R from top-K lists (e.g. a re-ranker's output).

    ranked_labels_match: (Q, K) bool, True where the k-th ranked gallery item has the query's
    label (the query itself and excluded items must already be left out of the ranking).
    r: (Q,) number of relevant gallery items per query (R; 0 = skip the query).

    Returns ``p_at_1``, ``r_precision``, ``map_at_r`` (fractions, means over queries with
    R > 0), ``n_queries``, ``n_skipped_no_relevant``, ``n_truncated`` (queries with K < R, see
    the module docstring for how PML scores those), and with ``return_per_query`` a
    ``per_query`` dict of (Q,) arrays (NaN for skipped queries) plus ``r``.
    """
    m = np.asarray(ranked_labels_match)
    if m.ndim != 2:
        raise InputError(f"ranked_labels_match must be 2-D (queries x K), got shape {m.shape}")
    if m.shape[1] == 0:
        raise InputError("ranked_labels_match must have at least one ranked item (K >= 1)")
    if m.dtype != np.bool_:
        if m.size and not np.isin(m, (0, 1)).all():
            raise InputError("ranked_labels_match must be boolean (or 0/1)")
        m = m.astype(bool)
    rr = _int_vector(r, "r")
    if len(rr) != m.shape[0]:
        raise InputError(
            f"r has {len(rr)} entries but ranked_labels_match has {m.shape[0]} rows (queries)"
        )
    if (rr < 0).any():
        raise InputError("r (number of relevant items) must be >= 0")
    too_many = m.sum(axis=1) > rr
    if too_many.any():
        i = int(np.flatnonzero(too_many)[0])
        raise InputError(
            f"query {i}: {int(m[i].sum())} ranked items match its label but r = {int(rr[i])};"
            " r must count every relevant gallery item (and exclude the query itself)"
        )
    p1, rp, ap = _per_query_retrieval(m, rr)
    return _summarise(p1, rp, ap, rr, m.shape[1], return_per_query)


def retrieval_metrics(
    scores: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    *,
    exclude: ArrayLike | None = None,
    query_gallery_index: ArrayLike | None = None,
    return_per_query: bool = False,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """P@1, R-precision and MAP@R of ranking a gallery by ``scores`` (PML definitions).

    scores: (Q, G) similarities, higher = closer. query_labels: (Q,), gallery_labels: (G,)
    (any comparable type: ints, names).
    exclude: optional (Q, G) bool, True = gallery item is not a candidate for that query
    (left out of the ranking and of R).
    query_gallery_index: optional (Q,) int, gallery index of the query itself (or of an item
    to drop for it, e.g. its clean original), -1 for none. ``np.arange(Q)`` with
    scores = queries x queries is PML's ``ref_includes_query=True`` (leave-one-out).

    Works chunk by chunk over queries (``torch.topk`` with K = the chunk's largest R), so only
    (chunk, G) temporaries are made. Equal scores are ordered by lower gallery index (as a
    stable sort would), so results do not depend on ``chunk_size``. Returns the dict of
    `retrieval_metrics_from_ranked` (``n_truncated`` is always 0 here).
    """
    s = _score_matrix(scores, "scores")  # (Q, G)
    nq, ng = s.shape
    qcode, gcode, n_labels = _encode_labels(query_labels, gallery_labels)  # (Q,), (G,)
    if len(qcode) != nq or len(gcode) != ng:
        raise InputError(
            f"scores has shape {s.shape} (queries x gallery) but query_labels has {len(qcode)}"
            f" and gallery_labels {len(gcode)} entries"
        )
    if ng == 0:
        raise InputError("the gallery is empty (scores has 0 columns)")
    excl: NDArray[np.bool_] | None = None
    if exclude is not None:
        excl = np.asarray(exclude)
        if excl.shape != (nq, ng):
            raise InputError(f"exclude must have the shape of scores {s.shape}, got {excl.shape}")
        if excl.dtype != np.bool_:
            raise InputError(f"exclude must be a bool mask, got dtype {excl.dtype}")
    self_idx: NDArray[np.int64] | None = None
    if query_gallery_index is not None:
        self_idx = _int_vector(query_gallery_index, "query_gallery_index")
        if len(self_idx) != nq:
            raise InputError(
                f"query_gallery_index has {len(self_idx)} entries but there are {nq} queries"
            )
        if ((self_idx < -1) | (self_idx >= ng)).any():
            raise InputError(f"query_gallery_index must be -1 or in [0, {ng}), got out of range")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // ng)
    elif chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")

    counts = np.bincount(gcode, minlength=n_labels)  # (L,) gallery items per label
    g_t = torch.from_numpy(gcode)  # (G,)
    p1 = np.empty(nq)
    rp = np.empty(nq)
    ap = np.empty(nq)
    r_all = np.empty(nq, dtype=np.int64)
    for a in range(0, nq, chunk_size):
        b = min(nq, a + chunk_size)
        qc = qcode[a:b]  # (C,)
        r = counts[qc].astype(np.int64)  # (C,)
        mask: NDArray[np.bool_] | None = None  # (C, G) excluded candidates
        if excl is not None:
            mask = excl[a:b].copy()
        if self_idx is not None:
            rows = np.flatnonzero(self_idx[a:b] >= 0)
            if rows.size:
                if mask is None:
                    mask = np.zeros((b - a, ng), dtype=bool)
                mask[rows, self_idx[a:b][rows]] = True
        sc = torch.from_numpy(np.ascontiguousarray(s[a:b]))  # (C, G)
        if mask is not None:
            same = gcode[None, :] == qc[:, None]  # (C, G)
            r -= (same & mask).sum(axis=1)
            sc = sc.masked_fill(torch.from_numpy(mask), float("-inf"))
        k = int(min(ng, max(1, r.max(initial=0))))
        vals, idx = torch.topk(sc, k, dim=1, largest=True, sorted=True)  # (C, K)
        # Deterministic ties: order by index, then stable sort by descending score.
        idx, order = torch.sort(idx, dim=1)
        vals = torch.gather(vals, 1, order)
        vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
        idx = torch.gather(idx, 1, order)
        # Rows where items tied with the K-th score were left out: redo them with a full
        # stable sort so the lower indices win there too (rare; exact ties only).
        kth = vals[:, -1:]  # (C, 1)
        redo = torch.nonzero((sc == kth).sum(1) > (vals == kth).sum(1)).flatten()
        if redo.numel():
            sv, si = torch.sort(sc[redo], dim=1, descending=True, stable=True)
            vals[redo], idx[redo] = sv[:, :k], si[:, :k]
        match = (g_t[idx] == torch.from_numpy(qc)[:, None]) & torch.isfinite(vals)  # (C, K)
        p1[a:b], rp[a:b], ap[a:b] = _per_query_retrieval(match.numpy(), r)
        r_all[a:b] = r
    return _summarise(p1, rp, ap, r_all, ng, return_per_query)


# --------------------------------------------------------------------------------------------
# Thresholds at a false-accept rate (shared by TAR@FAR and TPIR@FPIR)


def _thresholds_at_rates(
    negatives: NDArray[np.float64], rates: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lowest thresholds t with mean(negatives > t) <= rate; returns (t, achieved rate)."""
    n = len(negatives)
    desc = np.sort(negatives)[::-1]  # (N,)
    allowed = np.floor(rates * n + _EPS_COUNT).astype(np.int64)  # (F,) accepted negatives
    below_min = np.nextafter(desc[-1], -np.inf)  # accepts every negative
    thr = np.where(allowed >= n, below_min, desc[np.minimum(allowed, n - 1)])  # (F,)
    achieved = (negatives[None, :] > thr[:, None]).mean(axis=1)  # (F,)
    return thr, achieved


def _pack(scalar: bool, values: dict[str, NDArray[np.float64]]) -> dict[str, Any]:
    if scalar:
        return {k: float(v[0]) for k, v in values.items()}
    return {k: [float(x) for x in v] for k, v in values.items()}


# --------------------------------------------------------------------------------------------
# Verification


def _check_pairs(scores: ArrayLike, same: ArrayLike) -> tuple[NDArray[np.float64], NDArray[Any]]:
    s = _score_vector(scores, "scores")
    y = _bool_vector(same, "same")
    _same_length(scores=s, same=y)
    return s, y


def _best_threshold(s: NDArray[np.float64], y: NDArray[np.bool_]) -> tuple[float, float]:
    """Threshold maximising accuracy of ``s > t`` on (s, y); lowest t among ties."""
    u = np.unique(s)  # (U,) sorted
    cand = np.concatenate(  # (U+1,) accept-all, midpoints, reject-all
        [[np.nextafter(u[0], -np.inf)], (u[:-1] + u[1:]) / 2.0, [u[-1]]]
    )
    gen = np.sort(s[y])
    imp = np.sort(s[~y])
    gen_above = len(gen) - np.searchsorted(gen, cand, side="right")  # (U+1,)
    imp_below = np.searchsorted(imp, cand, side="right")  # (U+1,)
    acc = (gen_above + imp_below) / len(s)
    best = int(np.argmax(acc))
    return float(cand[best]), float(acc[best])


def verification_accuracy_10fold(
    scores: ArrayLike, same: ArrayLike, folds: ArrayLike
) -> dict[str, Any]:
    """LFW protocol: per fold, accuracy at the threshold that is best on the other folds.

    scores: (P,) pair similarities; same: (P,) bool, True = same person; folds: (P,) int fold
    id (10 folds for pairs.txt, any number >= 2 works). Candidate thresholds are the midpoints
    of the sorted unique training scores plus accept-all and reject-all; a pair is called
    "same" iff score > threshold; among equally good thresholds the lowest wins.

    Returns ``mean``, ``std`` (population std over folds, as facenet/insightface report),
    ``sem`` (std with ddof=1 / sqrt(folds), the LFW README's standard error), and per fold
    ``folds``, ``fold_accuracies``, ``thresholds``, ``train_accuracies``.
    """
    s, y = _check_pairs(scores, same)
    f = _int_vector(folds, "folds")
    _same_length(scores=s, same=y, folds=f)
    ids = np.unique(f)
    if len(ids) < 2:
        raise InputError(f"need at least 2 folds, got {len(ids)} distinct fold ids")
    accs, thrs, train_accs = [], [], []
    for fid in ids:
        test = f == fid
        t, train_acc = _best_threshold(s[~test], y[~test])
        accs.append(float(((s[test] > t) == y[test]).mean()))
        thrs.append(t)
        train_accs.append(train_acc)
    a = np.asarray(accs)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "sem": float(a.std(ddof=1) / math.sqrt(len(a))),
        "folds": [int(i) for i in ids],
        "fold_accuracies": accs,
        "thresholds": thrs,
        "train_accuracies": train_accs,
    }


def tar_at_far(scores: ArrayLike, same: ArrayLike, far: float | Sequence[float]) -> dict[str, Any]:
    """True-accept rate at the most lenient threshold whose false-accept rate is <= ``far``.

    scores: (P,), same: (P,) bool. The threshold t is the ``floor(far * N_impostor) + 1``-th
    highest impostor score (accept iff score > t), so at most that many impostors pass.
    Returns ``far``, ``tar``, ``threshold``, ``achieved_far`` -- floats for a scalar ``far``,
    lists for a sequence.
    """
    s, y = _check_pairs(scores, same)
    rates, scalar = _rates(far, "far")
    if y.all() or not y.any():
        raise InputError("tar_at_far needs both genuine (same) and impostor pairs")
    thr, achieved = _thresholds_at_rates(s[~y], rates)
    tar = (s[y][None, :] > thr[:, None]).mean(axis=1)  # (F,)
    return _pack(scalar, {"far": rates, "tar": tar, "threshold": thr, "achieved_far": achieved})


def roc_auc(scores: ArrayLike, same: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg); ties count one half)."""
    s, y = _check_pairs(scores, same)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InputError("roc_auc needs both genuine (same) and impostor pairs")
    ranks = rankdata(s)  # (P,) average ranks, 1-based
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------------------------
# Open-set identification


def tpir_at_fpir(
    mated_scores: ArrayLike,
    mated_labels: ArrayLike,
    nonmated_scores: ArrayLike,
    gallery_labels: ArrayLike,
    fpir: float | Sequence[float],
) -> dict[str, Any]:
    """True-positive identification rate at a false-positive identification rate.

    mated_scores: (Qm, G) scores of probes whose identity is enrolled, mated_labels: (Qm,);
    nonmated_scores: (Qn, G) probes of people not in the gallery; gallery_labels: (G,).
    The threshold t is set on the non-mated probes' top scores exactly as in `tar_at_far`
    (at most ``floor(fpir * Qn)`` of them have a top score > t); a mated probe counts as
    identified iff its top-1 gallery item has its label and its top score > t (ties in the
    top score go to the lower gallery index).
    Returns ``fpir``, ``tpir``, ``threshold``, ``achieved_fpir`` (floats for a scalar ``fpir``,
    lists for a sequence) and ``rank1`` (closed-set rank-1 of the mated probes).
    """
    sm = _score_matrix(mated_scores, "mated_scores")  # (Qm, G)
    sn = _score_matrix(nonmated_scores, "nonmated_scores")  # (Qn, G)
    rates, scalar = _rates(fpir, "fpir")
    ml, gl, _ = _encode_labels(mated_labels, gallery_labels)  # (Qm,), (G,)
    if len(ml) != sm.shape[0] or len(gl) != sm.shape[1]:
        raise InputError(
            f"mated_scores has shape {sm.shape} (probes x gallery) but mated_labels has"
            f" {len(ml)} and gallery_labels {len(gl)} entries"
        )
    if sn.shape[1] != sm.shape[1]:
        raise InputError(
            f"nonmated_scores has {sn.shape[1]} gallery columns, mated_scores {sm.shape[1]}"
        )
    if sm.shape[0] == 0 or sn.shape[0] == 0 or sm.shape[1] == 0:
        raise InputError(
            "tpir_at_fpir needs at least one mated probe, one non-mated probe and a gallery"
        )
    missing = np.flatnonzero(~np.isin(ml, gl))
    if missing.size:
        raise InputError(
            f"{missing.size} mated probes have a label that is not in the gallery (first:"
            f" probe {int(missing[0])}); pass them as non-mated probes"
        )
    top = sm.argmax(axis=1)  # (Qm,)
    top_score = sm[np.arange(len(top)), top].astype(np.float64)  # (Qm,)
    correct = gl[top] == ml  # (Qm,)
    thr, achieved = _thresholds_at_rates(sn.max(axis=1).astype(np.float64), rates)
    tpir = (correct[None, :] & (top_score[None, :] > thr[:, None])).mean(axis=1)  # (F,)
    out = _pack(scalar, {"fpir": rates, "tpir": tpir, "threshold": thr, "achieved_fpir": achieved})
    out["rank1"] = float(correct.mean())
    return out
