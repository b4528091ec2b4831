"""benchmarks.probability's photo-variant pairs: every (clean gallery face, probe) pair but the
probe's own original, scored and counted as a plain double loop would."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from benchmarks.probability import photo_pairs
from facerank.calibrate.anchors import AnchorSet
from facerank.calibrate.probability import MatchProbability, expected_calibration_error


def _data(centroid: np.ndarray, n_people: int = 12, per: int = 4, seed: int = 0):
    """Faces near SFace's mean face (descriptor length about exp(2.55), as SFace's), so the
    bundled thresholds let some impostor pairs through."""
    rng = np.random.default_rng(seed)
    dim = len(centroid)
    labels = np.repeat(np.arange(n_people), per)
    labels = np.r_[labels, np.zeros(per, int)]  # one person with twice the images
    x = 0.7 * centroid + (rng.normal(size=(n_people, dim))[labels]
                          + rng.normal(size=(len(labels), dim))) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    desc = x * np.exp(rng.normal(2.55, 0.08, (len(labels), 1)))
    lfw = SimpleNamespace(labels=labels, names=[f"p{i}" for i in range(n_people)])
    return SimpleNamespace(lfw=lfw, features=SimpleNamespace(
        embeddings=x.astype(np.float32), descriptors=desc))


def test_photo_pairs_match_a_double_loop() -> None:
    model = MatchProbability.default("none", "sface")
    assert model is not None and model.quality is not None
    data = _data(np.asarray(model.quality["centroid"]))
    labels = data.lfw.labels
    g_rows = np.arange(len(labels))
    probe_rows = np.array([0, 5, 9, 22, 47])
    rng = np.random.default_rng(1)
    probe_desc = data.features.descriptors[probe_rows] * 0.8 + 0.3 * rng.normal(
        size=(len(probe_rows), 128))
    cohort = AnchorSet(data.features.embeddings[::4], "test", np.asarray(data.lfw.names))
    out = photo_pairs("none", model, cohort, data, g_rows, probe_rows, probe_desc, chunk=2)

    s, y, pq, qa, qb, who = [], [], [], [], [], []
    qg = model.face_quality(data.features.descriptors)
    qp = model.face_quality(probe_desc)
    for i, r in enumerate(probe_rows):
        pe = probe_desc[i] / np.linalg.norm(probe_desc[i])
        for j in g_rows:
            if j == r:  # the probe's own original is never a pair
                continue
            c = float(pe @ data.features.embeddings[j].astype(np.float64))
            s.append(c)
            y.append(labels[j] == labels[r])
            pq.append(model(np.array([c]), qp[i:i + 1], qg[j:j + 1])[0])
            qa.append(qp[i])
            qb.append(qg[j])
            who.append(i)
    s, y, pq, qa, qb = np.array(s), np.array(y), np.array(pq), np.array(qa), np.array(qb)
    assert out["n_same"] == y.sum() and out["n_different"] == (~y).sum()
    assert out["n_same"] + out["n_different"] == len(probe_rows) * (len(g_rows) - 1)
    w = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    assert np.isclose(out["with quality"]["ece"],
                      expected_calibration_error(pq, y, 15, w)["ece"], atol=1e-5)
    assert np.isclose(out["score only"]["ece"],
                      expected_calibration_error(model(s), y, 15, w)["ece"], atol=1e-5)
    # per probe: each probe's same pairs weigh 1 in all, and its different pairs 1 in all
    who = np.array(who)
    n_same = np.bincount(who, weights=y)[who]
    n_diff = np.bincount(who, weights=~y)[who]
    wp = np.where(y, 0.5 / n_same / len(np.unique(who[y])),
                  0.5 / n_diff / len(np.unique(who[~y])))
    assert np.isclose(out["with quality"]["ece_per_probe"],
                      expected_calibration_error(pq, y, 15, wp)["ece"], atol=1e-5)
    assert not np.isclose(out["with quality"]["ece_per_probe"], out["with quality"]["ece"],
                          atol=1e-4)  # the probes' same-pair counts differ (3 and 7)
    counted = 0
    for f in ("1e-02", "1e-03"):
        t = model.thresholds[f]
        fa_s = int(((s >= t["score"]) & ~y).sum())
        fa_q = int((model.accepts(s, qa, qb, float(f)) & ~y).sum())  # the verdict's rule
        got_s, got_q = out["score only"]["far"][f], out["with quality"]["far"][f]
        assert got_s["false_accepts"] == fa_s and got_q["false_accepts"] == fa_q
        counted += fa_s + fa_q
        assert np.isclose(got_s["far"], fa_s / (~y).sum())
        assert np.isclose(out["score only"]["tar"][f], ((s >= t["score"]) & y).sum() / y.sum())
        lo, hi = got_q["ci95"]
        assert lo <= got_q["far"] <= hi
    assert counted > 0  # the counts compared above are not all zero
