"""YuNet detection: checked model file, dlib-compatible landmarks, occluded photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerank.errors import ModelFileError

from .conftest import sample_every


@pytest.fixture(scope="module")
def yunet():
    from facerank.face.detect import FaceDetector

    return FaceDetector("yunet", policy="center", fallback="none")


def test_model_checksum_mismatch_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             lfw_root: Path) -> None:
    import facerank._util.paths as paths
    from facerank.cli.app import main
    from facerank.face.detect import FaceDetector

    cut = tmp_path / paths.YUNET_FILE
    cut.write_bytes(paths.yunet_model_path().read_bytes()[:50_000])
    monkeypatch.setattr(paths, "yunet_model_path", lambda: cut)
    with pytest.raises(ModelFileError, match="SHA-256") as e:
        FaceDetector("yunet")
    assert str(cut) in str(e.value) and "\n" not in str(e.value)
    face = lfw_root / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    assert main(["compare", str(face), str(face)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated or replaced" in err and str(cut) in err
    cut.unlink()
    with pytest.raises(ModelFileError, match="cannot read"):
        FaceDetector("yunet")


def test_yunet_matches_hog_landmarks_on_clean_lfw(yunet, lfw_images: list[Path]) -> None:
    """On clean photos the mapped YuNet box gives dlib's predictors what HOG's box gives."""
    from facerank.face.detect import FaceDetector
    from facerank.face.imageio import load_image

    hog = FaceDetector(policy="center", fallback="none")
    diffs = []
    for p in sample_every(lfw_images, 12):
        img = load_image(p)
        d = yunet.detect(img, str(p))
        assert d.source == "yunet" and d.score > 0.6
        assert d.points5[0, 0] < d.points5[1, 0] and d.points5[3, 0] < d.points5[4, 0]
        assert d.landmarks68.shape == (68, 2) and d.landmarks5.shape == (5, 2)
        try:
            h = hog.detect(img, str(p))
        except Exception:  # noqa: BLE001 - HOG misses a few LFW faces
            continue
        diffs.append(np.abs(d.landmarks5 - h.landmarks5).max())
    assert len(diffs) >= 8 and np.median(diffs) < 3.0, diffs


def test_config_ids_differ() -> None:
    from facerank.face.detect import FaceDetector

    ids = {FaceDetector("yunet").config_id, FaceDetector("yunet", align5="points").config_id,
           FaceDetector().config_id}
    assert len(ids) == 3


def test_yunet_finds_masked_and_sunglassed_photos(yunet, lfw_images: list[Path]) -> None:
    """Photo-level occluders (as lfw-mask-photo / lfw-sunglasses-photo draw them): YuNet finds
    the face where HOG mostly does not."""
    from facerank.eval.photo import occlude_photo
    from facerank.face.detect import FaceDetector
    from facerank.face.imageio import load_image

    hog = FaceDetector(policy="center", fallback="none", retry_upsample=False)
    found = {"yunet": 0, "hog": 0}
    n = 0
    for p in sample_every(lfw_images, 16):
        img = load_image(p)
        try:
            clean = hog.detect(img)
        except Exception:  # noqa: BLE001
            continue
        for kind in ("mask", "sunglasses"):
            occ = occlude_photo(kind, img, clean.landmarks68, 0, p.name)
            n += 1
            found["yunet"] += bool(yunet.detect_all(occ))
            found["hog"] += bool(hog.detect_all(occ))
    assert n >= 20
    assert found["yunet"] >= 0.9 * n and found["yunet"] > found["hog"], (found, n)


def test_tight_crop_uses_the_padded_retry(yunet, lfw_images: list[Path]) -> None:
    from facerank.face.imageio import load_image

    img = load_image(lfw_images[0])
    d = yunet.detect(img)
    x0, y0, x1, y1 = d.box.astype(int)
    tight = np.ascontiguousarray(img[max(y0, 0): y1, max(x0, 0): x1])
    got = yunet.detect(tight)
    assert got.source in ("yunet", "yunet-pad")
    assert (got.box[2] - got.box[0]) > 0.5 * tight.shape[1]
    # the padded retry reports boxes and points in the crop's own pixels
    padded = yunet._yunet_raw(tight, 0.25)
    plain = yunet._yunet_raw(np.ascontiguousarray(np.pad(tight, ((40, 40), (40, 40), (0, 0)))),
                             0.0)
    if len(padded) and len(plain):
        np.testing.assert_allclose(padded[0, 2:4], plain[0, 2:4], rtol=0.15)
        np.testing.assert_allclose(padded[0, :2], plain[0, :2] - 40, atol=0.15 * padded[0, 2])


def test_detection_stats_counts_fallbacks_and_wrong_faces() -> None:
    from facerank.eval.photo import detection_stats
    from facerank.face.features import FaceFeatures, FeatureSet

    def face(box: list[float], source: str) -> FaceFeatures:
        nan = np.full((68, 2), np.nan)
        return FaceFeatures(np.zeros(128, np.float32), np.zeros(128, np.float32), {},
                            np.zeros((5, 2)), nan, nan, np.array(box, float), 0.9, source)

    q = FeatureSet.stack([face([80, 80, 180, 180], "yunet"), face([0, 0, 40, 40], "yunet"),
                          face([80, 80, 180, 180], "fallback-center"),
                          face([80, 80, 180, 180], "hog-up1")])
    clean = np.tile([70.0, 70.0, 190.0, 190.0], (4, 1))
    s = detection_stats(q, clean)
    assert s["detected"] == 0.75 and s["found"] == 0.5
    assert s["sources"] == {"yunet": 2, "fallback-center": 1, "hog-up1": 1}
