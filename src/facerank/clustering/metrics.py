"""Clustering quality against known identities: pairwise P/R/F1, BCubed P/R/F1, cluster counts.

All functions take `pred` (N,) cluster ids (-1 = unassigned, each counted as its own singleton)
and `truth` (N,) identity ids, and run in O(N log N) from the contingency table.
"""

from __future__ import annotations

import numpy as np

from facerank.errors import InputError


def _singletons(pred: np.ndarray) -> np.ndarray:
    """-1 entries -> fresh ids, so an unassigned face is a cluster of one."""
    pred = np.asarray(pred, np.int64).copy()
    free = pred < 0
    if free.any():
        start = (pred.max() + 1) if (~free).any() else 0
        pred[free] = start + np.arange(int(free.sum()))
    return pred


def _table(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray, np.ndarray]:
    pred, truth = _singletons(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise InputError(f"pred and truth must be (N,) of one length, got {pred.shape} and "
                         f"{truth.shape}")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    cell_key = p.astype(np.int64) * (t.max() + 1) + t
    _, cell_of, cell_n = np.unique(cell_key, return_inverse=True, return_counts=True)
    p_size, t_size = np.bincount(p), np.bincount(t)
    return p, t, cell_n[cell_of].astype(np.float64), p_size, t_size


def pairwise(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 over all same-cluster pairs (in %)."""
    p, t, _, p_size, t_size = _table(pred, truth)
    key = p.astype(np.int64) * (t.max() + 1) + t
    _, cells = np.unique(key, return_counts=True)
    tp = float((cells * (cells - 1) / 2).sum())
    pp = float((p_size * (p_size - 1) / 2).sum())
    tt = float((t_size * (t_size - 1) / 2).sum())
    prec = tp / pp if pp else 1.0
    rec = tp / tt if tt else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": 100 * prec, "recall": 100 * rec, "f1": 100 * f1}


def bcubed(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """BCubed precision, recall, F1 (in %): per item, the share of its cluster (resp. its
    identity) that shares its identity (resp. cluster), averaged over items."""
    p, t, cell, p_size, t_size = _table(pred, truth)
    prec = float(np.mean(cell / p_size[p]))
    rec = float(np.mean(cell / t_size[t]))
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": 100 * prec, "recall": 100 * rec, "f1": 100 * f1}


def summary(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Everything the benchmark reports for one clustering, rounded for JSON."""
    pw, bc = pairwise(pred, truth), bcubed(pred, truth)
    pred_s = _singletons(pred)
    return {
        "pairwise_precision": round(pw["precision"], 2), "pairwise_recall": round(pw["recall"], 2),
        "pairwise_f1": round(pw["f1"], 2),
        "bcubed_precision": round(bc["precision"], 2), "bcubed_recall": round(bc["recall"], 2),
        "bcubed_f1": round(bc["f1"], 2),
        "clusters": int(len(np.unique(pred_s))), "true_clusters": int(len(np.unique(truth))),
        "unassigned": int((np.asarray(pred) < 0).sum()),
    }
