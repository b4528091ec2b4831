"""Quality gate: features, fitting, the JSON file format and its use inside Stage 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facerank.errors import InputError, ModelFileError
from facerank.face.features import FeatureSet
from facerank.ranking import Ranking
from facerank.rerank.base import make_stage2
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.gate import FEATURES, QualityGate, gate_features, query_features


def _queries(n: int, hard: bool, seed: int) -> FeatureSet:
    """Query features: hard (occluded-like) queries have weaker, flatter grids."""
    rng = np.random.default_rng(seed)
    scale = 0.6 if hard else 1.0
    grids = (scale * np.abs(rng.normal(size=(n, 128, 8, 8)))).astype(np.float16)
    desc = rng.normal(size=(n, 128)).astype(np.float32) * 0.12
    lm = np.zeros((n, 68, 2))
    return FeatureSet(paths=[f"q{i}" for i in range(n)], descriptors=desc, grids={"l2": grids},
                      landmarks5=np.zeros((n, 5, 2)), landmarks68=lm, chip_landmarks68=lm,
                      boxes=np.zeros((n, 4)), det_scores=np.ones(n), det_sources=["t"] * n)


def _lists(n: int, hard: bool, seed: int, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Score lists: easy queries have one clear Stage-1 winner, hard ones a flat list."""
    rng = np.random.default_rng(seed)
    cos = np.sort(rng.uniform(0.80, 0.90, size=(n, k)), axis=1)[:, ::-1].copy()
    if not hard:
        cos[:, 0] = rng.uniform(0.95, 0.99, size=n)
    emd = rng.uniform(0.5, 0.7, size=(n, k))
    return cos.astype(np.float32), emd.astype(np.float32)


def _features(n: int, hard: bool, seed: int) -> np.ndarray:
    q = _queries(n, hard, seed)
    return gate_features(*_lists(n, hard, seed), query_features(q.descriptors, q.grids["l2"]))


def _fitted(budget: float = 0.01) -> QualityGate:
    x = np.concatenate([_features(300, False, 0), _features(300, True, 1)])
    y = np.r_[np.zeros(300, bool), np.ones(300, bool)]
    return QualityGate.fit(x, y, clean_budget=budget, meta={"note": "test"})


def test_features_shape_and_mismatch() -> None:
    cos, emd = _lists(5, False, 0)
    q = _queries(5, False, 0)
    qf = query_features(q.descriptors, q.grids["l2"])
    assert qf.shape == (5, 5)
    assert gate_features(cos, emd, qf).shape == (5, len(FEATURES))
    with pytest.raises(InputError, match="same"):
        gate_features(np.zeros((5, 30)), emd, qf)  # a longer Stage-1 list than the EMD scores
    with pytest.raises(InputError):
        gate_features(cos[:, :1], emd[:, :1], qf)
    with pytest.raises(InputError, match="query features"):
        gate_features(cos, emd, qf[:3])
    with pytest.raises(InputError):
        query_features(q.descriptors, q.grids["l2"][:, 0])


def test_fit_separates_held_out_queries_within_the_clean_budget() -> None:
    gate = _fitted()
    easy, hard = _features(400, False, 10), _features(400, True, 11)  # unseen draws
    assert gate.use_stage2(easy).mean() < 0.05  # budget 1 % on the training queries
    assert gate.use_stage2(hard).mean() > 0.9
    assert gate.meta["clean_budget"] == 0.01
    loose = _fitted(0.2)
    assert loose.threshold < gate.threshold
    assert loose.use_stage2(easy).mean() > gate.use_stage2(easy).mean()
    with pytest.raises(InputError, match="both classes"):
        QualityGate.fit(np.zeros((4, len(FEATURES))), np.zeros(4, bool))
    with pytest.raises(InputError, match="clean_budget"):
        QualityGate.fit(easy, np.r_[np.zeros(200, bool), np.ones(200, bool)], clean_budget=0)
    with pytest.raises(InputError, match="features"):
        gate.use_stage2(easy[:, :4])


def test_save_load_round_trip(tmp_path: Path) -> None:
    gate = _fitted()
    path = gate.save(tmp_path / "g.json")
    again = QualityGate.load(path)
    x = _features(50, True, 3)
    np.testing.assert_allclose(again.probability(x), gate.probability(x))
    assert again.threshold == gate.threshold
    assert again.meta["note"] == "test" and again.meta["features"] == list(FEATURES)


def test_bad_gate_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        QualityGate.load(tmp_path / "missing.json")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(ModelFileError, match="junk.json"):
        QualityGate.load(junk)
    raw = json.loads(_fitted().save(tmp_path / "g.json").read_text())
    raw["coef"] = raw["coef"][:3]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="retrain"):
        QualityGate.load(short)


def test_bundled_default_gate() -> None:
    gate = QualityGate.load("default")
    assert len(gate.coef) == len(FEATURES) and gate.meta["grid"] == "l2"
    assert gate.meta["k"] == 100


def test_gated_blend_keeps_easy_queries_in_stage1_order() -> None:
    gate = _fitted()
    (ce, ee), (ch, eh) = _lists(10, False, 20), _lists(10, True, 21)
    easy_q, hard_q = _queries(10, False, 20), _queries(10, True, 21)
    queries = FeatureSet.stack([easy_q[i] for i in range(10)] + [hard_q[i] for i in range(10)])
    cos = np.concatenate([ce, ch])  # (20, k)
    emd = np.concatenate([ee, eh])
    # longer Stage-1 list than k: the gate must look at the same k columns as the EMD scores
    k = cos.shape[1]
    tail = np.full((20, 30), 0.5, np.float32)
    full = np.concatenate([cos, tail], axis=1)
    idx = np.tile(np.arange(full.shape[1]), (20, 1))
    ranking = Ranking(idx, full, {"stage1": full})
    reranker = Stage2EMD(alpha=0.7, k=k, gate=gate)
    with pytest.raises(InputError, match="query features"):
        reranker.blend(ranking, emd)
    out = reranker.blend(ranking, emd, queries)
    np.testing.assert_array_equal(out.indices[:10], idx[:10])  # easy: untouched
    blended = 0.7 * emd[10:] + 0.3 * cos[10:]
    np.testing.assert_array_equal(out.indices[10:, :k], np.argsort(-blended, axis=1,
                                                                   kind="stable"))
    np.testing.assert_array_equal(out.indices[:, k:], idx[:, k:])
    alpha = out.stage_scores["alpha"]  # (Q, K): what each query was blended with
    assert (alpha[:10, :k] == 0).all() and np.allclose(alpha[10:, :k], 0.7)
    assert np.isnan(alpha[:, k:]).all()


def test_gated_blend_keeps_a_calibrated_order_for_queries_it_does_not_send() -> None:
    """After calibrated Stage 1 the incoming order is not the cosine order: a query the gate
    keeps must stay in it (re-sorting it by cosine would undo the calibration)."""
    gate = _fitted()
    (ce, ee), (ch, eh) = _lists(10, False, 20), _lists(10, True, 21)
    easy_q, hard_q = _queries(10, False, 20), _queries(10, True, 21)
    queries = FeatureSet.stack([easy_q[i] for i in range(10)] + [hard_q[i] for i in range(10)])
    cos, emd = np.concatenate([ce, ch]), np.concatenate([ee, eh])  # (20, k)
    k = cos.shape[1]
    cos[:, 10:] = cos[:, 10:][:, ::-1]  # a calibrator re-ordered the tail of every list
    idx = np.tile(np.arange(k), (20, 1))
    calibrated = np.sort(np.random.default_rng(3).normal(size=(20, k)), axis=1)[:, ::-1].copy()
    ranking = Ranking(idx, calibrated.astype(np.float32), {"stage1": cos})
    assert (np.argsort(-cos, axis=1, kind="stable") != idx).any(axis=1).all()  # orders differ
    out = Stage2EMD(alpha=0.7, k=k, gate=gate).blend(ranking, emd, queries)
    sent = out.stage_scores["alpha"][:, 0] > 0
    assert sent.any() and not sent.all()
    np.testing.assert_array_equal(out.indices[~sent], idx[~sent])  # calibrated order kept
    np.testing.assert_allclose(out.scores[~sent], calibrated[~sent], rtol=1e-6)
    blended = 0.7 * emd[sent] + 0.3 * cos[sent]
    np.testing.assert_array_equal(out.indices[sent], np.argsort(-blended, axis=1,
                                                                kind="stable"))
    # no gate, alpha 0: Stage 2 adds nothing, so no row moves either
    same = Stage2EMD(alpha=0.0, k=k, gate=None).blend(ranking, emd, queries)
    np.testing.assert_array_equal(same.indices, idx)


def test_registry_picks_the_bundled_gate_only_where_it_was_fitted(tmp_path: Path) -> None:
    assert make_stage2("emd").gate is not None  # l2 / apc: the bundled gate
    assert "gated" in make_stage2("emd").describe()
    assert make_stage2("emd", weighting="uniform").gate is None  # none fitted for it
    assert make_stage2("emd", gate="none").gate is None
    path = _fitted().save(tmp_path / "mine.json")
    assert make_stage2("emd", grid="l1", gate=str(path)).gate is not None
    with pytest.raises(ModelFileError, match="not found"):
        make_stage2("emd", gate=str(tmp_path / "nope.json"))


def _pre_setup(tmp_path: Path) -> tuple[QualityGate, FeatureSet, Ranking, np.ndarray]:
    gate = _fitted()
    gate_path = gate.save(tmp_path / "g.json")
    gate = QualityGate.load(gate_path)
    (ce, ee), (ch, eh) = _lists(10, False, 30), _lists(10, True, 31)
    easy_q, hard_q = _queries(10, False, 30), _queries(10, True, 31)
    queries = FeatureSet.stack([easy_q[i] for i in range(10)] + [hard_q[i] for i in range(10)])
    cos, emd = np.concatenate([ce, ch]), np.concatenate([ee, eh])
    idx = np.tile(np.arange(cos.shape[1]), (20, 1))
    return gate, queries, Ranking(idx, cos, {"stage1": cos}), emd


def test_pre_gate_skips_stage2_scores_of_queries_it_drops(tmp_path: Path) -> None:
    """Queries the pre-gate drops get no Stage-2 score and keep Stage 1; the others are
    decided by the full gate exactly as without a pre-gate; a pre-gate fitted for another
    gate is ignored."""
    from facerank.rerank.gate import PRE_FEATURES, PreGate

    gate, queries, ranking, emd = _pre_setup(tmp_path)
    k = emd.shape[1]
    full = Stage2EMD(alpha=0.7, k=k, gate=gate, pre_gate=False)
    sent = full.gate.use_stage2(full.gate_features(queries, ranking.scores, emd))
    assert sent.any() and not sent.all()
    # a pre-gate that passes exactly the hard half (the first feature is cos_std)
    n = len(PRE_FEATURES)
    pre = PreGate([0.0] * n, [1.0] * n, [0.0] * n, 0.0, 0.5, gate.digest())
    passed = np.arange(20) >= 10
    pre.coef[PRE_FEATURES.index("cos_top1")] = -1.0
    pre.bias, pre.threshold = 0.93, 0.0  # easy lists have cos_top1 >= 0.95, hard ones < 0.9
    pre.save(gate.pre_path())
    cascade = Stage2EMD(alpha=0.7, k=k, gate=str(tmp_path / "g.json"))
    assert cascade.pre_gate is not None
    calls: list[int] = []


    rows = np.flatnonzero(passed)
    cascade.topk_scores = lambda q, g, cand, progress=False: (calls.append(len(q)),
                                                              emd[rows])[1]
    out = cascade.rerank(queries, queries, ranking)
    assert calls == [10]  # Stage-2 scores of the 10 passed queries only
    ref = full.blend(ranking, emd, queries)
    keep = sent & passed | ~passed
    np.testing.assert_array_equal(out.indices[keep], ref.indices[keep])
    assert np.isnan(out.stage_scores["emd"][~passed]).all()
    assert (out.stage_scores["alpha"][~passed] == 0).all()
    # re-fit the gate: its old pre-gate no longer applies
    other = _fitted()
    other.threshold += 0.01
    other.save(tmp_path / "g.json")
    assert Stage2EMD(alpha=0.7, k=k, gate=str(tmp_path / "g.json")).pre_gate is None
    assert Stage2EMD(alpha=0.7, k=k, gate=gate, pre_gate=False).pre_gate is None


def test_pre_gate_fit_passes_every_sent_training_query() -> None:
    from facerank.rerank.gate import PreGate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    sent = x[:, 0] + 0.3 * rng.normal(size=400) > 1.0
    pre = PreGate.fit(x, sent, _fitted(), margin=0.0)
    assert pre.maybe_stage2(x)[sent].all()
    assert (~pre.maybe_stage2(x)).mean() > 0.3  # it drops a good share of the rest
    with pytest.raises(InputError):
        PreGate.fit(x, np.zeros(400, bool), _fitted())
