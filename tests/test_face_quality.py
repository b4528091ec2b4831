"""Chip sharpness: the feature, its storage with every face (feature cache, feature files,
gallery shards, older ones without it), and the match probability that reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerank.calibrate.probability import MatchProbability, quality_features
from facerank.errors import InputError, ModelFileError
from facerank.face.features import FeatureExtractor, FeatureSet
from facerank.face.quality import chip_sharpness


def _chip(seed: int = 0, size: int = 112) -> np.ndarray:
    """A face-sized RGB chip with detail at every scale (smoothed noise plus edges)."""
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur(rng.normal(128, 60, (size, size)).astype(np.float32), (0, 0), 0.8)
    g += cv2.GaussianBlur(rng.normal(0, 200, (size, size)).astype(np.float32), (0, 0), 6)
    cv2.circle(g, (size // 2, size // 2), size // 3, 40.0, 2)
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_blurred_and_low_resolution_chips_score_lower() -> None:
    sharp = _chip()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    small = cv2.resize(cv2.resize(sharp, (24, 24), interpolation=cv2.INTER_AREA), (112, 112),
                       interpolation=cv2.INTER_LINEAR)
    s = chip_sharpness(np.stack([sharp, blurred, small]))
    assert s.shape == (3,) and np.isfinite(s).all()
    assert s[0] > s[1] + 1.0 and s[0] > s[2] + 1.0
    # a ratio: brightness and contrast changes leave it nearly unchanged
    dim = (sharp.astype(np.float32) * 0.6 + 40).astype(np.uint8)
    assert abs(chip_sharpness(dim)[0] - s[0]) < 0.15
    # one chip or a batch; the dlib chip size gives the same ordering
    assert chip_sharpness(sharp)[0] == pytest.approx(s[0])
    big = _chip(size=150)
    assert chip_sharpness(big)[0] > chip_sharpness(cv2.GaussianBlur(big, (0, 0), 2.5))[0] + 1
    with pytest.raises(InputError, match="RGB chips"):
        chip_sharpness(np.zeros((4, 112, 112)))


def _sharp_pairs(n: int = 6000, seed: int = 0):  # noqa: ANN202
    """Clean pairs and blurred-probe pairs whose descriptors look alike (same length, same
    direction statistics) but whose same-person scores fall: only sharpness tells them apart."""
    rng = np.random.default_rng(seed)
    d = 8
    centroid = np.eye(d)[0]
    rows = []
    for g, sharp, (ms, ss) in ((0, -3.5, (0.7, 0.08)), (1, -6.0, (0.35, 0.12))):
        y = rng.random(n) < 0.5
        s = np.where(y, rng.normal(ms, ss, n), rng.normal(0.1, 0.08, n))
        da = rng.normal(size=(n, d)) * 3
        db = rng.normal(size=(n, d)) * 3
        sa = rng.normal(-3.5, 0.3, n)
        sb = rng.normal(sharp, 0.3, n)
        rows.append((s, y, da, db, sa, sb, np.full(n, g)))
    return [np.concatenate(c) for c in zip(*rows, strict=True)], centroid


FEATS = ("log_norm", "centroid", "sharpness")


def _fit() -> tuple[MatchProbability, list]:
    (s, y, da, db, sa, sb, g), centroid = _sharp_pairs()
    m = MatchProbability.fit_quality(s, y, quality_features(da, centroid, FEATS, sa),
                                     quality_features(db, centroid, FEATS, sb), g, centroid,
                                     calibrator="none", backbone="sface", features=FEATS,
                                     design="minmax")
    return m, [s, y, da, db, sa, sb, g]


def test_probability_reads_sharpness_and_falls_back_without_it(tmp_path: Path) -> None:
    from facerank.calibrate.probability import expected_calibration_error

    m, (s, y, da, db, sa, sb, g) = _fit()
    assert m.needs_sharpness
    qa, qb = m.face_quality(da, sa), m.face_quality(db, sb)
    deg = g == 1
    w = np.where(y, 0.5 / y[deg].sum(), 0.5 / (~y[deg]).sum())
    with_q = expected_calibration_error(m(s, qa, qb)[deg], y[deg], weights=w[deg])["ece"]
    score_only = expected_calibration_error(m(s)[deg], y[deg], weights=w[deg])["ece"]
    assert with_q < 0.03 < score_only
    # no sharpness, a NaN one (a face stored before it was kept) or a wrong count: None,
    # so the caller gets the score-only form
    assert m.face_quality(da[:3]) is None
    assert m.face_quality(da[:3], np.array([-3.0, np.nan, -4.0])) is None
    assert m.face_quality(da[:3], sa[:2]) is None
    np.testing.assert_allclose(m(s[:3], m.face_quality(da[:3]), qb[:3]), m(s[:3]))
    assert m.verdict(float(s[0]), qa=None, qb=qb[:1]) == m.verdict(float(s[0]))
    # the fitting helper itself asks for the values instead of guessing
    with pytest.raises(InputError, match="sharpness"):
        quality_features(da[:3], np.eye(8)[0], FEATS)
    # round trip; a model naming a feature this version does not know is refused on load
    m.save(tmp_path / "m.json")
    back = MatchProbability.load(tmp_path / "m.json", calibrator="none", backbone="sface")
    np.testing.assert_allclose(back(s, qa, qb), m(s, qa, qb))
    d = m.to_dict()
    d["quality"]["features"] = ["log_norm", "centroid", "glare"]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="unknown quality feature.*glare"):
        MatchProbability.load(tmp_path / "bad.json")
    # a two-feature model (the older form) needs no sharpness
    old = MatchProbability.default("none", "sface")
    assert old is not None and not old.needs_sharpness


def test_feature_files_keep_sharpness_and_older_files_read_as_unknown(tmp_path: Path) -> None:
    fs = FeatureSet(paths=["a", "b"], descriptors=np.ones((2, 4), np.float32), grids={},
                    landmarks5=np.zeros((2, 5, 2)), landmarks68=np.zeros((2, 68, 2)),
                    chip_landmarks68=np.zeros((2, 68, 2)), boxes=np.zeros((2, 4)),
                    det_scores=np.zeros(2), det_sources=["x", "y"],
                    sharpness=np.array([-3.2, -5.9]))
    fs.save(tmp_path / "f.npz")
    back = FeatureSet.load(tmp_path / "f.npz")
    np.testing.assert_allclose(back.sharpness, [-3.2, -5.9])
    assert back.take([1]).sharpness.tolist() == [-5.9] and back[1].sharpness == -5.9
    assert FeatureSet.stack([back[0], back[1]]).sharpness.tolist() == [-3.2, -5.9]
    with np.load(tmp_path / "f.npz") as z:  # a file written before sharpness was kept
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files if k != "sharpness"})
    assert np.isnan(FeatureSet.load(tmp_path / "old.npz").sharpness).all()
    with pytest.raises(InputError, match="sharpness"):
        FeatureSet(paths=["a"], descriptors=np.ones((1, 4)), grids={},
                   landmarks5=np.zeros((1, 5, 2)), landmarks68=np.zeros((1, 68, 2)),
                   chip_landmarks68=np.zeros((1, 68, 2)), boxes=np.zeros((1, 4)),
                   det_scores=np.zeros(1), det_sources=["x"], sharpness=np.zeros(3))


@pytest.fixture(scope="module")
def faces(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    for name in ("Colin_Powell", "Tony_Blair"):
        (root / name).mkdir()
        for f in sorted((lfw_root / "images" / name).glob("*.jpg"))[:2]:
            shutil.copy(f, root / name / f.name)
    return root


def test_extraction_and_gallery_store_sharpness_older_ones_fall_back(
        faces: Path, extractor: FeatureExtractor, tmp_path: Path) -> None:
    from facerank.calibrate.factory import attach_probability
    from facerank.face.imageio import load_image
    from facerank.gallery import StoredGallery

    paths = sorted(faces.glob("*/*.jpg"))
    fs = extractor.extract_paths(paths, progress=False)
    assert np.isfinite(fs.sharpness).all()
    # the stored value is the sharpness of the chip the backbone saw
    chip = extractor.backbone.align_points(load_image(paths[0]), fs.landmarks5[0])
    assert fs.sharpness[0] == pytest.approx(chip_sharpness(chip)[0], abs=1e-9)
    # a cache entry written before sharpness was kept: recomputed from the image, same value
    fx = FeatureExtractor(backbone=extractor.backbone, detector=extractor.detector,
                          cache=tmp_path / "cache")
    first = fx.extract_paths(paths[:1], progress=False)
    entry = next((tmp_path / "cache").rglob("*.npz"))
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files if k != "sharpness"}
    np.savez(entry, **arrays)
    again = fx.extract_paths(paths[:1], progress=False)
    assert again.sharpness[0] == pytest.approx(first.sharpness[0], abs=1e-9)
    with np.load(entry) as z:  # and written back, so it is computed only once
        assert float(z["sharpness"]) == pytest.approx(first.sharpness[0], abs=1e-9)

    g = StoredGallery.create(tmp_path / "g", extractor, load_grids=False)
    g.add_folder(faces, progress=False)
    gf = g.features()
    assert np.isfinite(gf.sharpness).all()
    by_name = {Path(p).name: x for p, x in zip(gf.paths, gf.sharpness, strict=True)}
    np.testing.assert_allclose([by_name[p.name] for p in paths], fs.sharpness, atol=1e-9)
    probe = extractor.extract_paths(paths[:1], progress=False)
    (s, y, da, db, sa, sb, grp), _ = _sharp_pairs()
    centroid = gf.embeddings.mean(axis=0).astype(np.float64)
    rng = np.random.default_rng(0)
    d_a, d_b = rng.normal(size=(len(s), gf.descriptors.shape[1])), rng.normal(
        size=(len(s), gf.descriptors.shape[1]))
    model = MatchProbability.fit_quality(
        s, y, quality_features(d_a, centroid, FEATS, sa),
        quality_features(d_b, centroid, FEATS, sb), grp, centroid, calibrator="none",
        backbone="dlib", features=FEATS, design="minmax")
    res = attach_probability(g.search(probe, k=3), model, probe, gf)
    rows = [r.row for r in res]
    qg = model.face_quality(gf.descriptors[rows], gf.sharpness[rows])
    qp = model.face_quality(probe.descriptors, probe.sharpness)
    assert qg is not None and qp is not None  # every face of a new gallery has its quality
    np.testing.assert_allclose([r.probability for r in res],
                               model(np.array([r.stage1 for r in res]),
                                     np.repeat(qp, len(rows), axis=0), qg))
    g.close()

    # the same gallery as an older version wrote it: shards without sharpness
    for shard in (tmp_path / "g" / "arrays").glob("*.npz"):
        with np.load(shard) as z:
            arrays = {k: z[k] for k in z.files if k != "sharpness"}
        np.savez(shard, **arrays)
    old = StoredGallery.open(tmp_path / "g", extractor, load_grids=False)
    of = old.features()
    assert len(of) == len(gf) and np.isnan(of.sharpness).all()
    assert model.face_quality(of.descriptors, of.sharpness) is None
    np.testing.assert_array_equal(of.descriptors, gf.descriptors)
    res = attach_probability(old.search(probe, k=3), model, probe, of)
    np.testing.assert_allclose([r.probability for r in res],
                               model(np.array([r.stage1 for r in res])))  # score only
    old.close()
