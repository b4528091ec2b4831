"""URL confidence in the product: bundled head, search output, `gallery add --min-confidence`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerank.cli.app import main
from facerank.errors import InputError
from facerank.face.features import FeatureSet
from facerank.uncertainty import confidence as C

BACKBONE = "dlib_resnet_v1@facerank-features-1"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path / "cli-cache"))
    monkeypatch.delenv("FACERANK_URL", raising=False)


def _tiny(src: Path, dst: Path, side: int = 40) -> Path:
    """The image shrunk so the face is ~side/2.5 px wide, then enlarged back (a bad photo)."""
    img = cv2.imread(str(src))
    h, w = img.shape[:2]
    small = cv2.resize(img, (side, side * h // w), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(dst), cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    return dst


def test_bundled_head_loads_and_matches_its_config() -> None:
    found = C.default_head(BACKBONE)
    assert found is not None, "the bundled URL head for the dlib backbone is missing"
    head, meta = found
    assert meta["kind"] == "url" and meta["backbone"] == BACKBONE
    assert meta["split"]["train_fold"] is True
    assert meta["command"].startswith("facerank train url")
    assert C.bundled_path(BACKBONE).stat().st_size < 4_000_000
    assert C.default_head("sface@x") is None  # no head for another backbone: no confidence


def test_search_and_min_confidence(lfw_root: Path, extractor, tmp_path: Path, env,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    people = ["Colin_Powell", "Tony_Blair"]
    root = tmp_path / "imgs"
    for name in people:
        (root / name).mkdir(parents=True)
        for f in sorted((lfw_root / "images" / name).glob("*.jpg"))[:2]:
            shutil.copy(f, root / name / f.name)
    clean = sorted((lfw_root / "images" / "Colin_Powell").glob("*.jpg"))[3]
    bad_dir = tmp_path / "bad" / "Colin_Powell"
    bad_dir.mkdir(parents=True)
    bad = _tiny(clean, bad_dir / "tiny.jpg")
    fx = extractor
    pair = FeatureSet.stack([fx.extract_file(clean), fx.extract_file(bad)])
    info = C.attach(pair, fx.model_id)
    c_clean, c_bad = info[0]["confidence"], info[1]["confidence"]
    assert c_bad < c_clean  # a 16-px face is less trustworthy than its original
    assert len(info[0]["confidences"]) == 16
    floor = (c_clean + c_bad) / 2

    g = tmp_path / "g"
    assert main(["gallery", "create", str(g), "--faces", "center", "--no-face", "center",
                 "--backbone", "dlib"]) == 0  # the URL head ships for dlib
    assert main(["gallery", "add", str(g), str(root), "--min-confidence", "0"]) == 0
    # the tiny copy is refused and reported, the clean image is enrolled
    assert main(["gallery", "add", str(g), str(bad_dir.parent), str(clean),
                 "--identity", "Colin_Powell", "--min-confidence", f"{floor:.4f}"]) == 0
    from facerank.gallery import StoredGallery

    with StoredGallery.open(g) as gal:
        paths = {Path(p).name for p in gal.features(grids=False).paths}
    assert clean.name in paths and "tiny.jpg" not in paths
    assert main(["gallery", "add", str(g), str(root), "--min-confidence", "nan"]) == 2

    probe = sorted((lfw_root / "images" / "Tony_Blair").glob("*.jpg"))[5]
    capsys_out = tmp_path / "out.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["search", str(probe), "--gallery", str(g), "--stage2", "none",
                     "--json"]) == 0
    capsys_out.write_text(buf.getvalue())
    data = json.loads(buf.getvalue())
    assert data["probe_confidence"]["confidence"] > 0
    assert all(r["confidence"] > 0 and len(r["confidences"]) == 16 for r in data["results"])

    # switched off: no confidences, and a floor is refused with one line
    monkeypatch.setenv("FACERANK_URL", "off")
    with pytest.raises(InputError, match="no URL head"):
        C.refuse_below(0.5, fx.model_id)
    assert C.attach(pair, fx.model_id) == [None, None]
    assert np.isfinite(c_clean)
