"""Clustering: metrics, algorithms, incremental store (crash-safe), CLI bad input."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facerank.clustering import algorithms as A
from facerank.clustering import metrics as M
from facerank.clustering.incremental import assign_new, explain, update
from facerank.clustering.probability import LogisticProb, fit_logistic
from facerank.clustering.store import ClusterStore

PROB = LogisticProb(20.0, -14.0)  # p = 0.5 at cosine 0.7


def blobs(people: int = 20, each: int = 10, d: int = 32, noise: float = 0.08,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = A.unit(rng.normal(size=(people, d)).astype(np.float32))
    y = np.repeat(np.arange(people), each)
    return A.unit(c[y] + noise * rng.normal(size=(len(y), d)).astype(np.float32)), y


def test_metrics_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert M.bcubed(y, y)["f1"] == pytest.approx(100)
    one = M.summary(np.zeros(4, int), y)
    assert one["bcubed_precision"] == pytest.approx(50) and one["bcubed_recall"] == 100
    assert one["pairwise_precision"] == pytest.approx(100 * 2 / 6, abs=0.01)
    # unassigned faces are singletons
    s = M.summary(np.array([-1, -1, 0, 0]), y)
    assert s["clusters"] == 3 and s["unassigned"] == 2 and s["bcubed_precision"] == 100


def test_probability_cluster_beats_merging_baseline() -> None:
    x, y = blobs()
    ours = A.ProbabilityCluster(PROB, k=10).fit(x)
    assert M.bcubed(ours, y)["f1"] > 99
    cw = A.ChineseWhispers(None, cosine=0.0).fit(x)  # far too loose: merges people
    assert M.bcubed(cw, y)["f1"] < M.bcubed(ours, y)["f1"]
    assert A.Agglomerative(0.3, metric="cosine").fit(x).shape == y.shape
    assert A.DBSCANCluster(0.3, metric="cosine").fit(x).min() >= 0


def test_logistic_fit_is_monotone_and_centred() -> None:
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(0.8, 0.05, 500), rng.normal(0.4, 0.05, 500)])
    p = fit_logistic(s, np.arange(1000) < 500)
    assert 0.5 < p.score_at(0.5) < 0.7
    assert np.all(np.diff(p(np.linspace(0, 1, 50))) >= 0) and p(np.array([0.0]))[0] < 0.01


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single(n: int) -> None:
    x = np.ones((n, 8), np.float32)
    for m in (A.ProbabilityCluster(PROB), A.ChineseWhispers(None, cosine=0.5),
              A.Agglomerative(0.5, metric="cosine"), A.DBSCANCluster(0.5, metric="cosine")):
        assert m.fit(x).tolist() == [0] * n


def test_ten_thousand_copies_of_one_person_is_one_cluster_fast() -> None:
    rng = np.random.default_rng(1)
    x = A.unit(np.ones((10_000, 16), np.float32) + 0.01 * rng.normal(size=(10_000, 16)))
    t = time.perf_counter()
    lab = A.ProbabilityCluster(PROB, k=10).fit(x)
    assert time.perf_counter() - t < 20
    assert set(lab.tolist()) == {0}


def test_low_confidence_faces_attached_last_or_left_out() -> None:
    x, y = blobs(people=5, each=8)
    conf = np.ones(len(x))
    conf[::8] = 0.1  # one weak face per person
    far = A.unit(np.random.default_rng(3).normal(size=(1, x.shape[1])).astype(np.float32))
    xx = np.vstack([x, far])
    cc = np.append(conf, 0.1)
    lab = A.ProbabilityCluster(PROB, k=10, min_confidence=0.5).fit(xx, cc)
    assert M.bcubed(lab[:-1], y)["f1"] > 99  # weak faces joined their person afterwards
    assert lab[-1] == -1  # a weak face near nobody stays unassigned


def test_incremental_keeps_old_clusters_and_corrections(tmp_path: Path) -> None:
    x, y = blobs(people=6, each=10)
    method = A.ProbabilityCluster(PROB, k=10)
    keys = [f"f{i}" for i in range(len(x))]
    old = np.arange(len(x)) % 10 < 7
    with ClusterStore.open(tmp_path) as st:
        lab_old = update(st, [k for k, o in zip(keys, old, strict=True) if o], x[old], method)
        assert M.bcubed(lab_old, y[old])["f1"] == pytest.approx(100)
        c0 = int(lab_old[0])
        # user: face f1 is not this person; clusters of person 0 and 1 are merged; rename
        st.not_this_person("f1", c0)
        c1 = int(lab_old[7])
        st.merge(c0, c1)
        st.rename(c0, "Ann")
    with ClusterStore.open(tmp_path) as st:  # a later run, new photos added
        lab = update(st, keys, x, method)
        assert st.names()[c0] == "Ann"
    assert lab[1] == -1  # "not this person" held
    assert set(lab[(y == 1)].tolist()) == {c0}  # the merge held, new faces joined it
    assert len(set(lab[y == 2].tolist())) == 1
    keep = old.copy()
    keep[1] = False
    np.testing.assert_array_equal(lab[keep & (y >= 2)], lab_old[keep[old] & (y[old] >= 2)])
    assert explain(x, lab, 0, method, n=3)[0]["cluster"] == c0


def test_assign_new_respects_bans() -> None:
    x, _ = blobs(people=2, each=10)
    lab = np.repeat([0, 1], 10)
    m = A.ProbabilityCluster(PROB, k=10)
    got = assign_new(x[1:], lab[1:], x[:1], m, first_new_id=5)
    assert got.tolist() == [0]
    banned = np.array([[True, False]])
    assert assign_new(x[1:], lab[1:], x[:1], m, banned, first_new_id=5).tolist() == [5]


def test_split_bans_each_side(tmp_path: Path) -> None:
    with ClusterStore.open(tmp_path) as st:
        st.assign(["a", "b", "c"], [0, 0, 0])
        new = st.split(0, ["c"])
        assert st.members(new) == ["c"] and st.members(0) == ["a", "b"]
        assert ("c", 0) in st.banned() and ("a", new) in st.banned()
        with pytest.raises(Exception, match="not in cluster"):
            st.split(0, ["zz"])


CHILD = """
import sys
from facerank.clustering.store import ClusterStore
st = ClusterStore.open(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    st.rename(0, f"name{i}")
    st.assign([f"n{i}"], [i % 3])
    i += 1
"""


def test_kill_9_leaves_a_consistent_store(tmp_path: Path) -> None:
    with ClusterStore.open(tmp_path) as st:
        st.assign(["a", "b"], [0, 1])
        st.merge(0, 1)
        st.rename(0, "start")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                         env=env)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    p.kill()
    p.wait()
    con = sqlite3.connect(tmp_path / "clusters.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with ClusterStore.open(tmp_path) as st:
        a = st.assignment()
        assert a["a"] == (0, True) and a["b"] == (0, True)  # the merge survived
        n = sum(1 for k in a if k.startswith("n"))
        assert n >= 1 and st.names()[0] == f"name{n - 1}" or st.names()[0] == f"name{n}"


def test_corrupted_cluster_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "clusters.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(Exception, match="not a readable cluster database"):
        ClusterStore.open(tmp_path)


def test_cli_corrupted_gallery_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from facerank.cli.app import main

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "gallery.db").write_bytes(b"x" * 500)
    assert main(["gallery", "cluster", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_cli_folder_without_faces(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from facerank.cli.app import main

    (tmp_path / "empty").mkdir()
    rc = main(["cluster", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc in (0, 2)
    text = capsys.readouterr()
    assert "Traceback" not in text.err
    if rc == 0:
        assert "0 face(s)" in text.out


def test_api_exposes_cluster() -> None:
    import facerank

    assert callable(facerank.cluster)


@pytest.fixture(scope="module")
def small_gallery(lfw_root: Path, backbone: object, tmp_path_factory: pytest.TempPathFactory
                  ) -> Path:
    """3 people x 3 LFW images in a gallery (HOG, centre face)."""
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor
    from facerank.gallery import StoredGallery

    fx = FeatureExtractor(backbone=backbone, detector=FaceDetector(policy="center",
                                                                   fallback="none"),
                          cache=tmp_path_factory.mktemp("cl-cache"))
    folder = tmp_path_factory.mktemp("cl") / "gallery"
    files = []
    for name in ("George_W_Bush", "Colin_Powell", "Tony_Blair"):
        files += sorted((lfw_root / "images" / name).glob("*.jpg"))[:3]
    with StoredGallery.create(folder, fx) as g:
        g.add_files(files, [f.parent.name for f in files], progress=False)
    return folder


def test_web_clusters_view_and_corrections(small_gallery: Path) -> None:
    from fastapi.testclient import TestClient

    from facerank.gallery import StoredGallery
    from facerank.web.app import create_app

    with StoredGallery.open(small_gallery) as g:
        fx = g.extractor
    client = TestClient(create_app(small_gallery, stage2="none", extractor=fx))
    assert client.get("/clusters").status_code == 200
    d = client.get("/api/clusters").json()
    assert sum(c["size"] for c in d["clusters"]) + len(d["unassigned"]) == 9
    first = d["clusters"][0]
    why = client.get(f"/api/clusters/why/{first['images'][0]}").json()
    assert why["cluster"] == first["id"] and all(0 <= n["probability"] <= 1
                                                 for n in why["nearest"])
    assert client.post(f"/api/clusters/merge?into={first['id']}&other={first['id']}"
                       ).status_code == 400
    if len(d["clusters"]) > 1:
        other = d["clusters"][1]
        assert client.post(f"/api/clusters/merge?into={first['id']}&other={other['id']}"
                           ).status_code == 200
        d2 = client.get("/api/clusters").json()
        assert d2["clusters"][0]["size"] == first["size"] + other["size"]
    assert client.get("/api/clusters/why/999999").status_code == 400


def test_web_clusters_view_groups_only_unlabelled_faces(small_gallery: Path,
                                                        tmp_path: Path) -> None:
    """Like `facerank gallery cluster`: once a gallery holds unlabelled faces, the clusters
    view groups those only."""
    import shutil

    from fastapi.testclient import TestClient

    from facerank.gallery import StoredGallery
    from facerank.web.app import create_app

    folder = tmp_path / "g"
    shutil.copytree(small_gallery, folder)
    with StoredGallery.open(folder) as g:
        g.rename_identity("Tony_Blair", "unknown")
        fx = g.extractor
    d = TestClient(create_app(folder, stage2="none", extractor=fx)).get("/api/clusters").json()
    assert sum(c["size"] for c in d["clusters"]) + len(d["unassigned"]) == 3


def test_cli_gallery_cluster_unlabelled_by_default(small_gallery: Path, lfw_root: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    import json
    import shutil

    from facerank.cli.app import main
    from facerank.gallery import is_unlabelled

    assert is_unlabelled(" Unknown ") and is_unlabelled("unlabelled")
    assert not is_unlabelled("George_W_Bush")
    g = tmp_path / "g"
    shutil.copytree(small_gallery, g)
    # every face carries a name: nothing to cluster unless --all
    assert main(["gallery", "cluster", str(g)]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["gallery", "cluster", str(g), "--all", "--out", str(tmp_path / "all")]) == 0
    assert "9 face(s)" in capsys.readouterr().out
    assert (tmp_path / "all" / "clusters.json").is_file()
    # two photos enrolled without a name, one under a folder called "unknown"
    extra = sorted((lfw_root / "images" / "Tony_Blair").glob("*.jpg"))[3:5]
    (tmp_path / "unknown").mkdir()
    shutil.copy(extra[1], tmp_path / "unknown" / extra[1].name)
    assert main(["gallery", "add", str(g), str(extra[0]), "--unlabelled"]) == 0
    assert main(["gallery", "add", str(g), str(tmp_path / "unknown")]) == 0
    assert main(["gallery", "add", str(g), str(extra[0]), "--unlabelled", "--identity", "x"]) == 2
    capsys.readouterr()
    assert main(["gallery", "cluster", str(g), "--out", str(tmp_path / "un")]) == 0
    assert "2 face(s)" in capsys.readouterr().out
    d = json.loads((tmp_path / "un" / "clusters.json").read_text())
    paths = {Path(f["path"]).name for c in d["clusters"] for f in c["faces"]}
    paths |= {Path(f["path"]).name for f in d["unassigned"]}
    assert paths == {extra[0].name, extra[1].name}
    assert main(["gallery", "cluster", str(g), "--all", "--out", str(tmp_path / "all")]) == 0
    assert "11 face(s)" in capsys.readouterr().out
