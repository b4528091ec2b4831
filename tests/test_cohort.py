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
from tests.conftest import small_gallery


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


def test_gallery_search_uses_its_own_cohort_and_follows_renames(lfw_root, extractor,  # noqa: ANN001
                                                                tmp_path, monkeypatch) -> None:

    from facerank.calibrate import cohort as C
    from facerank.calibrate.factory import attach_probability, build, probability_model

    people = ["Ariel_Sharon", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
    g, held_out = small_gallery(tmp_path, lfw_root, extractor, people)
    probe = extractor.extract_paths(held_out[:1], progress=False)
    cal = build("ida-r", None, extractor.model_id)  # bundled anchors: a gallery may use its own
    cal.k = 2  # 4 identities: a support of 2 others (the shipped k is 10, minimum 200 people)
    k = 6
    # too few identities: the bundled LFW anchors, and the search says so
    fallback = g.search(probe, k=k, calibrate=cal)
    used = g.cohort_used(cal)
    assert used["cohort"] == "lfw" and "fewer than" in used["note"]
    np.testing.assert_allclose([r.stage_scores["calibrated"] for r in fallback],
                               cal.score_pairs(np.repeat(probe.embeddings, k, 0),
                                               g.features().embeddings[[r.row for r in fallback]]),
                               rtol=1e-5)
    monkeypatch.setattr(C, "MIN_IDENTITIES", 3)
    assert g.cohort_used(cal)["cohort"] == "gallery"
    res = g.search(probe, k=k, calibrate=cal)
    fs = g.features()
    labels = np.array([r.identity for r in res])
    cohort = identity_cohort(fs.embeddings, np.asarray(g.labels()), extractor.model_id)
    want = cohort_scores("ida-r", cohort, probe.embeddings,
                         fs.embeddings[[r.row for r in res]][None], labels[None], k=2)[0]
    np.testing.assert_allclose([r.stage_scores["calibrated"] for r in res], want, rtol=1e-5)
    assert res[0].identity == people[0]
    # a match probability for every row, from the pair's Stage-1 calibrated score
    model = probability_model("ida-r", "dlib")
    if model is not None:
        shown = attach_probability(res, model)
        np.testing.assert_allclose([r.probability for r in shown], model(want), rtol=1e-4)
    g.rename_identity(people[1], "Someone_Else")
    after = g.search(probe, k=k, calibrate=cal)
    assert "Someone_Else" in {r.identity for r in after}
    g.close()


def test_gallery_cohort_is_stored_and_cannot_go_stale(lfw_root, extractor, tmp_path,  # noqa: ANN001
                                                      monkeypatch) -> None:
    """The cohort is written at add, follows rename / remove, and a kill between a commit and
    the cohort write (or a damaged file) never leaves a search using a stale cohort."""
    import shutil

    from facerank.calibrate import cohort as C
    from facerank.calibrate.factory import build
    from facerank.gallery import StoredGallery
    from facerank.gallery import cohort as GC

    people = ["Ariel_Sharon", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
    g, held_out = small_gallery(tmp_path, lfw_root, extractor, people)
    mid = g.meta()["model_id"]

    def stored() -> AnchorSet:
        files = list(g.folder.glob("cohort-*.npz"))
        assert len(files) == 1
        snap = g.store.snapshot(False, None)
        assert files[0] == GC.cohort_path(g.folder, GC.cohort_digest(snap, mid))
        cohort = GC.load_cohort(g.folder, GC.cohort_digest(snap, mid), mid)
        fresh = identity_cohort(snap.features.embeddings, np.asarray(snap.labels), mid)
        np.testing.assert_array_equal(cohort.labels, fresh.labels)
        np.testing.assert_allclose(cohort.embeddings, fresh.embeddings, atol=1e-6)
        return cohort

    assert sorted(stored().labels) == sorted(people)
    g.rename_identity(people[1], "Someone_Else")
    assert "Someone_Else" in stored().labels
    g.remove_identity(people[3])
    assert people[3] not in stored().labels
    old_file = next(g.folder.glob("cohort-*.npz"))
    # killed between the commit of a new person's rows and the cohort write
    monkeypatch.setattr(StoredGallery, "refresh_cohort", lambda self: None)
    (tmp_path / "more" / "George_W_Bush").mkdir(parents=True)
    for f in sorted((lfw_root / "images" / "George_W_Bush").glob("*.jpg"))[:2]:
        shutil.copy(f, tmp_path / "more" / "George_W_Bush" / f.name)
    g.add_folder(tmp_path / "more", progress=False)
    assert list(g.folder.glob("cohort-*.npz")) == [old_file]  # stale file left behind
    g.close()
    monkeypatch.undo()
    monkeypatch.setattr(C, "MIN_IDENTITIES", 3)
    g = StoredGallery.open(tmp_path / "g", extractor)
    probe = extractor.extract_paths(held_out[:1], progress=False)
    cal = build("ida-r", None, extractor.model_id)
    cal.k = 2
    res = g.search(probe, k=6, calibrate=cal)
    fs = g.features()
    want_cohort = identity_cohort(fs.embeddings, np.asarray(g.labels()), mid)
    assert "George_W_Bush" in want_cohort.labels
    want = cohort_scores("ida-r", want_cohort, probe.embeddings,
                         fs.embeddings[[r.row for r in res]][None],
                         np.array([r.identity for r in res])[None], k=2)[0]
    np.testing.assert_allclose([r.stage_scores["calibrated"] for r in res], want, rtol=1e-5)
    assert "George_W_Bush" in stored().labels and not old_file.exists()
    # a damaged file under the current digest is rebuilt, not trusted
    path = next(g.folder.glob("cohort-*.npz"))
    path.write_bytes(b"not an npz")
    g.close()
    g = StoredGallery.open(tmp_path / "g", extractor)
    again = g.search(probe, k=6, calibrate=cal)
    np.testing.assert_allclose([r.stage_scores["calibrated"] for r in again], want, rtol=1e-5)
    assert "George_W_Bush" in stored().labels
    g.close()


def test_auto_calibration_abstains_below_the_cohort_minimum(lfw_root, extractor,  # noqa: ANN001
                                                            tmp_path, monkeypatch) -> None:
    """`--calibrate auto`: cosine (and the cosine's probability model) on a gallery too small
    for its own cohort and for a pair; IDA-R with the gallery's cohort once it is large enough;
    SFace: cosine."""
    from facerank.calibrate import cohort as C
    from facerank.calibrate import factory

    assert factory.build("auto", None, "sface_2021dec_int8bq@facerank-features-1") is None
    assert factory.resolve_pair("auto", extractor.model_id) == "none"
    with pytest.raises(InputError, match="not auto"):
        factory.build("auto", tmp_path / "a.npz", extractor.model_id)
    with pytest.raises(InputError, match="not auto"):
        factory.probability_model("auto", "dlib", tmp_path / "p.json")
    people = ["Ariel_Sharon", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
    g, held_out = small_gallery(tmp_path, lfw_root, extractor, people)
    probe = extractor.extract_paths(held_out[:1], progress=False)
    cal = factory.build("auto", None, extractor.model_id)
    assert cal is not None and cal.name == factory.AUTO_CALIBRATOR["dlib"]
    cal.k = 2
    model = factory.probability_model("auto", "dlib")
    plain = g.search(probe, k=6)
    res = g.search(probe, k=6, calibrate=cal)
    assert all("calibrated" not in r.stage_scores for r in res)
    assert [r.row for r in res] == [r.row for r in plain]
    assert g.cohort_used(cal)["calibrator"] == "none" and g.calibration_used(cal) is None
    shown = factory.attach_probability(res, model)
    cosine_model = factory.probability_model("none", "dlib")
    if cosine_model is not None:
        np.testing.assert_allclose([r.probability for r in shown],
                                   cosine_model(np.array([r.stage1 for r in res])))
    # a named IDA-R gets the gallery's cohort from MIN_IDENTITIES; auto still abstains there
    monkeypatch.setattr(C, "MIN_IDENTITIES", 3)
    monkeypatch.setattr(C, "AUTO_MIN_IDENTITIES", 5)
    named = factory.build("ida-r", None, extractor.model_id)
    assert g.cohort_used(named)["cohort"] == "gallery"
    assert g.cohort_used(cal) == {"cohort": "none", "identities": 4, "minimum": 5,
                                  "calibrator": "none", "note": None}
    assert [r.row for r in g.search(probe, k=6, calibrate=cal)] == [r.row for r in plain]
    monkeypatch.setattr(C, "AUTO_MIN_IDENTITIES", 4)
    res = g.search(probe, k=6, calibrate=cal)
    assert all("calibrated" in r.stage_scores for r in res)
    assert g.cohort_used(cal)["cohort"] == "gallery" and g.calibration_used(cal) is cal
    g.close()


def test_cli_bad_anchor_and_probability_files_fail_in_one_line(lfw_root, tmp_path,  # noqa: ANN001
                                                               capsys) -> None:
    import shutil

    from facerank.calibrate.probability import MatchProbability
    from facerank.cli.app import main

    img = sorted((lfw_root / "images" / "Tony_Blair").glob("*.jpg"))[0]
    (tmp_path / "one" / "Tony_Blair").mkdir(parents=True)
    shutil.copy(img, tmp_path / "one" / "Tony_Blair" / img.name)
    out = tmp_path / "a.npz"
    assert main(["calibrate", "anchors", str(tmp_path / "one"), "--out", str(out)]) == 2
    assert "at least 2" in capsys.readouterr().err and not out.exists()
    emb, labels = _data(n_ids=1, d=128)
    AnchorSet(emb, "dlib_resnet_v1@facerank-features-1", labels).save(out)
    assert main(["compare", str(img), str(img), "--backbone", "dlib", "--calibrate", "ida-r",
                 "--calibrate-with", str(out)]) == 2
    assert "a cohort needs at least 2" in capsys.readouterr().err
    m = MatchProbability.fit(np.r_[np.zeros(5), np.ones(5)], np.r_[np.zeros(5), np.ones(5)] > 0,
                             calibrator="none", backbone="dlib")
    m.save(tmp_path / "p.json")
    assert main(["compare", str(img), str(img), "--backbone", "dlib", "--calibrate", "ida-r",
                 "--probability-with", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "fitted for calibrator 'none', not 'ida-r'" in err and len(err.splitlines()) == 1


def test_eval_refuses_auto_in_one_line(capsys) -> None:
    from facerank.cli.app import main

    assert main(["eval", "lfw-pairs", "--calibrate", "auto"]) == 2
    assert "eval needs a named calibrator" in capsys.readouterr().err
