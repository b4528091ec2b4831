"""Match probability: fit, call, thresholds, JSON round trip, refusal of other models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facerank.calibrate.probability import (
    MatchProbability,
    expected_calibration_error,
    format_probability,
    quality_features,
)
from facerank.errors import InputError, ModelFileError


def _pairs(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    scores = np.where(same, rng.normal(0.7, 0.1, n), rng.normal(0.3, 0.1, n))
    return scores, same


@pytest.mark.parametrize("kind", ["logistic", "isotonic"])
def test_fit_is_calibrated_monotone_and_shaped(kind: str) -> None:
    s, y = _pairs()
    m = MatchProbability.fit(s, y, kind=kind, calibrator="none", backbone="dlib")
    ts, ty = _pairs(seed=1)
    p = m(ts)
    assert p.shape == ts.shape and (p >= 0).all() and (p <= 1).all()
    assert expected_calibration_error(p, ty)["ece"] < 0.03
    grid = np.linspace(-1, 2, 301)
    assert (np.diff(m(grid)) >= -1e-12).all()
    # equal-variance Gaussians: P(same | s = 0.5) = 0.5 at equal prior
    assert abs(float(m(np.array(0.5))) - 0.5) < 0.08
    assert m(np.zeros((3, 4))).shape == (3, 4)


def test_thresholds_hold_their_far_on_fresh_pairs() -> None:
    s, y = _pairs(40000)
    m = MatchProbability.fit(s, y, calibrator="ida-r", backbone="sface")
    ts, ty = _pairs(40000, seed=2)
    for far in (1e-2, 1e-3):
        thr = m.threshold(far)
        assert thr is not None
        measured = float((ts[~ty] >= thr).mean())
        assert 0.4 * far <= measured <= 2.5 * far
    assert m.threshold(1e-2) < m.threshold(1e-3) < m.threshold(1e-4)
    assert m.verdict(0.99) == "same person" and m.verdict(0.0) == "different people"


def test_save_load_roundtrip_and_refusals(tmp_path) -> None:  # noqa: ANN001
    s, y = _pairs()
    m = MatchProbability.fit(s, y, kind="isotonic", calibrator="asnorm", backbone="dlib")
    path = tmp_path / "p.json"
    m.save(path)
    back = MatchProbability.load(path, calibrator="asnorm", backbone="dlib")
    x = np.linspace(0, 1, 50)
    assert np.allclose(back(x), m(x))
    assert back.thresholds == json.loads(path.read_text())["thresholds"]
    with pytest.raises(InputError, match="calibrator 'asnorm', not 'ida-r'"):
        MatchProbability.load(path, calibrator="ida-r")
    with pytest.raises(InputError, match="'dlib' features, not 'sface'"):
        MatchProbability.load(path, calibrator="asnorm", backbone="sface")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelFileError):
        MatchProbability.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"kind": "isotonic"}')
    with pytest.raises(ModelFileError):
        MatchProbability.load(tmp_path / "other.json")


def test_bad_fit_input() -> None:
    with pytest.raises(InputError):
        MatchProbability.fit(np.array([0.1, np.nan, 0.3, 0.4]), np.array([1, 0, 1, 0], bool))
    with pytest.raises(InputError):
        MatchProbability.fit(np.array([0.1, 0.2, 0.3]), np.array([1, 0, 0], bool))
    with pytest.raises(InputError):
        MatchProbability("spline", {}, "none", "dlib")


def test_ece_of_a_perfect_and_a_wrong_forecaster() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p
    assert expected_calibration_error(p, y)["ece"] < 0.02
    assert expected_calibration_error(1 - p, y)["ece"] > 0.25


def _quality_pairs(n: int = 4000, seed: int = 0):  # noqa: ANN202
    """Synthetic pairs: clean (group 0, long descriptors) and degraded (group 1, short
    descriptors, whose same-person scores drop): a score alone cannot be calibrated on both."""
    rng = np.random.default_rng(seed)
    d = 8
    centroid = np.eye(d)[0]
    rows = []
    for g, length, shift in ((0, 10.0, 0.0), (1, 4.0, 0.3)):
        y = rng.random(n) < 0.3
        s = np.where(y, rng.normal(0.7 - shift, 0.1, n), rng.normal(0.1, 0.1, n))
        da = rng.normal(size=(n, d))
        da *= length / np.linalg.norm(da, axis=1, keepdims=True)
        db = rng.normal(size=(n, d))
        db *= 10.0 / np.linalg.norm(db, axis=1, keepdims=True)
        rows.append((s, y, da, db, np.full(n, g)))
    return [np.concatenate(c) for c in zip(*rows, strict=True)], centroid


def test_quality_model_calibrates_degraded_pairs_and_falls_back(tmp_path) -> None:
    (s, y, da, db, g), centroid = _quality_pairs()
    m = MatchProbability.fit_quality(s, y, quality_features(da, centroid),
                                     quality_features(db, centroid), g, centroid,
                                     calibrator="none", backbone="sface")
    qa, qb = m.face_quality(da), m.face_quality(db)
    deg = g == 1
    w = np.where(y, 0.5 / y[deg].sum(), 0.5 / (~y[deg]).sum())
    with_q = expected_calibration_error(m(s, qa, qb)[deg], y[deg], weights=w[deg])["ece"]
    score_only = expected_calibration_error(m(s)[deg], y[deg], weights=w[deg])["ece"]
    assert with_q < 0.03 < score_only
    # the clean FAR threshold holds on clean impostors, by score and by probability
    t = m.thresholds["1e-02"]
    clean_imp = (g == 0) & ~y
    assert abs((m(s, qa, qb)[clean_imp] >= t["probability_quality"]).mean() - 0.01) < 0.003
    # no quality input (a bare score, another dimension, NaN): the score-only model answers
    np.testing.assert_allclose(m(s[:5], None, None), m(s[:5]))
    assert m.face_quality(np.ones((2, 3))) is None and m.face_quality(np.full((1, 8), np.nan)) \
        is None
    np.testing.assert_allclose(m(s[:2], m.face_quality(np.ones((2, 3))), qb[:2]), m(s[:2]))
    assert m.verdict(float(s[0])) in ("same person", "different people")
    assert m.verdict(float(s[0]), qa=qa[:1], qb=qb[:1]) in ("same person", "different people")
    # quality makes a verdict stricter, never looser than the score threshold alone
    by_score = np.array([m.verdict(float(x), far=1e-2) == "same person" for x in s[:400]])
    by_both = np.array([m.verdict(float(x), far=1e-2, qa=qa[i:i + 1], qb=qb[i:i + 1])
                        == "same person" for i, x in enumerate(s[:400])])
    assert not (by_both & ~by_score).any() and (by_score & ~by_both).any()
    # JSON round trip keeps the quality block; another backbone / calibrator is refused
    path = tmp_path / "q.json"
    m.save(path)
    back = MatchProbability.load(path, calibrator="none", backbone="sface")
    np.testing.assert_allclose(back(s, qa, qb), m(s, qa, qb))
    with pytest.raises(InputError, match="not 'dlib'"):
        MatchProbability.load(path, calibrator="none", backbone="dlib")
    d = m.to_dict()
    d["quality"]["weights"] = [1.0]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="quality block"):
        MatchProbability.load(tmp_path / "bad.json")


def _shifted_impostor_pairs(n: int = 20000, seed: int = 0):  # noqa: ANN202
    """Clean pairs (group 0) and degraded pairs (group 1, short descriptors) whose impostor
    scores are lower and tighter as well: one score threshold cannot hold a FAR on both."""
    rng = np.random.default_rng(seed)
    d = 8
    centroid = np.eye(d)[0]
    rows = []
    for g, length, (mi, si), (ms, ss) in ((0, 10.0, (0.1, 0.1), (0.7, 0.1)),
                                          (1, 4.0, (0.06, 0.08), (0.4, 0.15))):
        y = rng.random(n) < 0.3
        s = np.where(y, rng.normal(ms, ss, n), rng.normal(mi, si, n))
        da = rng.normal(size=(n, d))
        da *= length * np.exp(rng.normal(0, 0.05, (n, 1))) / np.linalg.norm(
            da, axis=1, keepdims=True)
        db = rng.normal(size=(n, d))
        db *= 10.0 * np.exp(rng.normal(0, 0.05, (n, 1))) / np.linalg.norm(db, axis=1,
                                                                          keepdims=True)
        rows.append((s, y, da, db, np.full(n, g)))
    return [np.concatenate(c) for c in zip(*rows, strict=True)], centroid


def _edited(model: MatchProbability, folder, **quality: object):  # noqa: ANN001, ANN202
    """The model's JSON with its quality block's `quality` keys replaced, written to a file."""
    d = model.to_dict()
    d["quality"].update(quality)
    path = folder / "edited.json"
    path.write_text(json.dumps(d))
    return path


def test_quality_normalised_verdict_holds_the_far_on_each_quality(tmp_path) -> None:
    (s, y, da, db, g), centroid = _shifted_impostor_pairs()
    fa, fb = quality_features(da, centroid), quality_features(db, centroid)
    m = MatchProbability.fit_quality(s, y, fa, fb, g, centroid, calibrator="none",
                                     backbone="sface", design="minmax", floor_factor=10,
                                     fallback_groups=1)
    qa, qb = m.face_quality(da), m.face_quality(db)
    t = m.thresholds["1e-02"]
    assert t["score_floor"] < t["score"]
    for k in (0, 1):
        imp = (g == k) & ~y
        by_score = (s[imp] >= t["score"]).mean() / 1e-2
        acc = m.accepts(s, qa, qb, 1e-2)
        ratio = acc[imp].mean() / 1e-2
        assert 0.6 < ratio < 1.6, (k, ratio)
        if k == 1:  # the clean score threshold alone is far too strict on degraded pairs
            assert by_score < 0.2
            w = np.where(y, 0.5 / y[g == 1].sum(), 0.5 / (~y[g == 1]).sum())[g == 1]
            assert expected_calibration_error(m(s, qa, qb)[g == 1], y[g == 1],
                                              weights=w)["ece"] < 0.03
    acc = m.accepts(s, qa, qb, 1e-2)
    assert not (acc & (s < t["score_floor"])).any()
    # strict (a search's top-1): quality can only make the verdict stricter
    strict = m.accepts(s, qa, qb, 1e-2, strict=True)
    np.testing.assert_array_equal(strict, acc & (s >= t["score"]))
    assert (acc & ~strict).any()
    # the string verdict follows the same rule; a bare score falls back to the score threshold
    for i in range(0, 400, 7):
        want = "same person" if acc[i] else "different people"
        assert m.verdict(float(s[i]), far=1e-2, qa=qa[i:i + 1], qb=qb[i:i + 1]) == want
    np.testing.assert_array_equal(m.accepts(s, far=1e-2), s >= t["score"])
    # the score-only fallback was fitted on the clean group only: calibrated there
    w0 = np.where(y, 0.5 / y[g == 0].sum(), 0.5 / (~y[g == 0]).sum())[g == 0]
    assert expected_calibration_error(m(s[g == 0]), y[g == 0], weights=w0)["ece"] < 0.03
    # JSON round trip keeps the design and the impostor fit
    m.save(tmp_path / "m.json")
    back = MatchProbability.load(tmp_path / "m.json", calibrator="none", backbone="sface")
    np.testing.assert_array_equal(back.accepts(s, qa, qb, 1e-2), acc)
    np.testing.assert_allclose(back(s, qa, qb), m(s, qa, qb))
    with pytest.raises(ModelFileError, match="pair design"):
        MatchProbability.load(_edited(m, tmp_path, design="cubic"))
    with pytest.raises(InputError, match="floor_factor"):
        MatchProbability.fit_quality(s, y, fa, fb, g, centroid, floor_factor=10)


def test_verdict_rule_is_chosen_on_the_fit_pairs_and_kept(tmp_path) -> None:
    """`fit_quality(verdict="auto")` measures both rules on its own pairs and keeps one that
    holds the FAR on every group with the higher mean TAR; "score" decides by the clean score
    threshold alone while quality still moves the probability."""
    (s, y, da, db, g), centroid = _shifted_impostor_pairs()
    fa, fb = quality_features(da, centroid), quality_features(db, centroid)
    kw = {"calibrator": "none", "backbone": "sface", "design": "minmax", "floor_factor": 10,
          "fallback_groups": 1, "verdict_far": 1e-2}  # 1e-3 of 14k impostors is too few
    auto = MatchProbability.fit_quality(s, y, fa, fb, g, centroid, **kw)
    fit = auto.quality["verdict_fit"]
    # degraded impostors score lower here, so one score threshold lets too few through
    assert not fit["score"]["far_holds"] and fit["quality"]["far_holds"]
    assert auto.quality["verdict"] == "quality"
    held = [r for r in ("quality", "score") if fit[r]["far_holds"]]
    assert auto.quality["verdict"] == max(held, key=lambda r: fit[r]["tar_mean"])

    by_score = MatchProbability.fit_quality(s, y, fa, fb, g, centroid, verdict="score", **kw)
    qa, qb = by_score.face_quality(da), by_score.face_quality(db)
    t = by_score.thresholds["1e-02"]["score"]
    np.testing.assert_array_equal(by_score.accepts(s, qa, qb, 1e-2), s >= t)
    assert not np.array_equal(auto.accepts(s, qa, qb, 1e-2), s >= t)
    # the probability is the same quality-aware one whichever rule decides
    np.testing.assert_allclose(by_score(s, qa, qb), auto(s, qa, qb))
    by_score.save(tmp_path / "m.json")
    back = MatchProbability.load(tmp_path / "m.json", calibrator="none", backbone="sface")
    assert back.quality["verdict"] == "score"
    np.testing.assert_array_equal(back.accepts(s, qa, qb, 1e-2), s >= t)
    with pytest.raises(ModelFileError, match="verdict rule"):
        MatchProbability.load(_edited(by_score, tmp_path, verdict="vibes"))
    with pytest.raises(InputError, match="verdict rule"):
        MatchProbability.fit_quality(s, y, fa, fb, g, centroid, verdict="vibes", **kw)


def test_probability_is_shown_without_false_certainty() -> None:
    shown = [format_probability(p) for p in (0.9999, 0.9995, 0.99949, 0.5, 0.0004, 0.0,
                                             None, float("nan"))]
    assert shown == ["> 99.9 %", "> 99.9 %", "99.9 %", "50.0 %", "< 0.1 %", "< 0.1 %", "-",
                     "-"]


def test_verdict_abstains_on_faces_too_degraded_to_judge(tmp_path) -> None:
    """With the learned recognisability, a pair the verdict does not accept is "cannot tell"
    when its worse face is below the level at which the fit accepted `abstain_tar` of the
    same-person pairs; clean pairs still get "different people", accepted ones "same person"."""
    from facerank.calibrate.probability import CANNOT_TELL, fit_recognisability

    (s, y, da, db, g), centroid = _shifted_impostor_pairs()
    feats = ("log_norm", "centroid", "recognisability")
    faces = np.concatenate([da, db])
    spec = fit_recognisability(faces, np.log(np.linalg.norm(faces, axis=1)))
    fa = quality_features(da, centroid, feats, recognisability_spec=spec)
    fb = quality_features(db, centroid, feats, recognisability_spec=spec)
    kw = {"calibrator": "none", "backbone": "sface", "design": "minmax", "floor_factor": 10,
          "fallback_groups": 1, "verdict_far": 1e-2, "features": feats,
          "recognisability": spec}
    m = MatchProbability.fit_quality(s, y, fa, fb, g, centroid, abstain_tar=0.9, **kw)
    block = m.quality["abstain"]
    qa, qb = m.face_quality(da), m.face_quality(db)
    acc = m.accepts(s, qa, qb, 1e-2)
    # the degraded group's true matches are accepted less often than 90 %: it abstains there
    assert acc[(g == 1) & y].mean() < 0.9 < acc[(g == 0) & y].mean()
    low = m.abstains(qa, qb)
    assert low[g == 1].mean() > 0.9 and low[g == 0].mean() < 0.05
    assert 0.3 < block["share_same_below"] < 0.7
    said = {}
    picks = [np.flatnonzero(~acc & (g == k))[:150] for k in (0, 1)] + [np.flatnonzero(acc)[:50]]
    for i in np.concatenate(picks).tolist():
        v = m.verdict(float(s[i]), far=1e-2, qa=qa[i:i + 1], qb=qb[i:i + 1])
        want = "same person" if acc[i] else CANNOT_TELL if low[i] else "different people"
        assert v == want
        said[v] = said.get(v, 0) + 1
    assert len(said) == 3, said
    # a bare score never abstains; the block survives a round trip; a bad one is refused
    assert m.verdict(float(s[np.flatnonzero(~acc & low)[0]]), far=1e-2) == "different people"
    m.save(tmp_path / "m.json")
    back = MatchProbability.load(tmp_path / "m.json", calibrator="none", backbone="sface")
    np.testing.assert_array_equal(back.abstains(qa, qb), low)
    with pytest.raises(ModelFileError, match="abstain"):
        MatchProbability.load(_edited(m, tmp_path, abstain={"feature": "x", "below": 0.0}))
    never = MatchProbability.fit_quality(s, y, fa, fb, g, centroid, abstain_tar=None, **kw)
    assert "abstain" not in never.quality and not never.abstains(qa, qb).any()


@pytest.mark.parametrize("backbone", ["sface", "dlib"])
def test_search_json_names_the_verdict_rule_and_its_abstention(backbone: str) -> None:
    """The bundled models record how their verdict decides, and `search --json` says it."""
    from facerank.calibrate.factory import describe_probability, probability_model
    from facerank.calibrate.probability import CANNOT_TELL

    block = describe_probability(probability_model("none", backbone))
    assert block["scale"] == "match probability" and block["backbone"] == backbone
    assert block["verdict_with_quality"] == (
        "quality-normalised score" if backbone == "sface" else "score threshold")
    assert block["verdict_abstains"]["says"] == CANNOT_TELL
    assert np.isfinite(block["verdict_abstains"]["below"])
