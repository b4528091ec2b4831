"""Stage-2 EMD re-ranker on synthetic features: API behaviour and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerank.errors import InputError
from facerank.face.features import FeatureSet, l2_normalize
from facerank.ranking import cosine_topk
from facerank.rerank.base import make_stage2, stage2_names
from facerank.rerank.emd.reranker import Stage2EMD


def _features(n: int, seed: int, grid: tuple[int, int, int] = (128, 8, 8),
              base: np.ndarray | None = None) -> FeatureSet:
    rng = np.random.default_rng(seed)
    grids = np.abs(rng.normal(size=(n, *grid))).astype(np.float32)
    if base is not None:
        grids = base + 0.3 * grids
    desc = grids.mean(axis=(2, 3))[:, :128] + 0.1 * rng.normal(size=(n, 128)).astype(np.float32)
    lm = rng.uniform(20, 130, size=(n, 68, 2))
    return FeatureSet(paths=[f"img{i}" for i in range(n)], descriptors=desc.astype(np.float32),
                      grids={"l2": grids.astype(np.float16)}, landmarks5=np.zeros((n, 5, 2)),
                      landmarks68=lm, chip_landmarks68=lm, boxes=np.zeros((n, 4)),
                      det_scores=np.ones(n), det_sources=["test"] * n)


@pytest.fixture(scope="module")
def gallery() -> FeatureSet:
    return _features(40, 0)


def _fc() -> torch.Tensor:
    return torch.randn(256, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("weighting", ["uniform", "apc", "cc", "sc", "lmk"])
def test_rerank_keeps_both_scores(gallery: FeatureSet, weighting: str) -> None:
    queries = _features(5, 1, base=gallery.grids["l2"][:5].astype(np.float32))
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, 20)
    r2 = Stage2EMD(weighting=weighting, k=10, fc_weight=_fc()).rerank(queries, gallery, ranking)
    assert r2.indices.shape == (5, 20)
    # the first 10 are a permutation of Stage 1's first 10; the rest are untouched
    for row in range(5):
        assert set(r2.indices[row, :10]) == set(ranking.indices[row, :10])
    np.testing.assert_array_equal(r2.indices[:, 10:], ranking.indices[:, 10:])
    assert np.all(np.diff(r2.scores[:, :10], axis=1) <= 1e-7)
    # Stage-1 cosine stays attached to its gallery item
    g = l2_normalize(gallery.descriptors)
    cos = np.einsum("qd,qkd->qk", queries.embeddings, g[r2.indices])
    np.testing.assert_allclose(r2.stage_scores["stage1"], cos, atol=1e-5)
    assert np.isfinite(r2.stage_scores["emd"][:, :10]).all()
    assert np.isnan(r2.stage_scores["emd"][:, 10:]).all()


@pytest.mark.parametrize("weighting", ["uniform", "apc", "cc", "sc", "lmk"])
@pytest.mark.parametrize("n_queries", [1, 3])
def test_emd_scores_follow_the_candidate_order(gallery: FeatureSet, weighting: str,
                                               n_queries: int) -> None:
    """Each score belongs to its own (query, candidate) pair, whatever the order of the
    candidates (distinct, unsorted, repeated) — checked against the pair-by-pair solver."""
    queries = _features(n_queries, 7)
    cand = np.array([[17, 3, 29, 0, 11, 38], [5, 5, 22, 9, 1, 30], [39, 12, 2, 26, 14, 8]])
    cand = cand[:n_queries]
    rr = Stage2EMD(weighting=weighting, alpha=1.0, fc_weight=_fc())
    got = rr.emd_scores(queries, gallery, cand)  # (Q, k)
    # the pairs path (untransposed, weights from the patches) gives the same numbers
    pairs = rr.score_pairs(queries.take(np.repeat(np.arange(n_queries), cand.shape[1])),
                           gallery.take(cand.reshape(-1)))
    np.testing.assert_allclose(got.reshape(-1), pairs, atol=1e-5, rtol=0)
    for qi in range(n_queries):
        for j, ci in enumerate(cand[qi]):
            one = rr.emd_scores(queries.take([qi]), gallery.take([int(ci)]), np.zeros((1, 1), int))
            assert abs(float(got[qi, j]) - float(one[0, 0])) < 1e-5, (qi, j, ci)


def test_alpha_zero_is_stage1(gallery: FeatureSet) -> None:
    queries = _features(4, 2)
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, 15)
    r2 = Stage2EMD(alpha=0.0, k=15).rerank(queries, gallery, ranking)
    np.testing.assert_array_equal(r2.indices, ranking.indices)


def test_k_larger_than_gallery_is_clipped(gallery: FeatureSet) -> None:
    queries = _features(3, 3)
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, 1000)
    assert ranking.k == len(gallery)
    r2 = Stage2EMD(k=500).rerank(queries, gallery, ranking)
    assert r2.k == len(gallery)
    assert sorted(r2.indices[0]) == list(range(len(gallery)))


def test_empty_gallery_and_no_queries(gallery: FeatureSet) -> None:
    with pytest.raises(InputError, match="gallery is empty"):
        cosine_topk(np.zeros((2, 128), np.float32), np.zeros((0, 128), np.float32), 5)
    empty_q = FeatureSet.stack([], grid_names=("l2",))
    ranking = cosine_topk(np.zeros((0, 128), np.float32), gallery.embeddings, 5)
    assert Stage2EMD().rerank(empty_q, gallery, ranking).indices.shape == (0, 5)


def test_mismatched_grids(gallery: FeatureSet) -> None:
    other = _features(3, 5, grid=(128, 4, 4))
    ranking = cosine_topk(other.embeddings, gallery.embeddings, 5)
    with pytest.raises(InputError, match="grid"):
        Stage2EMD(k=5).rerank(other, gallery, ranking)
    with pytest.raises(InputError, match="no grid 'l1'"):
        Stage2EMD(grid="l1", k=5).rerank(other, gallery, ranking)


def test_bad_options() -> None:
    with pytest.raises(InputError, match="unknown weighting"):
        Stage2EMD(weighting="nope")
    with pytest.raises(InputError, match="alpha"):
        Stage2EMD(alpha=1.5)
    with pytest.raises(InputError, match="unknown grid"):
        Stage2EMD(grid="conv5")
    with pytest.raises(InputError, match="unknown Stage-2 method"):
        make_stage2("no-such-method")
    assert "emd" in stage2_names() and "none" in stage2_names()
    assert make_stage2("none") is None


def test_pooled_grid_and_pairs(gallery: FeatureSet) -> None:
    r = Stage2EMD(grid="l2p4", k=5)
    assert r.grid_hw(gallery) == (4, 4)
    s = r.score_pairs(gallery.take([0, 1]), gallery.take([0, 2]))
    assert s.shape == (2,) and s[0] > s[1]  # a face matches itself best
    flows = r.explain_pairs(gallery.take([0]), gallery.take([3]))
    assert flows.flow.shape == (1, 16, 16)
    np.testing.assert_allclose(flows.flow.sum(), 1.0, atol=1e-4)
