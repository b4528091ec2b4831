"""Persistent gallery on real LFW images: round trip, resume, crash safety, editing, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facerank.errors import GalleryError, InputError
from facerank.face.features import FeatureExtractor, FeatureSet
from facerank.gallery import StoredGallery, identity_of
from facerank.ranking import Ranking, cosine_topk

PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder", "Tony_Blair"]


@pytest.fixture(scope="module")
def people(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """5 people x 3 enrolled images (copied) + one held-out image each (left in LFW)."""
    root = tmp_path_factory.mktemp("people")
    held_out = []
    for name in PEOPLE:
        files = sorted((lfw_root / "images" / name).glob("*.jpg"))
        (root / name).mkdir()
        for f in files[:3]:
            shutil.copy(f, root / name / f.name)
        held_out.append(files[5])
    return root, held_out


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI runs in this process use a private feature cache."""
    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cli-cache"))


def _db_state(folder: Path) -> tuple[int, set[str], set[int]]:
    """(committed images, shard files named in the DB, shard ids referenced by images)."""
    with sqlite3.connect(f"file:{folder / 'gallery.db'}?mode=ro", uri=True) as c:
        n = c.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        files = {r[0] for r in c.execute("SELECT file FROM shards")}
        used = {r[0] for r in c.execute("SELECT DISTINCT shard_id FROM images")}
    return n, files, used


def _assert_consistent(folder: Path) -> None:
    """Every array file is a committed shard and every image row points at one."""
    _, files, used = _db_state(folder)
    on_disk = {p.name for p in (folder / "arrays").iterdir()}
    assert on_disk == files
    with sqlite3.connect(f"file:{folder / 'gallery.db'}?mode=ro", uri=True) as c:
        ids = {r[0] for r in c.execute("SELECT id FROM shards")}
    assert used <= ids


class ReverseReranker:
    """A fake Stage 2: reverses the first k candidates; its score is minus the cosine."""

    name = "reverse"

    def __init__(self, k: int = 4) -> None:
        self.k = k
        self.gallery_size = -1

    def rerank(self, queries: FeatureSet, gallery: FeatureSet, ranking: Ranking,
               progress: bool = False) -> Ranking:
        self.gallery_size = len(gallery)
        assert gallery.grids, "Stage 2 gets the gallery with its patch grids"
        k = min(self.k, ranking.k)
        order = np.tile(np.arange(k)[::-1], (ranking.num_queries, 1))
        stage = -ranking.stage_scores["stage1"][:, :k]
        rows = np.arange(ranking.num_queries)[:, None]
        return ranking.reorder(order, stage[rows, order], self.name, stage)

    def score_pairs(self, a: FeatureSet, b: FeatureSet) -> np.ndarray:
        return -np.sum(a.embeddings * b.embeddings, axis=1)

    def describe(self) -> str:
        return "reverse"


def test_round_trip_and_search(people: tuple[Path, list[Path]], extractor: FeatureExtractor,
                               tmp_path: Path) -> None:
    root, held_out = people
    g = StoredGallery.create(tmp_path / "g", extractor)
    report = g.add_folder(root, progress=False)
    assert report.added == 15 and not report.failures
    assert g.identities() == [(n, 3) for n in PEOPLE]
    assert len(g) == 15
    fs = g.features()
    assert len(fs) == 15 and fs.grids["l2"].shape == (15, 128, 8, 8)
    assert fs.grids["l2"].dtype == np.float16 and fs.descriptors.dtype == np.float32
    assert [identity_of(p) for p in fs.paths] == g.labels()
    assert len(set(g.image_ids().tolist())) == 15

    probes = extractor.extract_paths(held_out, progress=False)
    for i, name in enumerate(PEOPLE):
        res = g.search(probes.take([i]), k=5)
        assert [r.rank for r in res] == [1, 2, 3, 4, 5]
        assert res[0].identity == name, res
        assert res[0].score == pytest.approx(res[0].stage1)
        assert np.all(np.diff([r.score for r in res]) <= 1e-6)

    # Stage 1 through faiss agrees with the exact cosine ranking of features()
    exact = cosine_topk(probes.embeddings, fs.embeddings, 6)
    for i, res in enumerate(g.search_many(probes, k=6)):
        assert [r.row for r in res] == exact.indices[i].tolist()
        np.testing.assert_allclose([r.stage1 for r in res], exact.scores[i], atol=1e-5)
        assert [r.path for r in res] == [fs.paths[j] for j in exact.indices[i]]

    # k larger than the gallery is clipped
    assert len(g.search(probes.take([0]), k=100)) == 15

    # Stage 2: indices refer to rows of features(); per-stage scores kept side by side
    rr = ReverseReranker(k=4)
    s1 = g.search(probes.take([1]), k=6)
    s2 = g.search(probes.take([1]), k=6, stage2=rr)
    assert rr.gallery_size == 15
    assert [r.image_id for r in s2[:4]] == [r.image_id for r in s1[:4]][::-1]
    assert [r.image_id for r in s2[4:]] == [r.image_id for r in s1[4:]]
    for r in s2[:4]:
        assert r.stage_scores["reverse"] == pytest.approx(-r.stage1)
        assert r.score == pytest.approx(r.stage_scores["reverse"])
    assert all(np.isnan(r.stage_scores["reverse"]) for r in s2[4:])
    assert s2[5].to_dict()["stage_scores"]["reverse"] is None

    # reopened (new process view): same rows, HNSW index gives the same top-1
    g.close()
    g2 = StoredGallery.open(tmp_path / "g", extractor, index="hnsw", load_grids=False)
    assert g2.features().grids == {}
    np.testing.assert_array_equal(g2.features().descriptors, fs.descriptors)
    assert g2.search(probes.take([3]), k=3)[0].identity == PEOPLE[3]
    assert list((tmp_path / "g").glob("index-hnsw-*.faiss"))


def test_cli_round_trip_and_resume(people: tuple[Path, list[Path]], extractor: FeatureExtractor,
                                   tmp_path: Path, env: None,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from facerank.cli.app import main

    root, held_out = people
    g = tmp_path / "g"
    assert main(["gallery", "create", str(g), "--detector", "hog", "--faces", "center",
                 "--no-face", "center", "--backbone", "dlib"]) == 0
    assert main(["gallery", "add", str(g), str(root)]) == 0
    assert "added 15 image(s) of 5 identities" in capsys.readouterr().out
    # resume: nothing new the second time
    assert main(["gallery", "add", str(g), str(root)]) == 0
    assert "added 0 image(s)" in capsys.readouterr().out
    assert StoredGallery.open(g, extractor).add_folder(root, progress=False).already_present == 15

    assert main(["gallery", "list", str(g), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["images"] == 15
    assert listing["identities"] == [{"name": n, "images": 3} for n in PEOPLE]

    assert main(["search", str(held_out[4]), "--gallery", str(g), "--stage2", "none",
                 "--top", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in found["results"]] == [1, 2, 3]
    assert found["results"][0]["identity"] == PEOPLE[4]
    assert set(found["results"][0]["stage_scores"]) == {"stage1"}
    assert main(["search", str(held_out[4]), "--gallery", str(g), "--stage2", "none"]) == 0
    assert PEOPLE[4] in capsys.readouterr().out


def test_crash_safety(lfw_root: Path, extractor: FeatureExtractor, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL during `gallery add`: committed batches survive, re-running completes."""
    folder = tmp_path / "imgs"
    dirs = [d for d in sorted((lfw_root / "images").iterdir()) if len(list(d.glob("*.jpg"))) >= 5]
    for d in dirs[:16]:
        (folder / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:5]:
            shutil.copy(f, folder / d.name / f.name)
    total = 80
    g = tmp_path / "g"
    StoredGallery.create(g, extractor).close()

    env = dict(os.environ, FACERANK_GALLERY_BATCH="8", FACERANK_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "facerank.cli", "gallery", "add", str(g),
                             str(folder)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _db_state(g)[0] < 8:
            assert proc.poll() is None, "gallery add ended before it could be killed"
            assert time.monotonic() < deadline, "no batch committed within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    committed = _db_state(g)[0]
    assert 8 <= committed < total

    # reopen: opens, orphans gone, every committed entry intact and equal to a fresh extraction
    fresh = FeatureExtractor(backbone=extractor.backbone, detector=extractor.detector,
                             cache=False)
    gal = StoredGallery.open(g, fresh)
    _assert_consistent(g)
    assert len(gal) == committed
    fs = gal.features()
    again = fresh.extract_paths(fs.paths, progress=False)
    assert len(again) == committed
    cos = np.sum(fs.embeddings * again.embeddings, axis=1)
    assert np.all(cos > 1 - 1e-5), cos
    np.testing.assert_allclose(fs.grids["l2"].astype(np.float32),
                               again.grids["l2"].astype(np.float32), atol=1e-2)
    gal.close()

    # resume through the CLI completes to the full count
    from facerank.cli.app import main

    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FACERANK_GALLERY_BATCH", "8")
    assert main(["gallery", "add", str(g), str(folder)]) == 0
    assert f"{committed} already present" in capsys.readouterr().out
    assert _db_state(g)[0] == total
    _assert_consistent(g)
    assert len(StoredGallery.open(g, extractor).features()) == total


def test_orphans_and_tmp_files_are_removed(people: tuple[Path, list[Path]],
                                           extractor: FeatureExtractor, tmp_path: Path) -> None:
    root, _ = people
    g = StoredGallery.create(tmp_path / "g", extractor, batch_size=4)
    g.add_folder(root, progress=False)
    before = g.features().descriptors.copy()
    g.close()
    arrays = tmp_path / "g" / "arrays"
    shutil.copy(next(arrays.glob("shard-*.npz")), arrays / "shard-999999.npz")  # never committed
    (arrays / ".shard-000042.npz.123.tmp").write_bytes(b"half a shard")
    g = StoredGallery.open(tmp_path / "g", extractor)
    _assert_consistent(tmp_path / "g")
    assert not (arrays / "shard-999999.npz").exists()
    np.testing.assert_array_equal(g.features().descriptors, before)


def test_edit_identities(people: tuple[Path, list[Path]], extractor: FeatureExtractor,
                         tmp_path: Path) -> None:
    root, held_out = people
    g = StoredGallery.create(tmp_path / "g", extractor, batch_size=3)  # one shard per person
    g.add_folder(root, progress=False)
    assert len(list((tmp_path / "g" / "arrays").iterdir())) == 5

    assert g.remove_identity("Tony_Blair") == 3
    assert [n for n, _ in g.identities()] == PEOPLE[:4]
    assert len(g) == 12 and len(g.features()) == 12 and "Tony_Blair" not in g.labels()
    assert len(list((tmp_path / "g" / "arrays").iterdir())) == 4  # emptied shard deleted
    _assert_consistent(tmp_path / "g")
    probe = extractor.extract_paths([held_out[4]], progress=False)
    assert all(r.identity != "Tony_Blair" for r in g.search(probe, k=12))

    g.rename_identity("Colin_Powell", "General Powell")
    assert ("General Powell", 3) in g.identities()
    probe = extractor.extract_paths([held_out[1]], progress=False)
    assert g.search(probe, k=1)[0].identity == "General Powell"
    with pytest.raises(GalleryError, match="already exists"):
        g.rename_identity("General Powell", "Ariel_Sharon")
    with pytest.raises(GalleryError, match="no identity named"):
        g.remove_identity("Nobody")

    # removing 2 of a shard's 3 rows makes it sparse: rewritten into a new shard, rows intact
    ids = [i["id"] for i in g.images("Donald_Rumsfeld")]
    keep = g.features()[g.image_ids().tolist().index(ids[2])].descriptor.copy()
    g.remove_image(ids[0])
    g.remove_image(ids[1])
    _assert_consistent(tmp_path / "g")
    assert ("Donald_Rumsfeld", 1) in g.identities()
    row = g.image_ids().tolist().index(ids[2])
    np.testing.assert_array_equal(g.features()[row].descriptor, keep)
    g.remove_image(ids[2])
    assert "Donald_Rumsfeld" not in dict(g.identities())
    with pytest.raises(GalleryError, match="no image with id"):
        g.remove_image(ids[2])

    g.rename_identity("General Powell", "Ariel_Sharon", merge=True)
    assert g.identities() == [("Ariel_Sharon", 6), ("Gerhard_Schroeder", 3)]
    g.close()
    assert StoredGallery.open(tmp_path / "g", extractor).identities() == [
        ("Ariel_Sharon", 6), ("Gerhard_Schroeder", 3)]


def test_a_facerank_release_alone_does_not_invalidate_features(
        extractor: FeatureExtractor, monkeypatch: pytest.MonkeyPatch) -> None:
    import facerank

    before = (extractor.model_id, extractor.config_digest)
    monkeypatch.setattr(facerank, "__version__", "99.0.0")
    assert (extractor.model_id, extractor.config_digest) == before
    monkeypatch.setattr("facerank.face.features.FEATURES_VERSION", 99)
    assert extractor.model_id != before[0] and extractor.config_digest != before[1]


def test_model_mismatch_and_reextract(people: tuple[Path, list[Path]],
                                      extractor: FeatureExtractor, tmp_path: Path, env: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from facerank.cli.app import main
    from facerank.face.detect import FaceDetector

    root, held_out = people
    folder = tmp_path / "g"
    g = StoredGallery.create(folder, extractor)
    g.add_folder(root, progress=False)
    before = g.features().descriptors.copy()
    g.close()

    other = FeatureExtractor(backbone=extractor.backbone, detector=FaceDetector(), cache=False)
    with pytest.raises(GalleryError, match=r"facerank gallery reextract .*g`"):
        StoredGallery.open(folder, other)
    with sqlite3.connect(folder / "gallery.db") as c:  # as if built by an older model
        c.execute("UPDATE meta SET value = 'old_model@1' WHERE key = 'model_id'")
    with pytest.raises(GalleryError, match="old_model@1.*reextract"):
        StoredGallery.open(folder, extractor)
    assert main(["search", str(held_out[0]), "--gallery", str(folder), "--stage2", "none"]) == 2
    assert "facerank gallery reextract" in capsys.readouterr().err

    old_files = {p.name for p in (folder / "arrays").iterdir()}
    report = StoredGallery.open(folder, extractor, check_model=False).reextract(progress=False)
    assert report.added == 15 and not report.failures
    _assert_consistent(folder)
    assert not old_files & {p.name for p in (folder / "arrays").iterdir()}
    g = StoredGallery.open(folder, extractor)
    assert g.meta()["model_id"] == extractor.model_id
    np.testing.assert_allclose(g.features().descriptors, before, atol=1e-6)

    # a missing file makes reextract fail and change nothing, unless --drop-failed
    gone = next((root / "Tony_Blair").glob("*.jpg"))
    moved = tmp_path / gone.name
    shutil.move(gone, moved)
    try:
        with sqlite3.connect(folder / "gallery.db") as c:
            c.execute("UPDATE meta SET value = 'old_model@1' WHERE key = 'model_id'")
        with pytest.raises(GalleryError, match="1 of 15 .*--drop-failed"):
            StoredGallery.open(folder, extractor, check_model=False).reextract(progress=False)
        _assert_consistent(folder)
        stale = StoredGallery.open(folder, extractor, check_model=False)
        assert stale.meta()["model_id"] == "old_model@1"
        report = StoredGallery.open(folder, extractor, check_model=False).reextract(
            progress=False, drop_failed=True)
        assert report.added == 14 and len(report.failures) == 1
        assert ("Tony_Blair", 2) in StoredGallery.open(folder, extractor).identities()
    finally:
        shutil.move(moved, gone)


def test_errors_and_bad_files(people: tuple[Path, list[Path]], extractor: FeatureExtractor,
                              tmp_path: Path, env: None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from facerank.cli.app import main

    root, held_out = people
    probe = extractor.extract_paths([held_out[0]], progress=False)
    g = StoredGallery.create(tmp_path / "g", extractor)
    with pytest.raises(GalleryError, match=r"is empty; add images with `facerank gallery add`"):
        g.search(probe)
    with pytest.raises(GalleryError, match="already a gallery"):
        StoredGallery.create(tmp_path / "g", extractor)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(GalleryError, match="not empty and not a gallery"):
        StoredGallery.create(tmp_path / "junk", extractor)
    with pytest.raises(GalleryError, match="not a facerank gallery.*gallery create"):
        StoredGallery.open(tmp_path / "junk")
    with pytest.raises(InputError):
        g.add_files([held_out[0]], [])

    # a broken image in the folder is skipped and reported; the rest is enrolled
    imgs = tmp_path / "imgs" / "Ariel_Sharon"
    imgs.mkdir(parents=True)
    for f in sorted((root / "Ariel_Sharon").glob("*.jpg")):
        shutil.copy(f, imgs / f.name)
    (imgs / "broken.jpg").write_bytes(b"this is not a JPEG")
    report = g.add_folder(tmp_path / "imgs", progress=False)
    assert report.added == 3 and report.batches == 1
    assert [Path(p).name for p, _ in report.failures] == ["broken.jpg"]
    assert g.search(probe, k=1)[0].identity == "Ariel_Sharon"
    with pytest.raises(InputError):
        g.search(probe, k=0)

    assert main(["gallery", "add", str(tmp_path / "g"), str(tmp_path / "imgs")]) == 0
    captured = capsys.readouterr()
    assert "3 already present, 1 skipped" in captured.out
    assert "skipped:" in captured.err and "broken.jpg" in captured.err
    assert main(["gallery", "add", str(tmp_path / "nogallery"), str(tmp_path / "imgs")]) == 2
    assert "gallery create" in capsys.readouterr().err


def test_explain_unavailable_is_one_message(people: tuple[Path, list[Path]],
                                            extractor: FeatureExtractor, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from facerank.cli import gallery as gallery_cli

    monkeypatch.setitem(sys.modules, "facerank.explain.flow", None)  # import -> ImportError
    fs = extractor.extract_paths([people[1][0]], progress=False)
    assert gallery_cli._explain(fs, fs, tmp_path / "x.png", None, ("a", "b")) is None
    assert "explanations are unavailable" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_small_faiss_searches_run_on_one_thread_with_identical_results() -> None:
    """One probe against a small gallery runs faiss on one OpenMP thread (its thread team
    costs more than it saves there); the ranking is the same, and the thread count is restored."""
    faiss = pytest.importorskip("faiss")
    from facerank.gallery import index as gi

    rng = np.random.default_rng(0)
    db = rng.normal(size=(3000, 64)).astype(np.float32)
    q = rng.normal(size=(2, 64)).astype(np.float32)
    flat = faiss.IndexFlatIP(64)
    flat.add(db)
    faiss.omp_set_num_threads(2)
    seen = []
    with gi._threads_for(q.shape[0] * 3000 * 64):
        seen.append(faiss.omp_get_max_threads())
        one = flat.search(q, 10)
    with gi._threads_for(gi.SMALL_SEARCH_MACS + 1):
        seen.append(faiss.omp_get_max_threads())
    assert seen == [1, 2] and faiss.omp_get_max_threads() == 2
    team = flat.search(q, 10)
    np.testing.assert_array_equal(one[1], team[1])
    np.testing.assert_allclose(one[0], team[0], rtol=1e-6)
