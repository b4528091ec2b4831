"""Pre-aligned crops (--aligned): mapped from their template, not detected; fallbacks named."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facerank.errors import InputError

from .conftest import sample_every


def _arcface_crop(image: np.ndarray, points5: np.ndarray, size: int = 112) -> np.ndarray:
    """Cut an insightface-style crop: similarity from the photo's 5 points to the template."""
    from facerank.face.align.dlib_chip import ARCFACE112, _similarity

    m, b = _similarity(points5, ARCFACE112 * size / 112)  # photo -> crop
    return cv2.warpAffine(image, np.hstack([m, b[:, None]]), (size, size),
                          flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def extractors(backbone):
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor

    det = FaceDetector(policy="center", fallback="none")
    return {a: FeatureExtractor(backbone=backbone, detector=det, cache=False, aligned=a)
            for a in ("none", "arcface112", "dlib150", "auto")}


def test_arcface112_crop_matches_the_detected_photo(extractors, lfw_images: list[Path]) -> None:
    """Tolerance: cosine >= 0.97 and dlib distance <= 0.35 per image (dlib's same-person rule is
    < 0.6), median cosine >= 0.985; measured 0.977-0.998 / 0.08-0.31 on ten LFW photos."""
    from facerank.face.imageio import load_image

    cos, dist = [], []
    for p in sample_every(lfw_images, 6):
        img = load_image(p)
        a = extractors["none"].align(img)
        ref = extractors["none"].extract(img)
        crop = _arcface_crop(img, a.detection.points5)
        got = extractors["arcface112"].extract(crop)
        assert got.det_source == "aligned-arcface112"
        assert extractors["auto"].extract(crop).det_source == "aligned-arcface112"
        cos.append(float(ref.embedding @ got.embedding))
        dist.append(float(np.linalg.norm(ref.descriptor - got.descriptor)))
    assert min(cos) >= 0.97 and max(dist) <= 0.35 and np.median(cos) >= 0.985, (cos, dist)


def test_dlib150_chip_is_used_as_is(extractors, lfw_images: list[Path]) -> None:
    from facerank.face.imageio import load_image

    img = load_image(lfw_images[100])
    a = extractors["none"].align(img)
    ref = extractors["none"].extract(img)
    got = extractors["dlib150"].extract(a.chip)
    assert got.det_source == "aligned-dlib150"
    np.testing.assert_allclose(got.descriptor, ref.descriptor, atol=1e-5)
    big = cv2.resize(a.chip, (300, 300), interpolation=cv2.INTER_CUBIC)
    got2 = extractors["dlib150"].extract(big)
    assert float(ref.embedding @ got2.embedding) > 0.99
    assert np.isfinite(got2.landmarks68).all() and got2.landmarks68.max() > 150


def test_auto_and_bad_modes(extractors) -> None:
    from facerank.face.align.prealigned import aligned_kind
    from facerank.face.features import FeatureExtractor

    square = np.zeros((150, 150, 3), np.uint8)
    assert aligned_kind(square, "auto") == "dlib150"
    assert aligned_kind(np.zeros((112, 112, 3), np.uint8), "auto") == "arcface112"
    assert aligned_kind(np.zeros((250, 250, 3), np.uint8), "auto") is None
    assert aligned_kind(square, "none") is None
    with pytest.raises(InputError, match="square"):
        aligned_kind(np.zeros((120, 100, 3), np.uint8), "arcface112", "x.png")
    with pytest.raises(InputError, match="--aligned 'chip'"):
        FeatureExtractor(backbone=extractors["none"].backbone, aligned="chip", cache=False)


def test_cli_names_alignment_and_fallback(tmp_path: Path, lfw_images: list[Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from facerank.cli.app import main
    from facerank.face.detect import FaceDetector
    from facerank.face.imageio import load_image

    img = load_image(lfw_images[200])
    d = FaceDetector(policy="center", fallback="none").detect(img)
    crop = tmp_path / "crop.png"
    Image.fromarray(_arcface_crop(img, d.points5)).save(crop)
    assert main(["compare", str(crop), str(lfw_images[200]), "--aligned", "auto"]) == 0
    out = capsys.readouterr().out
    assert "pre-aligned crop (arcface112)" in out and "same person" in out
    # a uniform picture has no face: with the central-box fallback the output says so
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(blank)
    assert main(["compare", str(blank), str(lfw_images[200]), "--no-face", "center"]) == 0
    assert "no face detected: center box used (fallback)" in capsys.readouterr().out
    assert main(["compare", str(lfw_images[200]), str(crop), "--aligned", "dlib150"]) == 0
    assert "pre-aligned crop (dlib150)" in capsys.readouterr().out  # 250x250 resized as a chip
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((100, 140, 3), 128, np.uint8)).save(wide)
    assert main(["compare", str(wide), str(crop), "--aligned", "arcface112"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "square" in err and "wide.png" in err


def test_web_upload_aligned_crop(extractors, lfw_images: list[Path], lfw_root: Path,
                                 tmp_path: Path) -> None:
    """The page's `aligned` choice reaches the extractor; the probe says how it was found."""
    import io

    from fastapi.testclient import TestClient

    from facerank.face.imageio import load_image
    from facerank.gallery import StoredGallery
    from facerank.web.app import create_app

    people = ("Colin_Powell", "Tony_Blair")
    files = [f for n in people for f in sorted((lfw_root / "images" / n).glob("*.jpg"))[1:3]]
    fx = extractors["none"]
    with StoredGallery.create(tmp_path / "g", fx) as g:
        g.add_files(files, [f.parent.name for f in files], progress=False)
    probe = lfw_root / "images" / people[0] / f"{people[0]}_0001.jpg"
    img = load_image(probe)
    buf = io.BytesIO()
    Image.fromarray(_arcface_crop(img, fx.align(img).detection.points5)).save(buf, "PNG")
    client = TestClient(create_app(tmp_path / "g", stage2="none", extractor=fx))
    resp = client.post("/api/search?k=2&aligned=auto&explain=false",
                       files={"file": ("crop.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["probe"]["det_source"] == "aligned-arcface112"
    assert data["results"][0]["identity"] == people[0]
    bad = client.post("/api/search?aligned=chip",
                      files={"file": ("crop.png", buf.getvalue(), "image/png")})
    assert bad.status_code >= 400 and "--aligned 'chip'" in bad.json()["error"]
