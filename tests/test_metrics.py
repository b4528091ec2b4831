"""Metrics: equality to pytorch-metric-learning, hand-computed cases, sklearn AUC, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import return_results
from sklearn.metrics import roc_auc_score

from facerank.errors import InputError
from facerank.eval.metrics import (
    retrieval_metrics,
    retrieval_metrics_from_ranked,
    roc_auc,
    tar_at_far,
    tpir_at_fpir,
    verification_accuracy_10fold,
)

PML_METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
OURS = {"precision_at_1": "p_at_1", "r_precision": "r_precision"}
OURS["mean_average_precision_at_r"] = "map_at_r"


def score_knn(scores: np.ndarray):
    """A PML knn_func that ranks by our score matrix (so both sides see the same order)."""
    s = torch.from_numpy(scores)

    def knn(query, k, reference=None, ref_includes_query=False):
        kk = k + 1 if ref_includes_query else k
        vals, idx = torch.topk(s, kk, dim=1, largest=True, sorted=True)
        return return_results(vals, idx, ref_includes_query)

    return knn


def pml(scores, query_labels, gallery_labels, ref_includes_query, k=None):
    """PML AccuracyCalculator on a precomputed score matrix; queries are index 'embeddings'."""
    calc = AccuracyCalculator(
        include=PML_METRICS, k=k, device=torch.device("cpu"), knn_func=score_knn(scores)
    )
    q = np.arange(len(query_labels), dtype=np.float32)[:, None]
    g = np.arange(len(gallery_labels), dtype=np.float32)[:, None]
    return calc.get_accuracy(q, query_labels, g, gallery_labels, ref_includes_query)


def assert_same(ours: dict, theirs: dict) -> None:
    for k_pml, k_ours in OURS.items():
        assert ours[k_ours] == pytest.approx(theirs[k_pml], abs=1e-6), k_ours


def assert_no_ties(scores: np.ndarray) -> None:
    srt = np.sort(scores, axis=1)
    assert (np.diff(srt, axis=1) > 0).all()


def naive_retrieval(scores, ql, gl, exclude):
    """Per-query loop straight from the definitions (reference for the exclusion tests)."""
    p1, rp, ap = [], [], []
    for i in range(len(ql)):
        keep = ~exclude[i]
        s, lab = scores[i][keep], gl[keep]
        rel = lab[np.argsort(-s, kind="stable")] == ql[i]
        r = int(rel.sum())
        if r == 0:
            continue
        p1.append(rel[0])
        rp.append(rel[:r].mean())
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        ap.append((prec * rel[:r]).sum() / r)
    return {"p_at_1": np.mean(p1), "r_precision": np.mean(rp), "map_at_r": np.mean(ap)}


# --------------------------------------------------------------------------------------------
# Retrieval vs PML


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_leave_one_out_matches_pml(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.integers(0, 60, n)
    labels[:5] = np.arange(1000, 1005)  # lone queries: R = 0
    emb = rng.standard_normal((n, 8)) + 0.8 * rng.standard_normal((1005, 8))[labels]
    scores = emb @ emb.T
    assert_no_ties(scores)
    theirs = pml(scores, labels, labels, ref_includes_query=True)
    ours = retrieval_metrics(scores, labels, labels, query_gallery_index=np.arange(n))
    assert_same(ours, theirs)
    n_lone = sum(int((labels == lab).sum() == 1) for lab in np.unique(labels))
    assert ours["n_skipped_no_relevant"] == n_lone >= 5
    assert ours["n_queries"] == n - n_lone
    assert ours["n_truncated"] == 0
    # The same through an explicit exclude mask (diagonal).
    ours_mask = retrieval_metrics(scores, labels, labels, exclude=np.eye(n, dtype=bool))
    assert_same(ours_mask, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separate_query_and_gallery_matches_pml(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    nq, ng = 250, 600
    ql = rng.integers(0, 50, nq)  # labels 45..49 never in the gallery
    gl = rng.integers(0, 45, ng)
    scores = rng.standard_normal((nq, ng))
    assert_no_ties(scores)
    ours = retrieval_metrics(scores, ql, gl)
    assert_same(ours, pml(scores, ql, gl, ref_includes_query=False))
    assert ours["n_skipped_no_relevant"] == int((ql >= 45).sum()) > 0


def test_clustered_embeddings_match_pml_default_knn() -> None:
    """200 identities x 5 unit-norm noisy samples; PML with its own (faiss L2) k-NN."""
    rng = np.random.default_rng(7)
    ids, per = 200, 5
    centres = rng.standard_normal((ids, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(ids), per)
    emb = centres[labels] + 0.12 * rng.standard_normal((ids * per, 64))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    calc = AccuracyCalculator(include=PML_METRICS, device=torch.device("cpu"))
    theirs = calc.get_accuracy(emb, labels)  # reference=None -> ref_includes_query=True
    e64 = emb.astype(np.float64)
    scores = e64 @ e64.T
    ours = retrieval_metrics(scores, labels, labels, query_gallery_index=np.arange(len(labels)))
    assert_same(ours, theirs)
    assert 0.3 < ours["map_at_r"] < 0.99  # a realistic, non-trivial regime
    # float32 scores give the same answer.
    ours32 = retrieval_metrics(
        emb @ emb.T, labels, labels, query_gallery_index=np.arange(len(labels))
    )
    assert_same(ours32, theirs)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_truncated_lists_match_pml_with_limited_k(k: int) -> None:
    rng = np.random.default_rng(11)
    n = 300
    labels = rng.integers(0, 25, n)  # classes of ~12, so k < R for most queries
    scores = rng.standard_normal((n, n))
    np.fill_diagonal(scores, 10.0)  # the query itself ranks first
    theirs = pml(scores, labels, labels, ref_includes_query=True, k=k)
    order = np.argsort(-scores, axis=1)[:, 1 : k + 1]  # drop self
    match = labels[order] == labels[:, None]
    r = np.bincount(labels)[labels] - 1
    ours = retrieval_metrics_from_ranked(match, r)
    assert_same(ours, theirs)
    assert ours["n_truncated"] == int((r > k).sum()) > 0


def test_from_ranked_hand_computed() -> None:
    match = np.array([[True, False, True, False], [False, True, False, False]])
    out = retrieval_metrics_from_ranked(match, [3, 1], return_per_query=True)
    pq = out["per_query"]
    np.testing.assert_allclose(pq["p_at_1"], [1.0, 0.0])
    np.testing.assert_allclose(pq["r_precision"], [2 / 3, 0.0])
    np.testing.assert_allclose(pq["map_at_r"], [(1 + 2 / 3) / 3, 0.0])
    # Truncated (K=2 < R=3): RP over min(R, K) = 2 items, MAP@R still divided by R = 3.
    out = retrieval_metrics_from_ranked(np.array([[True, False]]), [3])
    assert out["r_precision"] == pytest.approx(1 / 2)
    assert out["map_at_r"] == pytest.approx(1 / 3)
    assert out["n_truncated"] == 1
    # R = 0 queries are skipped and counted.
    out = retrieval_metrics_from_ranked(np.array([[True], [False]]), [1, 0])
    assert (out["p_at_1"], out["n_queries"], out["n_skipped_no_relevant"]) == (1.0, 1, 1)
    out = retrieval_metrics_from_ranked(np.array([[False]]), [0])
    assert math.isnan(out["p_at_1"]) and out["n_queries"] == 0


def test_exclusions_match_naive_reference() -> None:
    """Strict-gallery style: each query drops one gallery item (its clean original) + noise."""
    rng = np.random.default_rng(5)
    nq, ng = 120, 200
    gl = rng.integers(0, 30, ng)
    orig = rng.integers(0, ng, nq)
    ql = gl[orig]
    scores = rng.standard_normal((nq, ng))
    extra = rng.random((nq, ng)) < 0.1
    ours = retrieval_metrics(scores, ql, gl, exclude=extra, query_gallery_index=orig)
    full = extra.copy()
    full[np.arange(nq), orig] = True
    ref = naive_retrieval(scores, ql, gl, full)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12)
    # -1 = nothing to drop for that query.
    none = retrieval_metrics(scores, ql, gl, query_gallery_index=np.full(nq, -1))
    ref = naive_retrieval(scores, ql, gl, np.zeros((nq, ng), dtype=bool))
    assert none["map_at_r"] == pytest.approx(ref["map_at_r"], abs=1e-12)


def test_chunking_string_labels_and_ties_are_stable() -> None:
    rng = np.random.default_rng(9)
    nq, ng = 90, 150
    names = np.array([f"person_{i}" for i in range(20)])
    gl = names[rng.integers(0, 20, ng)]
    ql = names[rng.integers(0, 20, nq)]
    scores = np.round(rng.standard_normal((nq, ng)), 1).astype(np.float32)  # many ties
    outs = [
        retrieval_metrics(scores, ql, gl, chunk_size=c, return_per_query=True)
        for c in (None, 1, 7, 64)
    ]
    for o in outs[1:]:
        for key in ("p_at_1", "r_precision", "map_at_r"):
            np.testing.assert_array_equal(o["per_query"][key], outs[0]["per_query"][key])
    # Ties go to the lower gallery index, as a stable sort would order them.
    ref = naive_retrieval(scores, ql, gl, np.zeros((nq, ng), dtype=bool))
    for key, value in ref.items():
        assert outs[0][key] == pytest.approx(value, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Verification


def test_verification_hand_computed() -> None:
    #           fold 0 ------------------  fold 1 ----------------------------
    scores = [0.9, 0.8, 0.25, 0.6, 0.75, 0.4, 0.2, 0.5, 0.8]
    same = [1, 1, 0, 0, 1, 1, 0, 0, 0]
    folds = [0, 0, 0, 0, 1, 1, 1, 1, 1]
    out = verification_accuracy_10fold(scores, np.array(same, dtype=bool), folds)
    # Fold 0 test, trained on fold 1: thresholds 0.3 and 0.625 both reach 3/5; lowest = 0.3.
    # At 0.3 fold 0 gets 0.9, 0.8 (same) and 0.25 (diff) right, 0.6 wrong -> 3/4.
    # Fold 1 test, trained on fold 0: 0.7 separates fold 0 perfectly; on fold 1 it gets
    # 0.75 (same), 0.2, 0.5 (diff) right, 0.4 and 0.8 wrong -> 3/5.
    assert out["folds"] == [0, 1]
    np.testing.assert_allclose(out["thresholds"], [0.3, 0.7])
    np.testing.assert_allclose(out["fold_accuracies"], [0.75, 0.6])
    np.testing.assert_allclose(out["train_accuracies"], [0.6, 1.0])
    assert out["mean"] == pytest.approx(0.675)
    assert out["std"] == pytest.approx(0.075)
    assert out["sem"] == pytest.approx(np.std([0.75, 0.6], ddof=1) / math.sqrt(2))


def test_verification_ten_folds_brute_force() -> None:
    rng = np.random.default_rng(3)
    p = 600
    same = rng.random(p) < 0.5
    scores = np.where(same, 0.6, 0.2) + 0.25 * rng.standard_normal(p)
    folds = np.repeat(np.arange(10), p // 10)
    out = verification_accuracy_10fold(scores, same, folds)
    for f, t in enumerate(out["thresholds"]):
        tr = folds != f
        grid = np.linspace(-1, 2, 3001)
        best = max(((scores[tr] > g) == same[tr]).mean() for g in grid)
        assert out["train_accuracies"][f] == pytest.approx(best)  # grid can't beat midpoints
        te = folds == f
        assert out["fold_accuracies"][f] == ((scores[te] > t) == same[te]).mean()
    assert 0.7 < out["mean"] < 0.95


def test_tar_at_far_hand_computed() -> None:
    imp = [0.9, 0.5, 0.4, 0.3, 0.1]
    gen = [0.95, 0.85, 0.45, 0.35]
    scores = np.array(imp + gen)
    same = np.array([False] * 5 + [True] * 4)
    out = tar_at_far(scores, same, [0.0, 0.2, 0.3, 0.4, 1.0])
    assert out["threshold"] == pytest.approx([0.9, 0.5, 0.5, 0.4, np.nextafter(0.1, -1)])
    assert out["tar"] == pytest.approx([0.25, 0.5, 0.5, 0.75, 1.0])
    assert out["achieved_far"] == pytest.approx([0.0, 0.2, 0.2, 0.4, 1.0])
    one = tar_at_far(scores, same, 0.2)
    assert isinstance(one["tar"], float) and one["tar"] == 0.5
    # Tied impostors are never split: both 0.5 are rejected at FAR <= 0.25.
    tied = tar_at_far([0.5, 0.5, 0.1, 0.1, 0.6], [0, 0, 0, 0, 1], 0.25)
    assert (tied["threshold"], tied["achieved_far"], tied["tar"]) == (0.5, 0.0, 1.0)
    # floor(0.29 * 100) must be 29, not 28.
    s = np.concatenate([np.arange(100) / 100.0, [2.0]])
    y = np.r_[np.zeros(100, dtype=bool), True]
    assert tar_at_far(s, y, 0.29)["achieved_far"] == pytest.approx(0.29)


def test_roc_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    for rounding in (None, 1):  # with and without ties
        same = rng.random(500) < 0.3
        scores = same * 0.8 + rng.standard_normal(500)
        if rounding is not None:
            scores = np.round(scores, rounding)
        assert roc_auc(scores, same) == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0


# --------------------------------------------------------------------------------------------
# Open set


def test_tpir_at_fpir_hand_computed() -> None:
    gallery = np.array([10, 11, 12])
    mated = np.array(
        [
            [0.9, 0.1, 0.2],  # label 10: right, top 0.9
            [0.7, 0.6, 0.1],  # label 11: wrong identity on top
            [0.1, 0.2, 0.55],  # label 12: right, top 0.55
        ]
    )
    nonmated = np.array([[0.8, 0.0, 0.1], [0.2, 0.6, 0.3], [0.5, 0.1, 0.0], [0.1, 0.3, 0.2]])
    out = tpir_at_fpir(mated, [10, 11, 12], nonmated, gallery, [0.0, 0.25, 0.5, 1.0])
    assert out["threshold"] == pytest.approx([0.8, 0.6, 0.5, np.nextafter(0.3, -1)])
    assert out["tpir"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert out["achieved_fpir"] == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert out["rank1"] == pytest.approx(2 / 3)
    one = tpir_at_fpir(mated, [10, 11, 12], nonmated, gallery, 0.5)
    assert one["tpir"] == pytest.approx(2 / 3) and one["fpir"] == 0.5


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_input_error() -> None:
    s = np.zeros((3, 4))
    with pytest.raises(InputError, match="query_labels has 2"):
        retrieval_metrics(s, [0, 1], [0, 1, 2, 3])
    with pytest.raises(InputError, match="gallery_labels 3"):
        retrieval_metrics(s, [0, 1, 2], [0, 1, 2])
    with pytest.raises(InputError, match="must be 2-D"):
        retrieval_metrics(np.zeros(4), [0], [0, 1, 2, 3])
    with pytest.raises(InputError, match="exclude must have the shape"):
        retrieval_metrics(s, [0, 1, 2], [0, 1, 2, 3], exclude=np.zeros((3, 3), dtype=bool))
    with pytest.raises(InputError, match="query_gallery_index has 2"):
        retrieval_metrics(s, [0, 1, 2], [0, 1, 2, 3], query_gallery_index=[0, 1])
    with pytest.raises(InputError, match="out of range"):
        retrieval_metrics(s, [0, 1, 2], [0, 1, 2, 3], query_gallery_index=[0, 1, 4])
    bad = s.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        retrieval_metrics(bad, [0, 1, 2], [0, 1, 2, 3])
    with pytest.raises(InputError, match="r has 1 entries"):
        retrieval_metrics_from_ranked(np.ones((2, 3), dtype=bool), [1])
    with pytest.raises(InputError, match="r = 1"):
        retrieval_metrics_from_ranked(np.ones((1, 3), dtype=bool), [1])
    with pytest.raises(InputError, match="lengths do not match: scores=3, same=2"):
        tar_at_far([0.1, 0.2, 0.3], [True, False], 0.1)
    with pytest.raises(InputError, match="fraction"):
        tar_at_far([0.1, 0.2], [True, False], 5)
    with pytest.raises(InputError, match="both genuine"):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(InputError, match="folds=2"):
        verification_accuracy_10fold([0.1, 0.2, 0.3], [True, False, True], [0, 1])
    with pytest.raises(InputError, match="at least 2 folds"):
        verification_accuracy_10fold([0.1, 0.2], [True, False], [0, 0])
    g = np.array([0, 1])
    with pytest.raises(InputError, match="gallery columns"):
        tpir_at_fpir(np.zeros((1, 2)), [0], np.zeros((1, 3)), g, 0.1)
    with pytest.raises(InputError, match="not in the gallery"):
        tpir_at_fpir(np.zeros((1, 2)), [5], np.zeros((1, 2)), g, 0.1)
    with pytest.raises(InputError, match="mated_labels has 2"):
        tpir_at_fpir(np.zeros((1, 2)), [0, 1], np.zeros((1, 2)), g, 0.1)


def test_real_lfw_embeddings_match_pml(lfw_images, extractor) -> None:  # noqa: ANN001
    """Leave-one-out on real embeddings of 40 LFW people x 4 images, through the port."""
    by_person: dict[str, list] = {}
    for p in lfw_images:
        by_person.setdefault(p.parent.name, []).append(p)
    people = [n for n, files in sorted(by_person.items()) if len(files) >= 4][::20][:40]
    paths = [f for n in people for f in by_person[n][:4]]
    fs = extractor.extract_paths(paths, progress=False)
    assert len(fs) == len(paths)
    labels = np.repeat(np.arange(len(people)), 4)
    emb = fs.embeddings.astype(np.float64)
    scores = emb @ emb.T
    assert_no_ties(scores)
    ours = retrieval_metrics(scores, labels, labels, query_gallery_index=np.arange(len(labels)))
    assert_same(ours, pml(scores, labels, labels, ref_includes_query=True))
    assert ours["p_at_1"] > 0.9  # these are real, recognisable faces
