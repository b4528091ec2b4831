"""Clustering unlabelled faces: three baselines and facerank's own, all on (N, D) vectors.

Baselines (what users of other face libraries run):
  ChineseWhispers   dlib.chinese_whispers on every pair closer than a distance (dlib: 0.6 on
                    descriptors; other backbones: a cosine threshold)
  DBSCANCluster     sklearn DBSCAN on cosine distance
  Agglomerative     sklearn average-linkage agglomerative clustering, dense, at a threshold

Ours (`ProbabilityCluster`):
  1. a sparse k-nearest-neighbour graph (faiss, exact inner product), never the dense N x N;
  2. each edge's cosine -> a calibrated match probability `prob(scores)` (any monotone map);
  3. an optional re-scoring of the borderline edges only (e.g. Stage 2's `score_pairs`);
  4. average linkage restricted to the graph, stopped where the linked clusters' mean
     probability falls below `p_link`;
  5. faces whose confidence is below `min_confidence` stay out of the seeds and are attached
     afterwards to the cluster of their most probable seed neighbour (if above `p_attach`), or
     left unassigned (-1).
Every `fit(x)` returns (N,) int64 cluster ids, -1 = unassigned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from facerank.errors import InputError

Prob = Callable[[np.ndarray], np.ndarray]
Rescore = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InputError(f"clustering needs a finite (N, D) matrix of face vectors, got shape "
                         f"{x.shape}")
    return x


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered 0.. by decreasing size (ties: first member); -1 kept."""
    labels = np.asarray(labels, np.int64)
    out = np.full_like(labels, -1)
    keep = labels >= 0
    if not keep.any():
        return out
    ids, first, inv, counts = np.unique(labels[keep], return_index=True, return_inverse=True,
                                        return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out[keep] = rank[inv]
    return out


def knn(x: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sims (N, k), idx (N, k)) of each unit row's k nearest other rows by inner product
    (exact faiss search; idx -1 where N - 1 < k)."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    n = len(x)
    k = int(min(k, max(n - 1, 0)))
    if k == 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)
    # drop self (not always column 0 when duplicates tie)
    self_hit = idx == np.arange(n)[:, None]
    drop = np.where(self_hit.any(1), self_hit.argmax(1), k)
    keep = np.ones_like(idx, bool)
    keep[np.arange(n), drop] = False
    return sims[keep].reshape(n, k), idx[keep].reshape(n, k)


def edges(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edge list (rows < cols, unique) and cosine of a kNN graph."""
    n, k = idx.shape
    r = np.repeat(np.arange(n), k)
    c = idx.ravel()
    s = sims.ravel()
    ok = c >= 0
    r, c, s = r[ok], c[ok], s[ok]
    a, b = np.minimum(r, c), np.maximum(r, c)
    key = a.astype(np.int64) * n + b
    _, first = np.unique(key, return_index=True)
    return a[first], b[first], s[first]


@dataclass
class ChineseWhispers:
    """dlib.chinese_whispers on all pairs within `distance` (Euclidean on the vectors as given:
    dlib descriptors at 0.6 is face_recognition's habit) or with cosine >= `cosine`."""

    distance: float | None = 0.6
    cosine: float | None = None
    iterations: int = 100
    name: str = "chinese-whispers"

    def fit(self, x: np.ndarray) -> np.ndarray:
        import dlib
        import faiss

        x = _check(x)
        n = len(x)
        if n == 0:
            return np.zeros(0, np.int64)
        if self.cosine is not None:
            index = faiss.IndexFlatIP(x.shape[1])
            xs = unit(x)
            index.add(xs)
            lims, _, nbr = index.range_search(xs, float(self.cosine))
        else:
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(x)
            lims, _, nbr = index.range_search(x, float(self.distance) ** 2)
        rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
        keep = rows < nbr
        pairs = list(zip(rows[keep].tolist(), nbr[keep].tolist(), strict=True))
        pairs += [(i, i) for i in range(n)]  # every face is a node, even alone
        return relabel(np.asarray(dlib.chinese_whispers(pairs), np.int64))


@dataclass
class DBSCANCluster:
    """sklearn DBSCAN at distance `eps` ("euclidean" on the vectors as given, or "cosine"
    distance = 1 - cosine); noise -> singletons."""

    eps: float = 0.6
    min_samples: int = 2
    metric: str = "euclidean"
    name: str = "dbscan"

    def fit(self, x: np.ndarray) -> np.ndarray:
        from sklearn.cluster import DBSCAN

        x = _check(x)
        if len(x) == 0:
            return np.zeros(0, np.int64)
        xs = unit(x) if self.metric == "cosine" else x
        lab = DBSCAN(eps=self.eps, min_samples=self.min_samples, metric=self.metric,
                     algorithm="brute", n_jobs=1).fit_predict(xs)
        noise = lab < 0
        lab[noise] = lab.max() + 1 + np.arange(int(noise.sum()))
        return relabel(lab)


@dataclass
class Agglomerative:
    """sklearn average-linkage agglomerative clustering stopped at `threshold` (metric
    "euclidean" on the vectors as given, or "cosine" distance)."""

    threshold: float = 0.6
    metric: str = "euclidean"
    linkage: str = "average"
    name: str = "agglomerative"

    def fit(self, x: np.ndarray) -> np.ndarray:
        from sklearn.cluster import AgglomerativeClustering

        x = _check(x)
        if len(x) < 2:
            return np.zeros(len(x), np.int64)
        lab = AgglomerativeClustering(n_clusters=None, distance_threshold=self.threshold,
                                      metric=self.metric, linkage=self.linkage).fit_predict(x)
        return relabel(lab)


def average_linkage_graph(n: int, rows: np.ndarray, cols: np.ndarray, prob: np.ndarray,
                          p_link: float, over_edges: bool = True,
                          mutual_only: bool = True) -> np.ndarray:
    """Average linkage on a sparse graph: repeatedly merge the two linked clusters of highest
    mean edge probability until it falls below `p_link`. over_edges: the mean runs over the
    graph's edges between the two clusters (a big cluster's members see only k neighbours each);
    else over all member pairs, missing pairs counting as 0.

    Implemented by merge rounds: each round, every cluster proposes its best partner; mutual
    best pairs above `p_link` merge at once (the reciprocal-nearest-neighbour property of average
    linkage makes this equal to the sequential order). mutual_only=False: every cluster joins
    its best partner each round (at most log2 N rounds, also on near-duplicates, where mutual
    pairs are few). (N,) labels.
    """
    labels = np.arange(n)
    if len(rows) == 0:
        return labels
    w = sp.coo_matrix((prob, (rows, cols)), shape=(n, n)).tocsr()
    w = (w + w.T).tocsr()
    e = w.copy()
    e.data[:] = 1.0
    while True:
        # cluster-level sum of probabilities
        m = sp.coo_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, n)).tocsr()
        c = (m.T @ w @ m).tocoo()
        off = c.row != c.col
        r, q, v = c.row[off], c.col[off], c.data[off]
        if len(r) == 0:
            break
        if over_edges:
            cnt = (m.T @ e @ m).tocoo()
            mean = v / np.maximum(np.asarray(cnt.tocsr()[r, q]).ravel(), 1.0)
        else:
            csize = np.bincount(labels, minlength=n).astype(np.float64)
            mean = v / (csize[r] * csize[q])
        if mean.max() < p_link:
            break
        ok = mean >= p_link
        r, q, mean = r[ok], q[ok], mean[ok]
        order = np.lexsort((q, -mean))
        r, q, mean = r[order], q[order], mean[order]
        first = np.unique(r, return_index=True)[1]
        best = np.full(n, -1)
        best[r[first]] = q[first]
        a = np.flatnonzero(best >= 0)
        if mutual_only:
            mutual = a[(best[best[a]] == a) & (a < best[a])]
            if len(mutual) == 0:
                break
            target = np.arange(n)
            target[best[mutual]] = mutual
        else:  # every cluster joins its best partner (Boruvka rounds: O(log N) of them)
            from scipy.sparse.csgraph import connected_components

            g = sp.coo_matrix((np.ones(len(a)), (a, best[a])), shape=(n, n))
            target = connected_components(g, directed=False)[1]
        labels = target[labels]
    return labels


@dataclass
class ProbabilityCluster:
    """facerank's clustering: average linkage of calibrated match probabilities on a kNN graph,
    borderline edges optionally re-scored, low-confidence faces attached last (module doc)."""

    prob: Prob
    k: int = 30
    p_link: float = 0.5
    p_attach: float = 0.5
    min_confidence: float | None = None
    rescore: Rescore | None = None
    border: tuple[float, float] = (0.2, 0.8)
    threads: int | None = None
    over_edges: bool = True
    mutual_only: bool = False
    name: str = "probability"
    last: dict = field(default_factory=dict, repr=False)

    def graph(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, probability) of the kNN graph's undirected edges."""
        xs = unit(_check(x))
        sims, idx = knn(xs, self.k, self.threads)
        r, c, s = edges(sims, idx)
        p = np.clip(np.asarray(self.prob(s.astype(np.float64)), np.float64), 0.0, 1.0)
        if self.rescore is not None and len(p):
            lo, hi = self.border
            b = np.flatnonzero((p >= lo) & (p <= hi))
            if len(b):
                p[b] = np.clip(self.rescore(r[b], c[b], p[b]), 0.0, 1.0)
            self.last["rescored"] = int(len(b))
        return r, c, p

    def fit(self, x: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        x = _check(x)
        n = len(x)
        if n < 2:
            return np.zeros(n, np.int64)
        r, c, p = self.graph(x)
        seed = np.ones(n, bool)
        if confidence is not None and self.min_confidence is not None:
            confidence = np.asarray(confidence, np.float64)
            seed = ~(confidence < self.min_confidence)  # NaN (unknown) counts as a seed
            if seed.sum() < 2:
                seed[:] = True
        both = seed[r] & seed[c]
        lab = average_linkage_graph(n, r[both], c[both], p[both], self.p_link, self.over_edges,
                                    self.mutual_only)
        lab[~seed] = -1
        late = np.flatnonzero(~seed)
        if len(late):
            lab = attach(lab, late, r, c, p, self.p_attach)
        self.last.update(edges=int(len(r)), seeds=int(seed.sum()))
        return relabel(np.where(lab >= 0, lab, -1))


def attach(labels: np.ndarray, late: np.ndarray, rows: np.ndarray, cols: np.ndarray,
           prob: np.ndarray, p_attach: float) -> np.ndarray:
    """labels with each `late` face given the label of its most probable labelled neighbour
    when that probability >= p_attach (else -1)."""
    labels = labels.copy()
    is_late = np.zeros(len(labels), bool)
    is_late[late] = True
    # both directions: late face -> labelled neighbour
    a = np.concatenate([rows, cols])
    b = np.concatenate([cols, rows])
    pp = np.concatenate([prob, prob])
    ok = is_late[a] & ~is_late[b] & (labels[b] >= 0) & (pp >= p_attach)
    a, b, pp = a[ok], b[ok], pp[ok]
    order = np.lexsort((-pp, a))
    a, b = a[order], b[order]
    first = np.unique(a, return_index=True)[1]
    labels[late] = -1
    labels[a[first]] = labels[b[first]]
    return labels
