"""Gallery cohorts: candidate identity left out, same formulas as IDA-R / AS-norm, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from facerank.calibrate.anchors import AnchorSet
from facerank.calibrate.asnorm import ASNorm
from facerank.calibrate.cohort import (
    check_anchor_file,
    choose_cohort,
    cohort_scores,
    identity_cohort,
)
from facerank.calibrate.ida import IDAR
from facerank.errors import InputError


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _data(n_ids: int = 40, per: int = 3, d: int = 16, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d))
    emb = _unit(np.repeat(centres, per, axis=0) + 0.3 * rng.normal(size=(n_ids * per, d)))
    labels = np.repeat([f"id{i:02d}" for i in range(n_ids)], per)
    return emb, labels


@pytest.mark.parametrize("method", ["ida-r", "asnorm"])
def test_cohort_scores_equal_the_calibrator_without_the_candidate(method: str) -> None:
    emb, labels = _data()
    cohort = identity_cohort(emb, labels, "m")
    assert len(cohort) == 40
    rng = np.random.default_rng(1)
    q = _unit(rng.normal(size=(3, 16)))
    cand = rng.choice(len(emb), size=(3, 4), replace=False)
    got = cohort_scores(method, cohort, q, emb[cand], labels[cand], k=5, top_n=20)
    for i in range(3):
        for j in range(4):
            keep = cohort.labels != labels[cand[i, j]]
            sub = AnchorSet(cohort.embeddings[keep], "m", cohort.labels[keep])
            cal = IDAR(sub, k=5) if method == "ida-r" else ASNorm(sub, top_n=20)
            want = cal.score_pairs(q[i : i + 1], emb[cand[i, j]][None])[0]
            assert got[i, j] == pytest.approx(want, abs=1e-5)


def test_leaving_the_candidate_out_changes_the_score() -> None:
    emb, labels = _data()
    cohort = identity_cohort(emb, labels, "m")
    q = emb[:1]  # a probe of id00, whose own identity sits in the cohort
    cand = np.array([[1]])  # another image of id00
    left_out = cohort_scores("ida-r", cohort, q, emb[cand], labels[cand], k=5)[0, 0]
    naive = IDAR(cohort, k=5).score_pairs(q, emb[1:2])[0]
    assert left_out > naive + 1e-3  # its own identity no longer dilutes the density term


def test_bad_anchor_files() -> None:
    emb, labels = _data(n_ids=2)
    a = identity_cohort(emb, labels, "dlib-x")
    check_anchor_file(a, "dlib-x", 16)
    with pytest.raises(InputError, match="made with 'dlib-x' features"):
        check_anchor_file(a, "sface-y")
    with pytest.raises(InputError, match="dimension 16"):
        check_anchor_file(a, "dlib-x", 128)
    one = identity_cohort(emb[:3], labels[:3], "dlib-x")
    with pytest.raises(InputError, match="at least 2"):
        check_anchor_file(one)
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        AnchorSet(bad, "dlib-x", labels)


def test_small_gallery_falls_back() -> None:
    assert choose_cohort(10) == "lfw" and choose_cohort(500) == "gallery"
