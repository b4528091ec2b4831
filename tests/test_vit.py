"""Face-ViT (H2L / H2 / H1): shapes, training, checkpoints, symmetry, re-ranking, refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from facerank._util.checkpoint import save_checkpoint
from facerank.errors import InputError, ModelFileError
from facerank.face.features import FeatureSet
from facerank.ranking import cosine_topk
from facerank.rerank.base import make_stage2, stage2_names
from facerank.rerank.device import GPU_CHUNK_PAIRS, default_chunk_pairs
from facerank.rerank.vit.model import FaceViT, ViTConfig
from facerank.rerank.vit.reranker import Stage2ViT
from facerank.rerank.vit.train import draw_pairs, hard_negatives, pair_loss

GRID = (32, 4, 4)  # small l1-like grids keep the tests fast


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a busy 2-core machine: one intra-op thread is 40x faster per step
    (measured 31 ms vs 1.3 s per training step of the overfit test under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _features(n: int, seed: int, grid: tuple[int, int, int] = GRID, name: str = "l1",
              protos: np.ndarray | None = None, labels: np.ndarray | None = None) -> FeatureSet:
    rng = np.random.default_rng(seed)
    grids = np.abs(rng.normal(size=(n, *grid))).astype(np.float32)
    if protos is not None:
        grids = protos[labels] + 0.3 * grids
    desc = grids.mean(axis=(2, 3))[:, :16].repeat(8, axis=1)[:, :128]
    desc = desc + 0.1 * rng.normal(size=desc.shape)
    lm = rng.uniform(20, 130, size=(n, 68, 2))
    return FeatureSet(paths=[f"img{i}" for i in range(n)], descriptors=desc.astype(np.float32),
                      grids={name: grids.astype(np.float16)}, landmarks5=np.zeros((n, 5, 2)),
                      landmarks68=lm, chip_landmarks68=lm, boxes=np.zeros((n, 4)),
                      det_scores=np.ones(n), det_sources=["test"] * n)


def _model(variant: str = "h2l", depth: int = 1, heads: int = 2, width: int = 16,
           seed: int = 0) -> FaceViT:
    torch.manual_seed(seed)
    c, h, w = GRID
    return FaceViT(ViTConfig(variant=variant, in_channels=c, grid_h=h, grid_w=w, width=width,
                             depth=depth, heads=heads, embed_dim=8, dropout=0.0)).eval()


@pytest.mark.parametrize("variant", ["h2l", "h2", "h1"])
@pytest.mark.parametrize("depth,heads", [(1, 1), (2, 2), (4, 4), (8, 8), (1, 8), (8, 1)])
def test_shapes_of_every_variant_depth_and_heads(variant: str, depth: int, heads: int) -> None:
    m = _model(variant, depth, heads, width=16)
    g = torch.rand(5, *GRID)
    ta, tb = m.tokens(g), m.tokens(g.flip(0))
    assert ta.shape == (5, 16, 16)
    out = m.pair_outputs(ta, tb)
    if variant == "h2":
        assert len(out) == 1 and out[0].shape == (5,)
    else:
        assert [o.shape for o in out] == [(5, 8), (5, 8)]
        assert torch.allclose(out[0].norm(dim=1), torch.ones(5), atol=1e-5)
    if variant != "h1":
        assert m.encode(ta, tb).shape == (5, 2 * 16 + 2, 16)
    s = m.pair_score(ta, tb)
    assert s.shape == (5,) and bool((s.abs() <= 1 + 1e-5).all())


def test_bad_configs_and_grids_are_refused() -> None:
    with pytest.raises(InputError, match="variant"):
        ViTConfig(variant="h3")
    with pytest.raises(InputError, match="1..8"):
        ViTConfig(depth=9)
    with pytest.raises(InputError, match="divisible"):
        ViTConfig(width=30, heads=4)
    with pytest.raises(InputError, match="grids"):
        _model().tokens(torch.rand(2, 16, 4, 4))


@pytest.mark.parametrize("variant", ["h2l", "h2"])
def test_tiny_model_overfits_64_pairs(variant: str) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 8)  # 8 people x 8 images
    protos = np.abs(rng.normal(size=(8, *GRID))).astype(np.float32)
    grids = torch.from_numpy(protos[labels] + 0.5 * np.abs(rng.normal(size=(64, *GRID))))
    a = rng.permutation(64)
    b = np.where(np.arange(64) % 2 == 0, a ^ 1, rng.permutation(64))  # half same person
    same = labels[a] == labels[b]
    m = _model(variant, width=32, heads=2).train()
    arc = torch.nn.Parameter(torch.randn(8, 8) * 0.01) if variant != "h2" else None
    params = list(m.parameters()) + ([arc] if arc is not None else [])
    opt = torch.optim.Adam(params, lr=3e-3)
    ya, yb = torch.from_numpy(labels[a]), torch.from_numpy(labels[b])
    first = None
    for _ in range(150):
        loss = pair_loss(m, arc, grids[a], grids[b], ya, yb, torch.from_numpy(same))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        s = m.pair_score(m.tokens(grids[a].float()), m.tokens(grids[b].float())).numpy()
    assert float(loss.detach()) < 0.2 * first
    assert s[same].min() > s[~same].max()  # every training pair separated


def test_save_load_gives_identical_scores_and_symmetric_pairs(tmp_path) -> None:
    fs_a, fs_b = _features(12, 1), _features(12, 2)
    m = _model("h2l", depth=2, heads=2)
    rr = Stage2ViT(m, grid="l1", alpha=0.4)
    cfg = {"kind": "vit", "backbone": "test-backbone", "model": m.cfg.to_dict(), "grid": "l1",
           "alpha": 0.4}
    save_checkpoint(tmp_path / "v.pt", m, cfg)
    loaded = Stage2ViT.load(tmp_path / "v.pt", backbone="test-backbone")
    s1, s2 = rr.score_pairs(fs_a, fs_b), loaded.score_pairs(fs_a, fs_b)
    assert np.array_equal(s1, s2)
    assert loaded.alpha == 0.4 and loaded.model.cfg == m.cfg
    # verification scores average both orders, so they are symmetric; one order is not
    assert np.allclose(s1, rr.score_pairs(fs_b, fs_a), atol=1e-6)
    one = rr.vit_pair_scores(fs_a, fs_b, symmetric=False)
    other = rr.vit_pair_scores(fs_b, fs_a, symmetric=False)
    assert not np.allclose(one, other, atol=1e-4)


def test_wrong_checkpoints_are_refused_in_one_line(tmp_path) -> None:
    m = _model("h2l")
    cfg = {"kind": "vit", "backbone": "test-backbone", "model": m.cfg.to_dict(), "grid": "l1"}
    wider = dict(cfg, model={**m.cfg.to_dict(), "width": 32})
    save_checkpoint(tmp_path / "w.pt", m, wider)
    with pytest.raises(ModelFileError, match="does not fit") as e:
        Stage2ViT.load(tmp_path / "w.pt")
    assert "\n" not in str(e.value)
    save_checkpoint(tmp_path / "b.pt", m, cfg)
    with pytest.raises(ModelFileError, match="backbone"):
        Stage2ViT.load(tmp_path / "b.pt", backbone="sface")
    save_checkpoint(tmp_path / "k.pt", m, dict(cfg, kind="url"))
    with pytest.raises(ModelFileError, match="not 'vit'"):
        Stage2ViT.load(tmp_path / "k.pt")
    save_checkpoint(tmp_path / "c.pt", m, dict(cfg, model={"nonsense": 1}))
    with pytest.raises(InputError, match="model"):
        Stage2ViT.load(tmp_path / "c.pt")
    with pytest.raises(ModelFileError, match="not found"):
        Stage2ViT.load(tmp_path / "missing.pt")
    rr = Stage2ViT.load(tmp_path / "b.pt")
    with pytest.raises(InputError, match="grids"):  # features of another grid shape
        rr.score_pairs(_features(3, 0, (64, 4, 4)), _features(3, 1, (64, 4, 4)))
    with pytest.raises(InputError, match="no grid"):
        rr.score_pairs(_features(3, 0, name="l2"), _features(3, 1, name="l2"))


@pytest.mark.parametrize("variant", ["h2l", "h2", "h1"])
@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_rerank_scores_all_pairs_in_batches(variant: str, runtime: str) -> None:
    gallery, queries = _features(30, 3), _features(7, 4)
    if variant == "h1" and runtime != "torch":
        with pytest.raises(InputError, match="runtime"):
            Stage2ViT(_model(variant), grid="l1", runtime=runtime)
        return
    rr = Stage2ViT(_model(variant), grid="l1", alpha=1.0, k=10, chunk_pairs=16,
                   runtime=runtime)
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, 15)
    vit = rr.vit_scores(queries, gallery, ranking.indices[:, :10])
    qi = np.repeat(np.arange(7), 10)
    direct = rr.vit_pair_scores(queries.take(qi), gallery.take(ranking.indices[:, :10].ravel()),
                                symmetric=False).reshape(7, 10)
    assert np.allclose(vit, direct, atol=1e-5)
    out = rr.rerank(queries, gallery, ranking)
    assert out.indices.shape == (7, 15)
    assert np.array_equal(np.sort(out.indices[:, :10], 1), np.sort(ranking.indices[:, :10], 1))
    assert np.all(np.diff(out.scores[:, :10], axis=1) <= 1e-6)  # alpha 1: ordered by ViT
    assert np.array_equal(out.indices[:, 10:], ranking.indices[:, 10:])
    assert "vit" in out.stage_scores


@pytest.mark.parametrize("variant,depth", [("h2l", 1), ("h2", 2)])
def test_fast_runtimes_give_the_models_scores(variant: str, depth: int) -> None:
    """The restructured scorer and its float32 ONNX graph equal `FaceViT.pair_score` within
    float rounding; int8 weights stay close; a runtime is chosen once and is deterministic."""
    from facerank.rerank.vit.fast import OnnxPairScorer, PairScorer

    m = _model(variant, depth=depth, heads=2)
    a, b = _features(6, 5), _features(9, 6)
    ga = torch.from_numpy(a.grids["l1"].astype(np.float32))
    gb = torch.from_numpy(b.grids["l1"].astype(np.float32))
    ia = torch.tensor([0, 0, 0, 5, 2, 3, 4, 1, 1, 0, 2])  # one face in many pairs, as a probe
    ib = torch.tensor([0, 1, 8, 7, 2, 3, 4, 5, 6, 3, 2])
    with torch.no_grad():
        ref = m.pair_score(m.tokens(ga)[ia], m.tokens(gb)[ib]).numpy()
        assert np.allclose(PairScorer(m)(ga, gb, ia, ib).numpy(), ref, atol=1e-5)
    args = (ga.numpy(), gb.numpy(), ia.numpy(), ib.numpy())
    assert np.allclose(OnnxPairScorer(m, "onnx", threads=1).score(*args), ref, atol=1e-5)
    int8 = OnnxPairScorer(m, "onnx-int8", threads=1).score(*args)
    assert np.abs(int8 - ref).max() < 0.05 and not np.array_equal(int8, ref)
    assert np.array_equal(OnnxPairScorer(m, "onnx-int8", threads=1).score(*args), int8)
    assert not m.training  # exporting a copy leaves the model as it was


def test_runtime_choice() -> None:
    rr = Stage2ViT(_model("h2l"), grid="l1")
    assert rr.runtime == "onnx-int8" and "onnx-int8" in rr.describe()
    assert Stage2ViT(_model("h1"), grid="l1").runtime == "torch"  # one-image: torch only
    with pytest.raises(InputError, match="runtime"):
        Stage2ViT(_model("h2l"), grid="l1", runtime="tensorrt")


def test_registry_and_device_chunks(tmp_path) -> None:
    assert "vit" in stage2_names()
    m = _model()
    save_checkpoint(tmp_path / "r.pt", m, {"kind": "vit", "backbone": "x",
                                           "model": m.cfg.to_dict(), "grid": "l1",
                                           "alpha": 0.3})
    rr = make_stage2("vit", checkpoint=str(tmp_path / "r.pt"), k=5)
    assert isinstance(rr, Stage2ViT) and rr.k == 5 and rr.alpha == 0.3
    assert rr.chunk_pairs == default_chunk_pairs("cpu", rr.chunk_pairs)
    assert default_chunk_pairs("cuda", 1024) == GPU_CHUNK_PAIRS
    assert default_chunk_pairs("cpu", 1024) == 1024
    with pytest.raises(InputError, match="alpha"):
        make_stage2("vit", checkpoint=str(tmp_path / "r.pt"), alpha=2.0)


def test_the_bundled_fast_vit_is_the_bundled_model_distilled_into_width_48() -> None:
    from facerank._util.checkpoint import read_config
    from facerank.rerank.vit.reranker import DEFAULT_CHECKPOINT, FAST_CHECKPOINT

    cfg, wide = read_config(FAST_CHECKPOINT), read_config(DEFAULT_CHECKPOINT)
    assert (cfg["model"]["width"], cfg["model"]["heads"]) == (48, 1)
    assert cfg["backbone"] == wide["backbone"] and cfg["split"] == wide["split"]
    teacher = cfg["distilled_from"]
    assert teacher["checkpoint"] == DEFAULT_CHECKPOINT.name
    assert teacher["sha256"] == hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()
    assert "--distil-from src/facerank/rerank/checkpoints/vit-h2l-dlib.pt" in cfg["command"]
    rr = make_stage2("vit-fast", backbone=wide["backbone"])
    assert isinstance(rr, Stage2ViT) and "width 48" in rr.describe() and rr.gate is not None
    with pytest.raises(ModelFileError, match="backbone"):
        make_stage2("vit-fast", backbone="sface_2021dec_int8bq")


def test_pair_drawing_and_hard_negatives() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    emb = rng.normal(size=(10, 8))
    nb = hard_negatives(emb, labels, n=3)
    assert np.all(labels[nb] != labels[:, None])
    for seed in range(5):
        pb = draw_pairs(labels, nb, np.random.default_rng(seed))
        assert len(pb.same) == 20 and pb.same.sum() == 10
        assert np.array_equal(labels[pb.row_a] == labels[pb.row_b], pb.same)
        self_pairs = pb.row_a == pb.row_b
        assert np.all(labels[pb.row_a[self_pairs]] == 2)  # only the one-image person
        assert np.all(pb.kind_a[self_pairs] > 0)  # ... and then face a is a variant


@pytest.mark.parametrize("variant", ["h2l", "h2", "h1"])
@pytest.mark.parametrize("method", ["chefer", "rollout"])
def test_heatmaps(variant: str, method: str, tmp_path) -> None:
    from facerank.explain.vit_heatmap import render_heatmaps
    from facerank.rerank.vit.reranker import explain_pairs

    a, b = _features(3, 5), _features(3, 6)
    rr = Stage2ViT(_model(variant, depth=2), grid="l1", alpha=0.5, runtime="torch")
    heat = explain_pairs(rr, a, b, method)  # explains (and shows) the torch model's score
    assert heat.heat_a.shape == (3, 4, 4) and heat.heat_b.shape == (3, 4, 4)
    # each map is scaled to max 1, or all 0 where no token has positive relevance (chefer on an
    # untrained model: which pairs do depends on the CPU's float kernels)
    peaks = heat.heat_a.max(axis=(1, 2))
    assert np.all(np.isclose(peaks, 1.0) | (peaks == 0)) and np.isclose(peaks, 1.0).sum() >= 2
    assert np.all(heat.heat_a >= 0)
    assert np.allclose(heat.score, rr.vit_pair_scores(a, b, symmetric=False), atol=1e-5)
    chip = np.zeros((150, 150, 3), np.uint8)
    path = render_heatmaps(chip, chip, heat, 0, tmp_path / "h.png")
    assert path.stat().st_size > 1000
    with pytest.raises(InputError, match="method"):
        explain_pairs(rr, a, b, "gradcam")


def test_grid_table_picks_one_draw_of_each_pairs_kind() -> None:
    from facerank.rerank.vit.train import GridTable

    g = [np.full((4, 1, 2, 2), v, dtype=np.float16) for v in (0, 1, 2)]  # clean, crop, mask
    plain = GridTable(g, None)
    rng = np.random.default_rng(0)
    kinds = np.array([0, 1, 2, 1] * 50)
    assert plain.columns(kinds, rng) is kinds  # no extra draws: nothing drawn from rng
    assert rng.random() == np.random.default_rng(0).random()
    table = GridTable(g, None, [(1, np.full((4, 1, 2, 2), 7, np.float16)),
                                (2, np.full((4, 1, 2, 2), 8, np.float16)),
                                (1, np.full((4, 1, 2, 2), 9, np.float16))])
    assert table.n_kinds == 3
    cols = table.columns(kinds, rng)
    seen = table.get(np.zeros(len(cols), np.int64), cols)[:, 0, 0, 0].numpy()
    assert set(seen[kinds == 0]) == {0} and set(seen[kinds == 1]) == {1, 7, 9}
    assert set(seen[kinds == 2]) == {2, 8}


def test_train_vit_end_to_end_on_synthetic_features(tmp_path) -> None:
    from types import SimpleNamespace

    from facerank.rerank.vit.train import train_vit
    from facerank.train.data import TrainingData
    from facerank.train.split import identity_fold

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(60), 3)
    labels = np.concatenate([labels, np.arange(60, 80)])  # 20 one-image people
    protos = np.abs(rng.normal(size=(80, *GRID))).astype(np.float32)
    clean = _features(len(labels), 1, protos=protos, labels=labels)
    crop = _features(len(labels), 2, protos=protos, labels=labels)
    data = SimpleNamespace(features=clean, extractor=SimpleNamespace(model_id="fake-backbone"))
    td = TrainingData(data, {"crop": crop}, labels, identity_fold(labels, 0), 0, 1)
    res = train_vit({"variant": "h2l", "width": 16, "depth": 1, "heads": 2, "embed_dim": 8},
                    "l1", True, 2, 32, 1e-3, 0, tmp_path / "t.pt", "test", False, td,
                    variants=("crop",))
    cfg = res["config"]
    assert cfg["kind"] == "vit" and cfg["backbone"] == "fake-backbone"
    assert cfg["split"]["train_fold"] is True and cfg["variants_trained"] == ["crop"]
    assert 0.0 <= cfg["alpha"] <= 1.0 and len(cfg["measured"]["history"]) == 2
    train_rows = set(np.flatnonzero(td.fold))
    assert cfg["n_train_images"] + cfg["n_val_images"] == len(train_rows)
    rr = Stage2ViT.load(tmp_path / "t.pt", backbone="fake-backbone", gate="auto")
    assert rr.gate is not None and rr.alpha == cfg["alpha_gated"]
    with pytest.raises(InputError, match="unknown variants"):
        train_vit({}, "l1", True, 1, 32, 1e-3, 0, None, "", False, td, variants=("hat",))
    # --subfold: trained on one part of the half; the JSON says which, for the gate's fitting
    from facerank.train.split import sub_fold

    many = np.repeat(np.arange(240), 3)  # enough people for a quarter to hold out some
    pro = np.abs(rng.normal(size=(240, *GRID))).astype(np.float32)
    big = TrainingData(SimpleNamespace(features=_features(len(many), 3, protos=pro,
                                                          labels=many),
                                       extractor=data.extractor),
                       {"crop": _features(len(many), 4, protos=pro, labels=many)}, many,
                       identity_fold(many, 0), 0, 1)
    part = train_vit({"variant": "h2l", "width": 8, "depth": 1, "heads": 1, "embed_dim": 8},
                     "l1", True, 1, 32, 1e-3, 0, None, "test", False, big, variants=("crop",),
                     subfold=True)["config"]
    seen = sub_fold(many, True)
    assert part["split"]["subfold"] is True and "subfold" not in cfg["split"]
    assert part["n_train_images"] + part["n_val_images"] == seen.sum() == 180

    # extra draws of a variant (other seeds, training rows only): recorded, and they change
    # what is learnt; a variant that is not trained is refused
    asked = []

    def draw(data, kind, rows, seed, progress):  # noqa: ANN001
        asked.append((kind, len(rows), seed))
        return _features(len(many), 10 + seed, protos=pro, labels=many).take(rows)

    small = {"variant": "h2l", "width": 8, "depth": 1, "heads": 1, "embed_dim": 8}
    kw = {"variants": ("crop",), "subfold": True}
    more = train_vit(small, "l1", True, 1, 32, 1e-3, 0, None, "test", False, big,
                     extra_seeds=(2, 3), extra_variants=("crop",), draw=draw, **kw)
    assert asked == [("crop", 180, 2), ("crop", 180, 3)]
    assert more["config"]["extra_draws"]["seeds"] == [2, 3] and "extra_draws" not in part
    again = train_vit(small, "l1", True, 1, 32, 1e-3, 0, None, "test", False, big, **kw)
    assert not torch.equal(more["model"].embed.weight, again["model"].embed.weight)
    with pytest.raises(InputError, match="extra draws"):
        train_vit(small, "l1", True, 1, 32, 1e-3, 0, None, "", False, big, extra_seeds=(2,),
                  extra_variants=("mask",), draw=draw, **kw)

    # distillation: a narrower student of the model above records its teacher, and the teacher
    # term changes what it learns; a teacher of the other identity half is refused
    narrow = {"variant": "h2l", "width": 8, "depth": 1, "heads": 1, "embed_dim": 8}
    args = ("l1", True, 2, 32, 1e-3, 0, None, "test", False, td)
    plain = train_vit(narrow, *args, variants=("crop",))
    taught = train_vit(narrow, *args, variants=("crop",), teacher=tmp_path / "t.pt", distil=5.0)
    d = taught["config"]["distilled_from"]
    assert d["checkpoint"] == "t.pt" and d["weight"] == 5.0 and d["model"]["width"] == 16
    assert d["sha256"] == hashlib.sha256((tmp_path / "t.pt").read_bytes()).hexdigest()
    assert "distilled_from" not in plain["config"]
    assert not torch.equal(plain["model"].embed.weight, taught["model"].embed.weight)
    with pytest.raises(InputError, match="identity half 0"):
        train_vit(narrow, "l1", False, 1, 32, 1e-3, 0, None, "", False, td, variants=("crop",),
                  teacher=tmp_path / "t.pt")
    (tmp_path / "nomodel.pt").write_bytes((tmp_path / "t.pt").read_bytes())
    bad = {k: v for k, v in cfg.items() if k != "model"}
    (tmp_path / "nomodel.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="no valid 'model' entry"):
        train_vit(narrow, *args, variants=("crop",), teacher=tmp_path / "nomodel.pt")


def test_vit_plus_emd_is_the_mean_of_both_blends(tmp_path) -> None:
    from facerank.rerank.emd.reranker import Stage2EMD

    def both_grids(n: int, seed: int) -> FeatureSet:
        fs = _features(n, seed)
        fs.grids["l2"] = _features(n, seed + 100, (16, 8, 8)).grids["l1"]
        return fs

    gallery, queries = both_grids(20, 1), both_grids(4, 2)
    m = _model()
    save_checkpoint(tmp_path / "v.pt", m, {"kind": "vit", "backbone": "x",
                                           "model": m.cfg.to_dict(), "grid": "l1",
                                           "alpha": 0.3})
    rr = make_stage2("vit+emd", checkpoint=str(tmp_path / "v.pt"), k=8, gate="none")
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, 10)
    out = rr.rerank(queries, gallery, ranking)
    cand = ranking.indices[:, :8]
    vit = Stage2ViT.load(tmp_path / "v.pt").vit_scores(queries, gallery, cand)
    emd = Stage2EMD(alpha=0.7, k=8).emd_scores(queries, gallery, cand)
    cos = ranking.scores[:, :8]
    want = 0.5 * (0.3 * vit + 0.7 * cos) + 0.5 * (0.7 * emd + 0.3 * cos)
    assert np.allclose(np.sort(out.scores[:, :8], axis=1), np.sort(want, axis=1), atol=1e-5)
    assert np.all(np.diff(out.scores[:, :8], axis=1) <= 1e-6)


def test_vit_plus_emd_runs_the_vit_only_for_the_queries_emds_gate_sends(tmp_path) -> None:
    class Half:  # a gate that sends the even queries on
        def use_stage2(self, feats: np.ndarray) -> np.ndarray:
            return np.arange(len(feats)) % 2 == 0

    gallery, queries = _features(20, 1), _features(4, 2)
    for fs, seed in ((gallery, 1), (queries, 2)):
        fs.grids["l2"] = _features(len(fs), seed + 100, (16, 8, 8)).grids["l1"]
    m = _model()
    save_checkpoint(tmp_path / "v.pt", m, {"kind": "vit", "backbone": "x",
                                           "model": m.cfg.to_dict(), "grid": "l1",
                                           "alpha": 0.3})
    rr = make_stage2("vit+emd", checkpoint=str(tmp_path / "v.pt"), k=8)
    assert rr.gate is not None and rr.gate is rr.emd.gate  # EMD's bundled l2/APC gate
    assert make_stage2("vit+emd", checkpoint=str(tmp_path / "v.pt"), gate="none").gate is None
    rr.emd.gate = Half()
    seen = []
    score = rr.vit.vit_scores
    rr.vit.vit_scores = lambda q, g, cand, progress=False: seen.append(len(q)) or score(q, g,
                                                                                        cand)
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, 10)
    out = rr.rerank(queries, gallery, ranking)
    assert seen == [2]  # queries 0 and 2 only
    np.testing.assert_array_equal(out.indices[[1, 3]], ranking.indices[[1, 3]])
    assert np.isnan(out.stage_scores["vit"][[1, 3]]).all()
    assert np.isfinite(out.stage_scores["vit"][[0, 2], :8]).all()
    assert np.isfinite(out.stage_scores["emd"][:, :8]).all()


def test_the_bundled_sface_vit_its_benefit_gate_and_pre_gate_belong_together() -> None:
    from facerank._util.checkpoint import read_config
    from facerank.rerank.gate import PreGate, QualityGate
    from facerank.rerank.vit.reranker import (
        BUNDLED,
        benefit_gate_path,
        default_checkpoint,
    )

    ckpt = default_checkpoint("sface")
    assert ckpt == BUNDLED / "vit-h2l-sface.pt"
    assert default_checkpoint("sface_2021dec_int8bq@facerank-features-1") == ckpt
    cfg = read_config(ckpt)
    assert cfg["backbone"].startswith("sface") and cfg["grid"] == "l2"
    assert cfg["model"]["grid_h"] == cfg["model"]["grid_w"] == 7
    # trained on one part of identity half A; its gate on the other part, unseen by the model
    assert cfg["split"]["train_fold"] is True and cfg["split"]["subfold"] is True
    gate = QualityGate.load(benefit_gate_path(ckpt))
    assert gate.meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert gate.meta["split"]["subfold"] is False and gate.threshold < 1.0
    pre = PreGate.for_gate(gate)
    assert pre is not None and pre.for_gate == gate.digest()
    rr = make_stage2("vit", backbone="sface")
    assert isinstance(rr, Stage2ViT) and rr.gate is not None
    assert rr.gate.digest() == gate.digest() and rr.pre_gate is not None
    assert rr.alpha == cfg["alpha_gated"] == gate.meta["alpha"]
    with pytest.raises(ModelFileError, match="backbone"):  # the narrow model is dlib's only
        make_stage2("vit-fast", backbone="sface")
