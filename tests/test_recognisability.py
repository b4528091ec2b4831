"""The learned recognisability feature of the match probability: a ridge regression from a
face's own data (descriptor, its length, sharpness) to how well the face matches its person,
kept in the model file's quality block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facerank.calibrate.probability import (
    MatchProbability,
    expected_calibration_error,
    fit_recognisability,
    quality_features,
    recognisability,
)
from facerank.errors import InputError, ModelFileError

D = 8
CENTROID = np.eye(D)[2]  # unrelated to recognisability: the mean-face cosine cannot tell


def _faces(r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) recognisability in [0, 1] -> (N, D) raw descriptors whose direction says it
    (towards e0 when recognisable, e1 when not) and whose length does not."""
    d = r[:, None] * np.eye(D)[0] + (1 - r[:, None]) * np.eye(D)[1]
    d = d + rng.normal(0, 0.05, (len(r), D))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * rng.uniform(10, 14, (len(r), 1))


def _pairs(n: int = 4000, seed: int = 0):  # noqa: ANN202
    """Pairs of a clean face (r ~ 0.9) and a face of any recognisability: the same-person
    score falls with the second face's recognisability."""
    rng = np.random.default_rng(seed)
    ra, rb = rng.uniform(0.85, 0.95, n), rng.uniform(0.05, 0.95, n)
    y = rng.random(n) < 0.5
    s = np.where(y, rng.normal(0.05 + 0.5 * ra * rb, 0.06), rng.normal(0.05, 0.06, n))
    group = (rb < 0.5).astype(int)  # 0: the clean-ish pairs, 1: the degraded ones
    return s, y, _faces(ra, rng), _faces(rb, rng), ra, rb, group


def _fit(with_rec: bool = True):  # noqa: ANN202
    s, y, da, db, ra, rb, g = _pairs()
    spec = None
    feats: tuple[str, ...] = ("log_norm", "centroid")
    if with_rec:
        spec = fit_recognisability(np.r_[da, db], np.r_[ra, rb], ("descriptor", "log_norm"))
        feats += ("recognisability",)
    m = MatchProbability.fit_quality(
        s, y, quality_features(da, CENTROID, feats, None, spec),
        quality_features(db, CENTROID, feats, None, spec), g, CENTROID, calibrator="none",
        backbone="sface", features=feats, design="minmax", floor_factor=10,
        recognisability=spec)
    return m, (s, y, da, db, g)


def test_regression_learns_a_target_from_the_descriptor() -> None:
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 1, 3000)
    d = _faces(r, rng)
    t = r + rng.normal(0, 0.02, len(r))
    t[:5] = np.nan  # a person with one image has no target: left out, not a crash
    spec = fit_recognisability(d, t, ("descriptor", "log_norm"))
    assert spec["r2_fit"] > 0.9 and len(spec["weights"]) == D + 2
    r_new = rng.uniform(0, 1, 500)
    pred = recognisability(_faces(r_new, rng), spec)
    assert np.corrcoef(pred, r_new)[0, 1] > 0.95
    json.dumps(spec)  # JSON-ready, nothing to unpickle
    # with sharpness among the inputs it must be given, per face
    with_sharp = fit_recognisability(d[5:], r[5:], ("descriptor", "sharpness"),
                                     sharpness=rng.normal(-4, 0.3, len(r) - 5))
    with pytest.raises(InputError, match="sharpness"):
        recognisability(d[:3], with_sharp)
    with pytest.raises(InputError, match="sharpness"):
        recognisability(d[:3], with_sharp, np.zeros(2))
    with pytest.raises(ModelFileError, match="unknown recognisability input 'glare'"):
        fit_recognisability(d, r, ("descriptor", "glare"))


def test_recognisability_calibrates_what_length_and_centroid_cannot(tmp_path: Path) -> None:
    m, (s, y, da, db, g) = _fit()
    base, _ = _fit(with_rec=False)
    deg = g == 1
    w = np.where(y, 0.5 / y[deg].sum(), 0.5 / (~y[deg]).sum())

    def ece(model: MatchProbability) -> float:
        p = model(s, model.face_quality(da), model.face_quality(db))
        return expected_calibration_error(p[deg], y[deg], weights=w[deg])["ece"]

    assert ece(m) < 0.03 and ece(base) > ece(m) + 0.03
    assert not m.needs_sharpness
    # the model file carries the regression and gives the same answers after a round trip
    m.save(tmp_path / "m.json")
    back = MatchProbability.load(tmp_path / "m.json", calibrator="none", backbone="sface")
    qa, qb = back.face_quality(da), back.face_quality(db)
    np.testing.assert_allclose(back(s, qa, qb), m(s, m.face_quality(da), m.face_quality(db)))
    np.testing.assert_array_equal(back.accepts(s, qa, qb, 1e-3),
                                  m.accepts(s, m.face_quality(da), m.face_quality(db), 1e-3))
    # a descriptor of another size: no quality, the score-only form answers
    assert back.face_quality(np.ones((2, D + 1))) is None


def test_a_damaged_recognisability_block_is_refused(tmp_path: Path) -> None:
    m, _ = _fit()
    good = m.to_dict()
    cases = {
        "missing": lambda q: q.pop("recognisability"),
        "short": lambda q: q["recognisability"].update(weights=[0.0] * 3),
        "nan": lambda q: q["recognisability"].update(
            weights=[float("nan")] * len(q["recognisability"]["weights"])),
        "input": lambda q: q["recognisability"].update(inputs=["descriptor", "glare"]),
        "orphan": lambda q: q.update(features=["log_norm", "centroid", "log_norm"]),
    }
    for name, damage in cases.items():
        d = json.loads(json.dumps(good))
        damage(d["quality"])
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        with pytest.raises(ModelFileError, match="recognisability|sizes"):
            MatchProbability.load(tmp_path / f"{name}.json")


def test_a_model_whose_regression_reads_sharpness_falls_back_without_it() -> None:
    s, y, da, db, ra, rb, g = _pairs(2000)
    rng = np.random.default_rng(3)
    sa, sb = rng.normal(-3.5, 0.2, len(s)), -3.5 - 3 * (1 - rb) + rng.normal(0, 0.2, len(s))
    spec = fit_recognisability(np.r_[da, db], np.r_[ra, rb], ("descriptor", "sharpness"),
                               sharpness=np.r_[sa, sb])
    feats = ("log_norm", "recognisability")
    m = MatchProbability.fit_quality(
        s, y, quality_features(da, CENTROID, feats, sa, spec),
        quality_features(db, CENTROID, feats, sb, spec), g, CENTROID, features=feats,
        design="minmax", recognisability=spec)
    assert m.needs_sharpness
    assert m.face_quality(da[:3], sa[:3]) is not None
    # a face stored before sharpness was kept: unknown, so the pair gets the score-only form
    assert m.face_quality(da[:3]) is None
    assert m.face_quality(da[:3], np.array([-3.0, np.nan, -4.0])) is None
    np.testing.assert_allclose(m(s[:3], None, None), m(s[:3]))


def test_the_bundled_sface_models_read_recognisability_from_the_descriptor_alone() -> None:
    """The bundled SFace models use the learned feature from inputs every stored face has,
    so a gallery stored before sharpness was kept still gets the quality-aware form."""
    rng = np.random.default_rng(5)
    for cal in ("none", "ida-r", "asnorm"):
        m = MatchProbability.default(cal, "sface")
        assert m is not None and m.quality is not None
        assert "recognisability" in m.quality["features"] and not m.needs_sharpness
        d = rng.normal(size=(4, len(m.quality["centroid"]))) * 0.1
        q = m.face_quality(d, np.full(4, np.nan))  # sharpness unknown: not needed
        assert q is not None and q.shape == (4, len(m.quality["features"])) \
            and np.isfinite(q).all()
        # a face whose descriptor points to the mean face (the typical clean face) is more
        # recognisable than a random direction
        mean_face = np.asarray(m.quality["centroid"])[None] * 12
        r = quality_features(np.r_[mean_face, d], mean_face[0] / 12, ("recognisability",), None,
                             m.quality["recognisability"])[:, 0]
        assert r[0] > r[1:].max()
