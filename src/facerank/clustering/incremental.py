"""New faces join existing clusters without re-clustering the rest; the user's corrections hold.

`assign_new` attaches each new face to the existing cluster whose members among its k nearest
old faces have the highest mean match probability (>= p_link, not banned for that face); the
faces left over are clustered among themselves into new clusters. `update` does that against a
`ClusterStore` and records the result; pinned faces (merged, split, "not this person") keep
their cluster. `explain` gives a face's nearest cluster members and their probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facerank.clustering.algorithms import ProbabilityCluster, knn, unit
from facerank.clustering.store import ClusterStore


def _search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    k = int(min(k, len(base)))
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)


def assign_new(x_old: np.ndarray, lab_old: np.ndarray, x_new: np.ndarray,
               method: ProbabilityCluster, banned: np.ndarray | None = None,
               first_new_id: int = 0) -> np.ndarray:
    """(M,) cluster ids of M new faces given N old faces' (N, D) vectors and (N,) ids (-1 =
    unassigned). banned: (M, C) bool, True where new face m may not join cluster c.
    Faces that join no old cluster are clustered among themselves, ids from first_new_id."""
    m = len(x_new)
    out = np.full(m, -1, np.int64)
    if m == 0:
        return out
    xo, xn = unit(x_old), unit(x_new)
    keep = lab_old >= 0
    if keep.any():
        xo, lo = xo[keep], lab_old[keep]
        sims, idx = _search(xo, xn, method.k)
        p = method.prob(sims.astype(np.float64))
        cl = lo[idx]
        c_max = int(lo.max()) + 1
        key = np.repeat(np.arange(m), cl.shape[1]) * c_max + cl.ravel()
        ukey, inv = np.unique(key, return_inverse=True)
        mean = np.bincount(inv, p.ravel()) / np.bincount(inv)
        row, clus = ukey // c_max, ukey % c_max
        ok = mean >= method.p_link
        if banned is not None and banned.size:
            inside = clus < banned.shape[1]
            ok &= ~np.where(inside, banned[row, np.minimum(clus, banned.shape[1] - 1)], False)
        row, clus, mean = row[ok], clus[ok], mean[ok]
        order = np.lexsort((-mean, row))
        row, clus = row[order], clus[order]
        first = np.unique(row, return_index=True)[1]
        out[row[first]] = clus[first]
    rest = np.flatnonzero(out < 0)
    if len(rest):
        lab = method.fit(x_new[rest]) if len(rest) > 1 else np.zeros(1, np.int64)
        out[rest] = np.where(lab >= 0, lab + first_new_id, -1)
    return out


def update(store: ClusterStore, keys: Sequence[str], x: np.ndarray,
           method: ProbabilityCluster) -> np.ndarray:
    """Cluster the faces `keys` (N,) with vectors (N, D) against what `store` holds: known faces
    keep their cluster, new ones are assigned (recorded in one transaction). (N,) cluster ids."""
    keys = list(keys)
    known = store.assignment()
    lab = np.array([known[k][0] if k in known else -2 for k in keys], np.int64)
    new = np.flatnonzero(lab == -2)
    if len(new):
        old = np.flatnonzero(lab != -2)
        bans = store.banned()
        c_max = max([c for _, c in bans] + [int(lab.max()), 0]) + 1
        banned = np.zeros((len(new), c_max), bool)
        pos = {keys[i]: j for j, i in enumerate(new)}
        for f, c in bans:
            if f in pos and c >= 0:
                banned[pos[f], c] = True
        got = assign_new(x[old], lab[old], x[new], method, banned,
                         first_new_id=store.next_cluster())
        lab[new] = got
        store.assign([keys[i] for i in new], got.tolist())
    return lab


def explain(x: np.ndarray, labels: np.ndarray, face: int, method: ProbabilityCluster,
            n: int = 5) -> list[dict]:
    """Why face `face` is where it is: its n nearest faces of the same cluster (or nearest
    faces at all when unassigned), each {"row", "cluster", "cosine", "probability"}."""
    xs = unit(x)
    sims = xs @ xs[face]
    sims[face] = -np.inf
    same = labels == labels[face] if labels[face] >= 0 else np.ones(len(x), bool)
    same[face] = False
    rows = np.flatnonzero(same)
    rows = rows[np.argsort(-sims[rows])[:n]]
    p = method.prob(sims[rows].astype(np.float64))
    return [{"row": int(r), "cluster": int(labels[r]), "cosine": round(float(sims[r]), 4),
             "probability": round(float(q), 4)} for r, q in zip(rows, p, strict=True)]


__all__ = ["assign_new", "explain", "knn", "update"]
