"""Readers of benchmarks on disk: insightface .bin, IJB-B/C meta folders, TinyFace.

The files are built here from a few real LFW photos, cut with facerank's own ArcFace-112
alignment (`eval.external.lfw_bin_images`), plus malformed variants that must be refused with
one line and exit code 2 — a pickle carrying a callable without executing it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from facerank.cli.app import main
from facerank.errors import DataError
from facerank.eval import external as X
from facerank.eval.readers.insightface_bin import read_bin, write_bin
from facerank.eval.readers.lfw import Pairs

N_SAME = 10  # pairs 0..9 of pairs.txt (fold 0, same) and 300..309 (fold 0, different)


@pytest.fixture(scope="module")
def small(lfw_root: Path) -> SimpleNamespace:
    """20 LFW pairs: photos, their SFace features (shared cache) and their .bin crops."""
    from facerank.eval.protocols import lfw_extractor
    from facerank.eval.readers.lfw import load_lfw, load_pairs

    lfw = load_lfw(lfw_root)
    pairs = load_pairs(lfw)
    pick = np.r_[0:N_SAME, 300 : 300 + N_SAME]
    order = np.ravel(np.column_stack([pick[:N_SAME], pick[N_SAME:]]))  # same, diff, same...
    rows = np.unique(np.r_[pairs.a[order], pairs.b[order]])
    fx = lfw_extractor(backbone="sface")
    feats = fx.extract_paths([lfw.paths[r] for r in rows], progress=False, raise_errors=True)
    local = Pairs(np.searchsorted(rows, pairs.a[order]), np.searchsorted(rows, pairs.b[order]),
                  pairs.same[order], np.zeros(len(order), np.int64))
    data = SimpleNamespace(lfw=SimpleNamespace(paths=[lfw.paths[r] for r in rows]),
                           features=feats, extractor=fx)
    images, same = X.lfw_bin_images(data, local)
    emb = feats.embeddings
    photo_cos = np.einsum("pd,pd->p", emb[local.a], emb[local.b])
    return SimpleNamespace(lfw=lfw, rows=rows, pairs=local, feats=feats, images=images,
                           same=same, photo_cos=photo_cos, labels=lfw.labels[rows])


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, the error lines on stderr; progress bars left out)."""
    code = main(args)
    err = capsys.readouterr().err
    return code, "\n".join(line for line in err.splitlines() if line.startswith("error:"))


def _refused(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, err = _run(["eval", f"bin:{path}", "--out", str(path.parent / "out")], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and str(path) in err, err
    return err


# ---- .bin -----------------------------------------------------------------------------------


def test_bin_round_trip_and_formats(tmp_path: Path) -> None:
    imgs = [b"a" * 300, b"b", b"c", b"d"]
    vb = read_bin(write_bin(tmp_path / "x.bin", imgs, np.array([True, False])))
    assert vb.images == imgs and vb.same.tolist() == [True, False]
    assert vb.a.tolist() == [0, 2] and vb.b.tolist() == [1, 3]
    for proto in (3, 4, 5):  # Python 3 writers
        (tmp_path / "p.bin").write_bytes(pickle.dumps((imgs, [True, False]), protocol=proto))
        assert read_bin(tmp_path / "p.bin").images == imgs
    # Python 2 writer (insightface's original files): protocol 2, `str` = SHORT_BINSTRING
    py2 = b"\x80\x02]q\x00(U\x01aq\x01U\x01bU\x01cU\x01de]q\x02(\x88\x89e\x86q\x03."
    (tmp_path / "py2.bin").write_bytes(py2)
    assert read_bin(tmp_path / "py2.bin").images == [b"a", b"b", b"c", b"d"]
    # insightface's folds: 10 blocks of consecutive pairs
    vb = read_bin(write_bin(tmp_path / "f.bin", [b"x"] * 40, np.arange(20) % 2 == 0))
    assert vb.fold.tolist() == np.repeat(np.arange(10), 2).tolist()


class _Toucher:
    """Unpickling this runs os.system and creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_bin_with_callable_is_refused_without_running_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.bin"
    for payload in (([b"a", _Toucher(marker)], [True]), _Toucher(marker),
                    ([b"a", b"b", b"c", b"d"], [True, _Toucher(marker)])):
        path.write_bytes(pickle.dumps(payload, protocol=4))
        err = _refused(path, capsys)
        assert "not allowed" in err and "nothing was executed" in err
        assert not marker.exists()
    with open(path, "rb") as f:  # the payload is live: plain pickle would have run it
        pickle.load(f)  # noqa: S301
    assert marker.exists()


def test_malformed_bins_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = pickle.dumps(([b"a" * 500, b"b", b"c", b"d"], [True, False]), protocol=4)
    cases = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "empty": (b"", "empty"),
        "not_pickle": (b"JFIF not a pickle at all", "not an insightface"),
        "ints": (pickle.dumps(([1, 2, 3, 4], [True, False]), protocol=4), "not allowed"),
        "strings": (pickle.dumps(([b"a", b"b"], ["yes"]), protocol=4), "not allowed"),
        "bool_type": (pickle.dumps(([b"a", b"b"], [b"x"]), protocol=4), "list of booleans"),
        "numpy": (pickle.dumps(([b"a", b"b"], np.array([True])), protocol=4), "not allowed"),
        "mismatch": (pickle.dumps(([b"a", b"b", b"c"], [True, False]), protocol=4),
                     "3 images for 2 pairs"),
        "triple": (pickle.dumps(([b"a", b"b"], [True], [1]), protocol=4), "not allowed"),
        "one_kind": (pickle.dumps(([b"a", b"b", b"c", b"d"], [True, True]), protocol=4),
                     "need both kinds"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        assert words in _refused(path, capsys), name
    with pytest.raises(DataError, match="not found"):
        read_bin(tmp_path / "absent.bin")


def test_bin_with_undecodable_image_names_it(small: SimpleNamespace, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    images = list(small.images[:4])
    images[3] = b"\xff\xd8 not really a jpeg"
    path = write_bin(tmp_path / "bad.bin", images, np.array([True, False]))
    code, err = _run(["eval", f"bin:{path}", "--backbone", "sface", "--out",
                      str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "bad.bin#3" in err, err


def test_bin_eval_matches_whole_photos(small: SimpleNamespace, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """SFace on the .bin's crops scores each pair as on the photos (the crop is its chip)."""
    path = write_bin(tmp_path / "lfw20.bin", small.images, small.same)
    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cache"))
    code, _ = _run(["eval", f"bin:{path}", "--backbone", "sface", "--out",
                    str(tmp_path / "out")], capsys)
    assert code == 0
    report = json.loads((tmp_path / "out" / "sface_bin-lfw20.json").read_text())
    assert report["settings"]["n_pairs"] == 2 * N_SAME
    assert report["settings"]["n_distinct_images"] == len(small.rows)
    vb = read_bin(path)
    feats, rows = X.embed_bin(vb, X.bin_extractor("sface"), progress=False)
    emb = feats.embeddings
    cos = np.einsum("pd,pd->p", emb[rows[vb.a]], emb[rows[vb.b]])
    assert np.abs(cos - small.photo_cos).max() < 0.03  # JPEG of the chip only
    assert report["stage1"]["auc"] == pytest.approx(
        X.verification_metrics(cos, vb)["auc"], abs=1e-9)
    assert report["stage1"]["auc"] > 0.9


# ---- IJB ------------------------------------------------------------------------------------


def _ijb_folder(small: SimpleNamespace, root: Path) -> Path:
    """An IJB-B folder: each photo one face of its own template; pairs = the LFW pairs;
    1:N: gallery S1 = first photos of the same-pairs, probes = their second photos (mated)
    and the different-pairs' photos of people absent from S1 (non-mated)."""
    meta = root / "meta"
    meta.mkdir(parents=True)
    (root / "loose_crop").mkdir()
    names = [f"{i}.jpg" for i in range(len(small.rows))]
    for i, p in enumerate(small.lfw.paths[r] for r in small.rows):
        shutil.copy(p, root / "loose_crop" / names[i])
    pts = small.feats.landmarks5  # ArcFace points in the photo
    (meta / "ijbb_name_5pts_score.txt").write_text("".join(
        f"{n} {' '.join(f'{v:.3f}' for v in pts[i].ravel())} 0.99\n" for i, n in enumerate(names)))
    (meta / "ijbb_face_tid_mid.txt").write_text("".join(
        f"{n} {i + 1} {100 + i}\n" for i, n in enumerate(names)))
    pr = small.pairs
    (meta / "ijbb_template_pair_label.txt").write_text("".join(
        f"{a + 1} {b + 1} {int(s)}\n" for a, b, s in zip(pr.a, pr.b, pr.same, strict=True)))
    lab = small.labels
    gal = np.unique(pr.a[pr.same])
    probes_m = pr.b[pr.same]
    others = np.unique(np.r_[pr.a[~pr.same], pr.b[~pr.same]])
    probes_n = others[~np.isin(lab[others], lab[gal])]
    head = "TEMPLATE_ID,SUBJECT_ID,FILENAME,MEDIA_ID\n"
    for g, rows in (("S1", gal), ("S2", gal[::-1])):
        (meta / f"ijbb_1N_gallery_{g}.csv").write_text(head + "".join(
            f"{r + 1},{lab[r]},img/{r}.jpg,{100 + r}\n" for r in rows))
    (meta / "ijbb_1N_probe_mixed.csv").write_text(head + "".join(
        f"{r + 1},{lab[r]},img/{r}.jpg,{100 + r}\n" for r in np.r_[probes_m, probes_n]))
    return root


def test_ijb_one_to_one_and_n(small: SimpleNamespace, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    root = _ijb_folder(small, tmp_path / "IJBB")
    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cache"))
    code, _ = _run(["eval", f"ijb:{root}", "--backbone", "sface", "--out",
                    str(tmp_path / "out")], capsys)
    assert code == 0
    rep = json.loads((tmp_path / "out" / "sface_ijb-IJBB_pool-mean.json").read_text())
    # one face per template, aligned at the same points: the photos' own cosines
    same = small.pairs.same
    want = X.metrics.tar_at_far(small.photo_cos, same, [1e-4, 1e-5])
    assert rep["1:1"]["tar_at_far_1e-4"] == pytest.approx(want["tar"][0], abs=1e-9)
    assert rep["1:1"]["auc"] == pytest.approx(X.metrics.roc_auc(small.photo_cos, same), abs=1e-6)
    one_n = rep["1:N"]
    assert set(one_n) == {"S1", "S2", "mean"}
    mated = set(small.pairs.b[same].tolist())
    assert one_n["S1"]["n_mated"] == len(mated) and one_n["S1"]["n_nonmated"] > 0
    assert one_n["S1"]["rank1"] == pytest.approx(one_n["S2"]["rank1"])  # same gallery, reordered
    assert 0.5 <= one_n["S1"]["rank1"] <= 1.0
    # URL-weighted pooling needs the backbone's URL head (dlib's is bundled, SFace has none)
    code, err = _run(["eval", f"ijb:{root}", "--backbone", "sface", "--pool", "url", "--out",
                      str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "no URL confidence head" in err
    for pool in ("mean", "url"):  # one face per template: weights change nothing
        code, _ = _run(["eval", f"ijb:{root}", "--pool", pool, "--out", str(tmp_path / "out")],
                       capsys)
        assert code == 0
    rep_m, rep_u = (json.loads((tmp_path / "out" / f"ijb-IJBB_pool-{p}.json").read_text())
                    for p in ("mean", "url"))
    assert rep_u["settings"]["pooling"].startswith("URL")
    assert rep_u["1:1"]["auc"] == pytest.approx(rep_m["1:1"]["auc"], abs=1e-6)


def test_ijb_malformed_meta(small: SimpleNamespace, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    root = _ijb_folder(small, tmp_path / "IJBB")
    tid = root / "meta" / "ijbb_face_tid_mid.txt"
    good = tid.read_text()
    tid.write_text("".join(good.splitlines(keepends=True)[:-1]))  # one face short
    code, err = _run(["eval", f"ijb:{root}", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "ijbb_face_tid_mid.txt" in err
    tid.write_text(good.replace(" 1 100\n", " one 100\n", 1))
    code, err = _run(["eval", f"ijb:{root}", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "ijbb_face_tid_mid.txt:1" in err and "integers" in err
    tid.write_text(good)
    pl = root / "meta" / "ijbb_template_pair_label.txt"
    pl.write_text(pl.read_text() + "1 9999 0\n")
    code, err = _run(["eval", f"ijb:{root}", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "template 9999 has no face" in err
    code, err = _run(["eval", f"ijb:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "o")],
                     capsys)
    assert code == 2 and "not found" in err


def test_pool_templates_weighted_mean() -> None:
    e = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    ids, f = X.pool_templates(e, np.array([7, 7, 3]))
    assert ids.tolist() == [3, 7]
    np.testing.assert_allclose(f, [[0, 1], [np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)
    _, fw = X.pool_templates(e, np.array([7, 7, 3]), np.array([3.0, 1.0, 0.0]))
    np.testing.assert_allclose(fw[1], np.array([3.0, 1.0]) / np.sqrt(10), atol=1e-6)
    np.testing.assert_allclose(fw[0], [0, 1], atol=1e-6)  # zero weight: plain mean kept


# ---- TinyFace -------------------------------------------------------------------------------


def test_cmc_ranks() -> None:
    s = np.array([[0.9, 0.8, 0.1], [0.2, 0.5, 0.7], [0.3, 0.3, 0.1]])
    r = X.cmc(s, np.array([0, 1, 1]), np.array([0, 1, -1]), (1, 2))
    assert r == {"rank1": pytest.approx(2 / 3), "rank2": 1.0}  # probe 2 ties its mate


def test_tinyface_layout(small: SimpleNamespace, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    test = tmp_path / "tinyface" / "Testing_Set"
    for sub in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (test / sub).mkdir(parents=True)
    pr, paths = small.pairs, [small.lfw.paths[r] for r in small.rows]
    for k, (a, b) in enumerate(zip(pr.a[pr.same][:4], pr.b[pr.same][:4], strict=True)):
        shutil.copy(paths[a], test / "Gallery_Match" / f"{small.labels[a]}_{k}a.jpg")
        shutil.copy(paths[b], test / "Probe" / f"{small.labels[b]}_{k}b.jpg")
    for r in np.unique(pr.a[~pr.same])[:4]:
        shutil.copy(paths[r], test / "Gallery_Distractor" / f"d{r}.jpg")
    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cache"))
    code, _ = _run(["eval", f"tinyface:{tmp_path / 'tinyface'}", "--backbone", "sface",
                    "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    rep = json.loads((tmp_path / "out" / "sface_tinyface-tinyface.json").read_text())
    assert rep["settings"]["n_probes"] == 4 and rep["settings"]["n_distractors"] == 4
    assert rep["stage1"]["rank20"] == 1.0 and rep["stage1"]["rank1"] >= 0.75
    (test / "Probe" / "99999_1.jpg").write_bytes(paths[0].read_bytes())  # no mate
    code, err = _run(["eval", f"tinyface:{tmp_path / 'tinyface'}", "--out",
                      str(tmp_path / "out")], capsys)
    assert code == 2 and "'99999'" in err and len(err.splitlines()) == 1


def test_option_conflicts_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    path = write_bin(tmp_path / "x.bin", [b"a", b"b", b"c", b"d"], np.array([True, False]))
    for args, words in (([f"bin:{path}", "--stage2", "emd", "--calibrate", "ida-r"],
                         "--stage2 none"),
                        ([f"ijb:{tmp_path}", "--stage2", "emd"], "apply to bin:"),
                        ([f"ijb:{tmp_path}", "--pool", "max"], "--pool"),
                        (["bin:"], "give a path"),
                        (["lfw-pairs", "--calibrate-with", str(path)], "--calibrate-with")):
        code, err = _run(["eval", *args, "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and words in err, (args, err)
