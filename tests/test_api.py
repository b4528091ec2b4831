"""The one-line API returns what the CLI prints, for every kind of input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PEOPLE = ("Ariel_Sharon", "Colin_Powell", "Jean_Chretien")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facerank import api

    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cache"))
    api._extractor.cache_clear()  # extractors fix their cache folder when built
    yield
    api._extractor.cache_clear()


def test_import_stays_light() -> None:
    code = ("import sys, facerank; print(int(any(m in sys.modules for m in "
            "('torch', 'cv2', 'dlib', 'facerank.api'))), callable(facerank.embed))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "True"]


def test_embed_any_input_matches_cli_extract(env: None, lfw_root: Path, tmp_path: Path) -> None:
    import facerank
    from facerank.cli.app import main
    from facerank.face.features import FeatureSet

    path = lfw_root / "images" / "Colin_Powell" / "Colin_Powell_0001.jpg"
    assert main(["extract", str(path), "--out", str(tmp_path / "f.npz")]) == 0
    cli = FeatureSet.load(tmp_path / "f.npz").embeddings[0]
    v = facerank.embed(path)
    assert v.shape == (128,) and np.allclose(v, cli, atol=1e-6)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    for x in (str(path), path.read_bytes(), Image.open(path), pixels):
        assert np.allclose(facerank.embed(x), cli, atol=1e-5), type(x)
    with pytest.raises(facerank.api.InputError, match="uint8"):
        facerank.embed(pixels.astype(np.float32))
    with pytest.raises(facerank.api.InputError, match="expected a path"):
        facerank.embed(42)


def test_compare_matches_cli(env: None, lfw_root: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    import facerank
    from facerank.cli.app import main

    a = lfw_root / "images" / "Colin_Powell" / "Colin_Powell_0001.jpg"
    b = lfw_root / "images" / "Colin_Powell" / "Colin_Powell_0002.jpg"
    c = lfw_root / "images" / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg"
    for x, y in ((a, b), (a, c)):
        assert main(["compare", str(x), str(y), "--backbone", "dlib"]) == 0
        printed = capsys.readouterr().out
        cos, dist = (float(v) for v in re.findall(r"│ (-?\d\.\d{4}) ", printed)[:2])
        r = facerank.compare(x, y, backbone="dlib")
        assert round(r.cosine, 4) == cos and round(r.distance, 4) == dist
        assert r.decision.split()[0] in printed and r.sources == ("yunet", "yunet")
    assert facerank.compare(a, b, backbone="dlib").same
    assert not facerank.compare(a, c, backbone="dlib").same
    # --json: the same numbers, the probability on its one named scale
    for x, y in ((a, b), (a, c)):
        assert main(["compare", str(x), str(y), "--backbone", "dlib", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        r = facerank.compare(x, y, backbone="dlib")
        assert got["cosine"] == pytest.approx(r.cosine, abs=1e-6)
        assert got["dlib_rule"]["same"] == r.same
        mp = got["match_probability"]
        assert mp["scale"] == "match probability" and mp["value"] == pytest.approx(
            r.probability, abs=1e-9) and mp["verdict_far_1e-3"] == r.verdict_far
        assert [d["source"] for d in got["detections"]] == ["yunet", "yunet"]
    cosines = []
    for x, y in ((a, b), (a, c)):  # the default backbone is SFace: its cosine, as the CLI's
        assert main(["compare", str(x), str(y)]) == 0
        printed = capsys.readouterr().out
        assert "cosine (sface)" in printed and "dlib distance" not in printed
        r = facerank.compare(x, y)
        assert r.distance is None and round(r.cosine, 4) == float(
            re.findall(r"│ (-?\d\.\d{4}) ", printed)[0])
        cosines.append(r.cosine)
    assert cosines[0] > cosines[1]


def test_gallery_search_matches_cli(env: None, lfw_root: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import facerank
    from facerank.cli.app import main

    folder = tmp_path / "people"
    for name in PEOPLE:
        (folder / name).mkdir(parents=True)
        for f in sorted((lfw_root / "images" / name).glob("*.jpg"))[1:4]:
            shutil.copy(f, folder / name / f.name)
    g = tmp_path / "g"
    assert main(["gallery", "create", str(g)]) == 0
    assert main(["gallery", "add", str(g), str(folder)]) == 0
    probe = lfw_root / "images" / PEOPLE[1] / f"{PEOPLE[1]}_0001.jpg"
    capsys.readouterr()
    assert main(["search", str(probe), "--gallery", str(g), "--top", "4", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["probe_detection"]["source"] == "yunet"
    # a clean probe of an enrolled person: the strict top-1 verdict accepts it
    assert cli["top1_verdict_far_1e-3"] == "same person"
    assert main(["search", str(probe), "--gallery", str(g), "--top", "2"]) == 0
    assert f"top-1 {PEOPLE[1]}: same person at FAR 1e-3" in capsys.readouterr().out
    gal = facerank.Gallery.open(g)
    try:
        hits = gal.search(probe, k=4)
        assert [h.to_dict() for h in hits] == cli["results"]
        assert hits[0].identity == PEOPLE[1]
        by_array = gal.search(np.asarray(Image.open(probe).convert("RGB")), k=4, stage2="none")
        assert [h.identity for h in by_array] == [r["identity"] for r in cli["results"]]
    finally:
        gal.close()
