"""Any decodable image is safe: random and bit-flipped images go through detect -> align ->
embed for every detector and both backbones, and nothing but a facerank error escapes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facerank.errors import FacerankError

FUZZ_DIR = Path(__file__).resolve().parents[2] / "shared" / "fuzz"
DETECTORS = ("yunet", "hog", "mmod")
BACKBONES = ("dlib", "sface")
FAST = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

_EXTRACTORS: dict[tuple[str, str], object] = {}


def _extractor(detector: str, backbone: str):
    from facerank.face.features import make_extractor

    key = (detector, backbone)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = make_extractor(detector, "largest", "none", cache=False,
                                          backbone=backbone)
    return _EXTRACTORS[key]


@pytest.fixture(scope="module")
def face_jpeg(lfw_root: Path) -> bytes:
    """One LFW photo re-encoded small (JPEG, 125 x 125), so each example runs fast."""
    img = Image.open(lfw_root / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    buf = io.BytesIO()
    img.convert("RGB").resize((125, 125)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _run(detector: str, backbone: str, data: bytes) -> None:
    """decode -> detect -> align -> embed; a facerank error is an allowed answer."""
    from facerank.face.imageio import load_image

    try:
        image = load_image(data, name="fuzz")
        f = _extractor(detector, backbone).extract(image, "fuzz")
    except FacerankError as e:
        assert "\n" not in str(e)
        return
    assert np.isfinite(f.embedding).all() and abs(float(np.linalg.norm(f.embedding)) - 1) < 1e-3


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


random_images = st.builds(
    lambda h, w, seed, fmt, flat: _encode(
        np.full((h, w, 3), seed % 256, np.uint8) if flat
        else np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), fmt),
    st.integers(1, 160), st.integers(1, 160), st.integers(0, 2**32 - 1),
    st.sampled_from(["PNG", "JPEG"]), st.booleans())

flips = st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), min_size=1, max_size=12)


def _flip(data: bytes, where: list[tuple[float, int]]) -> bytes:
    """Flip one bit at each (relative position, bit) past the first 2 bytes (JPEG SOI)."""
    b = bytearray(data)
    for pos, bit in where:
        i = 2 + min(len(b) - 3, int(pos * (len(b) - 2)))
        b[i] ^= 1 << bit
    return bytes(b)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("detector", DETECTORS)
def test_random_images_never_crash(detector: str, backbone: str) -> None:
    @FAST
    @given(random_images)
    def check(data: bytes) -> None:
        _run(detector, backbone, data)

    check()


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("detector", DETECTORS)
def test_bit_flipped_face_never_crashes(detector: str, backbone: str, face_jpeg: bytes) -> None:
    @FAST
    @given(flips)
    def check(where: list[tuple[float, int]]) -> None:
        _run(detector, backbone, _flip(face_jpeg, where))

    check()
    _run(detector, backbone, face_jpeg)  # the unflipped photo still works


def test_yunet_non_finite_rows_are_no_face(monkeypatch: pytest.MonkeyPatch) -> None:
    """YuNet rows with NaN, infinite, empty or far-off boxes are dropped, not converted."""
    from facerank.face.detect import FaceDetector

    det = FaceDetector("yunet", policy="largest", fallback="none")
    good = np.array([20, 30, 40, 50, 30, 45, 50, 45, 40, 55, 32, 65, 48, 65, 0.9], np.float32)
    bad = [good.copy() for _ in range(4)]
    bad[0][0] = np.nan
    bad[1][5] = np.inf
    bad[2][2] = 0.0
    bad[3][1] = 1e30
    rows = np.stack([*bad, good])

    class Fake:
        def setInputSize(self, size):  # noqa: N802 - OpenCV's name
            pass

        def detect(self, bgr):
            return 1, rows.copy()

    monkeypatch.setattr(det, "_yunet", Fake())
    image = np.zeros((120, 100, 3), np.uint8)
    found = det.detect_all(image)
    assert len(found) == 1 and np.allclose(found[0].box, [20, 30, 60, 80])
    rows[:] = bad[0]
    assert det.detect_all(image) == []


def test_fuzz_regression_files(capsys: pytest.CaptureFixture[str]) -> None:
    """Inputs that once crashed (../shared/fuzz): one-line error or a result, exit 0 or 2."""
    from facerank.cli.app import main

    files = sorted(FUZZ_DIR.glob("*.jpg")) if FUZZ_DIR.is_dir() else []
    if not files:
        pytest.skip(f"no fuzz regression files in {FUZZ_DIR} (kept outside the repository)")
    for f in files:
        for backbone in BACKBONES:
            rc = main(["compare", str(f), str(f), "--backbone", backbone])
            err = capsys.readouterr().err.strip()
            assert rc in (0, 2), (f, err)
            if rc == 2:
                assert len(err.splitlines()) == 1 and str(f) in err, err
