"""Stage 1: rank a gallery by cosine of global embeddings (exact, chunked torch matmul).

A `Ranking` is what flows between stages: gallery indices best first, the score that orders
them, and every stage's score kept side by side (so a report or a UI can show all of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from facerank.errors import InputError

__all__ = ["Ranking", "cosine_topk"]


@dataclass
class Ranking:
    """Ranked gallery candidates for Q queries."""

    indices: np.ndarray  # (Q, K) int64 gallery indices, best first
    scores: np.ndarray  # (Q, K) float32, the score that orders each row (descending)
    stage_scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (Q, K)

    def __post_init__(self) -> None:
        if self.indices.shape != self.scores.shape:
            raise InputError(f"ranking indices {self.indices.shape} and scores "
                             f"{self.scores.shape} differ in shape")

    @property
    def num_queries(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def reorder(self, order: np.ndarray, scores: np.ndarray, name: str,
                stage: np.ndarray | None = None) -> Ranking:
        """Permute the first `order.shape[1]` columns of each row by `order` (Q, k).

        `scores` (Q, k) become the ordering scores of those columns (already permuted);
        `stage` (Q, k), unpermuted, is stored as `stage_scores[name]` (NaN beyond k).
        """
        q, k = order.shape
        rows = np.arange(q)[:, None]
        indices = self.indices.copy()
        indices[:, :k] = self.indices[rows, order]
        new_scores = self.scores.copy()
        new_scores[:, :k] = scores
        stages = {}
        for n, s in self.stage_scores.items():
            s = s.copy()
            s[:, :k] = s[rows, order]
            stages[n] = s
        if stage is not None:
            full = np.full(self.indices.shape, np.nan, dtype=np.float32)
            full[:, :k] = stage[rows, order]
            stages[name] = full
        return Ranking(indices, new_scores, stages)


def cosine_topk(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    chunk: int = 1024,
) -> Ranking:
    """Top-k gallery items by cosine for each query.

    queries (Q, D), gallery (G, D): L2-normalised embeddings.
    exclude (Q,): a gallery index to leave out per query (leave-one-out), or -1 for none.
    k is clipped to the number of gallery items that can be returned.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise InputError(f"query embeddings {queries.shape} and gallery embeddings "
                         f"{gallery.shape} must be (Q, D) and (G, D) with the same D")
    n_q, n_g = len(queries), len(gallery)
    if n_g == 0:
        raise InputError("the gallery is empty; enrol some faces first")
    if exclude is not None and exclude.shape != (n_q,):
        raise InputError(f"exclude must have shape ({n_q},), got {exclude.shape}")
    k = max(0, min(k, n_g - (1 if exclude is not None and (exclude >= 0).any() else 0)))
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    indices = np.zeros((n_q, k), dtype=np.int64)
    scores = np.zeros((n_q, k), dtype=np.float32)
    for s in range(0, n_q, chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[s : s + chunk], dtype=np.float32))
        sim = q @ g.T  # (chunk, G)
        if exclude is not None:
            ex = torch.from_numpy(exclude[s : s + chunk].astype(np.int64))
            rows = torch.nonzero(ex >= 0).squeeze(1)
            sim[rows, ex[rows]] = -torch.inf
        top = torch.topk(sim, k, dim=1)
        indices[s : s + chunk] = top.indices.numpy()
        scores[s : s + chunk] = top.values.numpy()
    return Ranking(indices, scores, {"stage1": scores.copy()})
