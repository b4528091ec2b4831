"""Engines beyond one process: a Milvus (milvus-lite) gallery and Ray Data enrolment.

No server is needed: milvus-lite runs embedded from a `.db` file and Ray starts locally.
Skipped when the `scale` extra is not installed."""

from __future__ import annotations

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
from facerank.face.features import FeatureExtractor
from facerank.gallery import StoredGallery

pytest.importorskip("pymilvus")

PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder", "Tony_Blair",
          "George_W_Bush", "Jean_Chretien", "Junichiro_Koizumi"]


@pytest.fixture(scope="module")
def people(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """8 people x 4 enrolled images (copied) + 2 held-out probes each (left in LFW)."""
    root = tmp_path_factory.mktemp("people")
    probes = []
    for name in PEOPLE:
        files = sorted((lfw_root / "images" / name).glob("*.jpg"))
        (root / name).mkdir()
        for f in files[:4]:
            shutil.copy(f, root / name / f.name)
        probes += files[6:8]
    return root, probes


def _ids_sqlite(folder: Path) -> set[int]:
    with sqlite3.connect(f"file:{folder / 'gallery.db'}?mode=ro", uri=True) as c:
        return {int(r[0]) for r in c.execute("SELECT id FROM images")}


def _same_results(a: StoredGallery, b: StoredGallery, probes, k: int = 10) -> None:  # noqa: ANN001
    ra, rb = a.search_many(probes, k=k), b.search_many(probes, k=k)
    for qa, qb in zip(ra, rb, strict=True):
        assert [r.path for r in qa] == [r.path for r in qb]
        assert [r.identity for r in qa] == [r.identity for r in qb]
        np.testing.assert_allclose([r.score for r in qa], [r.score for r in qb], atol=1e-5)


def milvus_parity(people: tuple[Path, list[Path]], extractor: FeatureExtractor,
                  tmp_path: Path, **milvus: str) -> None:
    """A Milvus gallery (`milvus`: milvus_uri, milvus_collection) gives faiss's answers after
    adding a folder, after remove / rename, and after reopening the persisted collection."""
    root, probe_files = people
    probes = extractor.extract_paths(probe_files, progress=False)
    faiss_g = StoredGallery.create(tmp_path / "faiss", extractor)
    milvus_g = StoredGallery.create(tmp_path / "milvus", extractor, index="milvus", **milvus)
    for g in (faiss_g, milvus_g):
        g.add_folder(root, progress=False)
    assert milvus_g.index.count() == len(milvus_g) == len(faiss_g) == 32
    _same_results(faiss_g, milvus_g, probes)

    # remove and rename: both sides stay consistent and agree with faiss
    for g in (faiss_g, milvus_g):
        g.remove_identity("Colin_Powell")
        g.remove_image(int(g.images("Tony_Blair")[0]["id"]))
        g.rename_identity("Ariel_Sharon", "A_Sharon")
    assert set(milvus_g.index.ids().tolist()) == _ids_sqlite(tmp_path / "milvus")
    assert milvus_g.index.count() == len(faiss_g) == 27
    _same_results(faiss_g, milvus_g, probes)
    assert "A_Sharon" in {r.identity for q in milvus_g.search_many(probes, 27) for r in q}
    milvus_g.close()

    # reopen: same answers from the persisted collection
    again = StoredGallery.open(tmp_path / "milvus", extractor)
    assert again.index.kind == "milvus"
    _same_results(faiss_g, again, probes)
    again.close()
    faiss_g.close()


def test_milvus_gallery_matches_faiss(people: tuple[Path, list[Path]],
                                      extractor: FeatureExtractor, tmp_path: Path) -> None:
    milvus_parity(people, extractor, tmp_path, milvus_uri=str(tmp_path / "faces.db"))


def test_milvus_kill_during_add_loses_nothing(lfw_root: Path, extractor: FeatureExtractor,
                                              tmp_path: Path) -> None:
    """SIGKILL during a Milvus-backed `gallery add`: committed entries survive, no half entry:
    after reopening, SQLite and the collection hold exactly the same image ids."""
    folder = tmp_path / "imgs"
    dirs = [d for d in sorted((lfw_root / "images").iterdir()) if len(list(d.glob("*.jpg"))) >= 4]
    for d in dirs[:15]:
        (folder / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:4]:
            shutil.copy(f, folder / d.name / f.name)
    g = tmp_path / "g"
    StoredGallery.create(g, extractor, index="milvus",
                         milvus_uri=str(tmp_path / "faces.db")).close()
    env = dict(os.environ, FACERANK_GALLERY_BATCH="6", FACERANK_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "facerank.cli", "gallery", "add", str(g),
                             str(folder)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_ids_sqlite(g)) < 12:
            assert proc.poll() is None, "gallery add ended before it could be killed"
            assert time.monotonic() < deadline, "no batch committed within 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and milvus-lite's server with it
    finally:
        proc.wait(timeout=30)
    committed = _ids_sqlite(g)
    assert 12 <= len(committed) < 60
    gal = StoredGallery.open(g, extractor)  # replays the journal into the collection
    assert set(gal.index.ids().tolist()) == committed
    probes = extractor.extract_paths(sorted(folder.glob("*/*.jpg"))[:5], progress=False)
    top = gal.search_many(probes, k=1)
    # the enrolled ones among them find themselves
    assert all(q[0].score > 0.99 for q in top[: len(committed) // 4])
    gal.close()
    # resume completes, and the two sides still agree
    subprocess.run([sys.executable, "-m", "facerank.cli", "gallery", "add", str(g), str(folder)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gal = StoredGallery.open(g, extractor)
    assert len(gal) == 60 and set(gal.index.ids().tolist()) == _ids_sqlite(g)
    gal.close()


@pytest.mark.parametrize("damage", ["truncated-segment", "dropped"])
def test_milvus_lite_collection_rebuilt_from_store(people: tuple[Path, list[Path]],
                                                   extractor: FeatureExtractor, tmp_path: Path,
                                                   damage: str) -> None:
    """The collection is a replica: a milvus-lite segment cut short (a kill inside
    milvus-lite's own write) or a collection dropped behind the gallery's back is rebuilt from
    the store on open, and the gallery answers as before."""
    from pymilvus import MilvusClient

    root, probe_files = people
    probes = extractor.extract_paths(probe_files, progress=False)
    uri = tmp_path / "faces.db"
    g = StoredGallery.create(tmp_path / "g", extractor, index="milvus", milvus_uri=str(uri))
    g.add_folder(root, progress=False)
    before = [[(r.path, round(r.score, 5)) for r in q] for q in g.search_many(probes, k=5)]
    g.close()
    if damage == "dropped":
        client = MilvusClient(uri=str(uri))
        client.drop_collection("facerank_faces")
        client.close()
        from facerank.gallery.milvus import disconnect
        disconnect(client, str(uri))
    else:
        segments = sorted((uri / "collections" / "facerank_faces").rglob("*.parquet"))
        assert segments, "milvus-lite keeps no parquet segments: the test needs another damage"
        for f in segments:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    again = StoredGallery.open(tmp_path / "g", extractor)
    assert set(again.index.ids().tolist()) == _ids_sqlite(tmp_path / "g") and len(again) == 32
    after = [[(r.path, round(r.score, 5)) for r in q] for q in again.search_many(probes, k=5)]
    assert after == before
    again.close()


def test_milvus_bad_uri_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from facerank.cli.app import main

    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cache"))
    cases = [
        (["--index", "milvus"], "needs --milvus-uri"),
        (["--index", "milvus", "--milvus-uri", "ftp://x"], "unknown scheme"),
        (["--index", "milvus", "--milvus-uri", str(tmp_path / "faces.txt")], "must end in .db"),
        (["--index", "milvus", "--milvus-uri", str(tmp_path / "nope" / "f.db")], "does not exist"),
        (["--index", "milvus", "--milvus-uri", "http://127.0.0.1:9"], "cannot reach Milvus"),
        (["--milvus-uri", str(tmp_path / "f.db")], "only for --index milvus"),
        (["--index", "bogus"], "unknown index"),
    ]
    for i, (args, msg) in enumerate(cases):
        assert main(["gallery", "create", str(tmp_path / f"g{i}"), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f"g{i}" / "gallery.db").exists()


def test_ray_enrolment_equals_in_process(lfw_images: list[Path], extractor: FeatureExtractor,
                                         tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from facerank.scale.ray import RayExtract

    paths = [str(p) for p in lfw_images[::60][:200]]  # 200 images of many people
    fresh = FeatureExtractor(backbone=extractor.backbone, detector=extractor.detector,
                             cache=False)
    want = fresh.extract_paths(paths, progress=False)
    rx = RayExtract(fresh, address=None, batch_size=25, cache=False)
    got = rx.extract_paths(paths)
    assert got.paths == want.paths and len(got) == len(paths)
    assert np.abs(got.descriptors - want.descriptors).max() < 1e-5
    for g in want.grids:
        assert np.abs(got.grids[g].astype(np.float32) - want.grids[g].astype(np.float32)).max() \
            < 1e-5
    np.testing.assert_array_equal(got.landmarks5, want.landmarks5)
    # through the gallery: the store holds what the in-process extractor computed
    b = StoredGallery.create(tmp_path / "b", fresh)
    names = [Path(p).parent.name for p in paths[:40]]
    rep = b.add_files(paths[:40], names, progress=False, extract=rx)
    assert rep.added == 40 and len(b) == 40
    fb = b.features()
    rows = [want.paths.index(p) for p in fb.paths]
    assert np.abs(fb.descriptors - want.descriptors[rows]).max() < 1e-5


def test_scale_options_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         extractor: FeatureExtractor) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    from facerank.scale.ray import RayExtract

    with pytest.raises(InputError, match=r"pip install 'facerank\[scale\]'"):
        RayExtract(extractor)
    with pytest.raises(InputError, match=r"pip install 'facerank\[scale\]'"):
        StoredGallery.create(tmp_path / "g", extractor, index="milvus",
                       milvus_uri=str(tmp_path / "f.db"))
    with pytest.raises(GalleryError):
        StoredGallery.open(tmp_path / "missing")


def test_web_page_searches_a_milvus_gallery(people: tuple[Path, list[Path]],
                                            extractor: FeatureExtractor, tmp_path: Path) -> None:
    """The web service works unchanged on a Milvus-backed gallery (Stage 2 included)."""
    from fastapi.testclient import TestClient

    from facerank.web.app import create_app

    root, probe_files = people
    with StoredGallery.create(tmp_path / "g", extractor, index="milvus",
                        milvus_uri=str(tmp_path / "faces.db")) as g:
        g.add_folder(root, progress=False)
    client = TestClient(create_app(tmp_path / "g", extractor=extractor))
    resp = client.post("/api/search?k=3",
                       files={"file": ("p.jpg", probe_files[0].read_bytes(), "image/jpeg")})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert results[0]["identity"] == PEOPLE[0] and len(results) == 3
    assert "emd" in results[0]["stage_scores"]
    client.app.state.service.gallery.close()


def test_ray_unreachable_address_is_one_line(people: tuple[Path, list[Path]],
                                             extractor: FeatureExtractor, tmp_path: Path) -> None:
    """`--ray ray://host:port` with nothing listening: one line, exit 2, nothing enrolled."""
    pytest.importorskip("ray")
    root, _ = people
    StoredGallery.create(tmp_path / "g", extractor).close()
    env = dict(os.environ, FACERANK_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "facerank.cli", "gallery", "add", str(tmp_path / "g"),
                        str(root), "--ray", "ray://127.0.0.1:9"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot start or reach Ray at ray://127.0.0.1:9" in lines[0], lines
    assert not _ids_sqlite(tmp_path / "g")
