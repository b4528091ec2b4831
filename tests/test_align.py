"""`facerank.face.align.dlib_chip` against `dlib.get_face_chip` itself, pixel for pixel, on
real LFW faces."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facerank._util.paths import DLIB_SHAPE5, DLIB_SHAPE68, bundled_model
from facerank.errors import InputError
from facerank.face.align.dlib_chip import (
    chip_details,
    chip_transform,
    extract_chip,
    landmarks_to_chip,
    pyramid_down2,
)
from tests.conftest import sample_every

dlib = pytest.importorskip("dlib")

N_SAMPLE = 240  # images tried; HOG finds a face in nearly all of them
MIN_FACES = 200
MAX_DIFF = 1  # grey levels
MIN_IDENTICAL = 0.999  # fraction of pixels with all channels identical


@dataclass
class Face:
    name: str
    image: np.ndarray  # (250, 250, 3) uint8 RGB
    rect: Any  # dlib.rectangle from the HOG detector
    shape: Any  # dlib.full_object_detection, 5 points
    landmarks: np.ndarray  # (5, 2) float


def _points(shape: Any) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # (N, 2)


def _shape_from(points: np.ndarray, rect: Any) -> Any:
    """A dlib shape with integer points (as dlib's predictors give) from (N, 2) coordinates."""
    pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
    return dlib.full_object_detection(rect, pts)


def _stats(ours: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """(max abs difference, fraction of pixels identical in every channel)."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    same = diff == 0 if diff.ndim == 2 else (diff == 0).all(axis=-1)
    return int(diff.max()), float(same.mean())


def _assert_matches(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    max_diff, identical = _stats(ours, ref)
    assert max_diff <= MAX_DIFF, f"{what}: max diff {max_diff}"
    assert identical >= MIN_IDENTICAL, f"{what}: only {identical:.4%} identical"


@pytest.fixture(scope="module")
def predictor5() -> Any:
    return dlib.shape_predictor(str(bundled_model(DLIB_SHAPE5)))


@pytest.fixture(scope="module")
def faces(lfw_images: list[Path], predictor5: Any) -> list[Face]:
    """HOG + 5-point shapes on every k-th image of sorted LFW (images with no face skipped)."""
    det = dlib.get_frontal_face_detector()
    out = []
    for f in sample_every(lfw_images, N_SAMPLE):
        img = dlib.load_rgb_image(str(f))
        dets = det(img, 0)
        if not dets:
            continue
        shape = predictor5(img, dets[0])
        out.append(Face(f.name, img, dets[0], shape, _points(shape)))
    return out


def test_chips_equal_dlib_on_lfw(faces: list[Face]) -> None:
    assert len(faces) >= MIN_FACES, f"only {len(faces)} faces found"
    total_px = total_same = worst = 0
    for face in faces:
        ref = dlib.get_face_chip(face.image, face.shape, 150, 0.25)
        ours = extract_chip(face.image, face.landmarks, 150, 0.25)
        assert ours.shape == (150, 150, 3)
        max_diff, identical = _stats(ours, ref)
        assert max_diff <= MAX_DIFF and identical >= MIN_IDENTICAL, (face.name, max_diff, identical)
        worst = max(worst, max_diff)
        total_px += 150 * 150
        total_same += round(identical * 150 * 150)
    assert worst <= MAX_DIFF
    assert total_same / total_px >= MIN_IDENTICAL


def test_chip_details_equal_dlib(faces: list[Face]) -> None:
    for face in faces[:50]:
        ref = dlib.get_face_chip_details(face.shape, 150, 0.25)
        ours = chip_details(face.landmarks, 150, 0.25)
        r = ref.rect
        expected = (r.left(), r.top(), r.right(), r.bottom())
        assert np.allclose(ours.rect, expected, rtol=0, atol=1e-9), face.name
        assert ours.angle == pytest.approx(ref.angle, abs=1e-12)
        assert (ours.rows, ours.cols) == (ref.rows, ref.cols) == (150, 150)


def test_chip_transform_and_landmarks_to_chip(faces: list[Face]) -> None:
    for face in faces[:20]:
        t = chip_transform(face.landmarks)  # (2, 3) chip -> image
        d = dlib.get_face_chip_details(face.shape, 150, 0.25)
        # chip (0, 0) and (149, 149) land on the rotated corners of dlib's rect
        r = d.rect
        cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
        ca, sa = math.cos(d.angle), math.sin(d.angle)
        pairs = [((0, 0), (r.left(), r.top())), ((149, 149), (r.right(), r.bottom()))]
        for chip_pt, (x, y) in pairs:
            rx, ry = x - cx, y - cy
            corner = (ca * rx - sa * ry + cx, sa * rx + ca * ry + cy)
            assert np.allclose(t @ [*chip_pt, 1.0], corner, atol=1e-9)
        # round trip, and the eyes/nose land near dlib's template on the chip
        on_chip = landmarks_to_chip(face.landmarks, t)  # (5, 2)
        back = on_chip @ t[:, :2].T + t[:, 2]
        assert np.allclose(back, face.landmarks, atol=1e-9)
        template = (0.25 + np.array([[0.8596, 0.2135], [0.6461, 0.2290], [0.1206, 0.2137],
                                     [0.3341, 0.2291], [0.4901, 0.6278]])) / 1.5 * 150
        assert np.abs(on_chip - template).max() < 12, face.name


@pytest.mark.parametrize("factor", [4.0, 6.0, 9.0])
def test_pyramid_path_matches_dlib(faces: list[Face], predictor5: Any, factor: float) -> None:
    """Upscaled LFW images: the chip rect is >= 2x the chip, so dlib samples a pyramid level."""
    for face in faces[:: max(1, len(faces) // 6)][:6]:
        img = cv2.resize(face.image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        r = face.rect
        rect = dlib.rectangle(*(round(v * factor) for v in (r.left(), r.top(), r.right(),
                                                             r.bottom())))
        shape = predictor5(img, rect)
        lm = _points(shape)
        left, _, right, _ = chip_details(lm).rect
        assert right - left + 1 >= 300, "face too small to take dlib's pyramid path"
        ref = dlib.get_face_chip(img, shape, 150, 0.25)
        _assert_matches(extract_chip(img, lm, 150, 0.25), ref, f"{face.name} x{factor}")


def test_68_point_shape(faces: list[Face]) -> None:
    sp68 = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE68)))
    for face in faces[:: max(1, len(faces) // 30)][:30]:
        shape = sp68(face.image, face.rect)
        lm = _points(shape)
        assert lm.shape == (68, 2)
        ref = dlib.get_face_chip(face.image, shape, 150, 0.25)
        _assert_matches(extract_chip(face.image, lm, 150, 0.25), ref, face.name)
        d = dlib.get_face_chip_details(shape, 150, 0.25)
        assert chip_details(lm).angle == pytest.approx(d.angle, abs=1e-12)


@pytest.mark.parametrize(
    "angle,mirror", [(35.0, False), (-90.0, False), (180.0, False), (0.0, True), (20.0, True)]
)
def test_rotated_and_mirrored_faces(faces: list[Face], angle: float, mirror: bool) -> None:
    """Rotated images (large chip angles) and mirrored shapes (Umeyama's reflection branch)."""
    for face in faces[:8]:
        h, w = face.image.shape[:2]
        a = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)  # (2, 3)
        img = cv2.warpAffine(face.image, a, (w, h))
        lm = face.landmarks @ a[:, :2].T + a[:, 2]
        if mirror:
            img = np.ascontiguousarray(img[:, ::-1])
            lm[:, 0] = w - 1 - lm[:, 0]
        shape = _shape_from(lm, face.rect)
        lm = _points(shape)
        ref = dlib.get_face_chip(img, shape, 150, 0.25)
        _assert_matches(extract_chip(img, lm, 150, 0.25), ref, f"{face.name} {angle} {mirror}")


def test_face_at_border_and_outside(faces: list[Face]) -> None:
    """Samples outside the image are black, as in dlib, including a face fully off the image."""
    for face in faces[:8]:
        img = np.ascontiguousarray(face.image[:, 110:])
        lm = face.landmarks - [110, 0]
        shape = _shape_from(lm, face.rect)
        ref = dlib.get_face_chip(img, shape, 150, 0.25)
        ours = extract_chip(img, lm, 150, 0.25)
        assert (ref == 0).all(axis=-1).mean() > 0.05  # a black band where the image ends
        _assert_matches(ours, ref, face.name)
    far = faces[0].landmarks + [2000, 0]
    ref = dlib.get_face_chip(faces[0].image, _shape_from(far, faces[0].rect), 150, 0.25)
    ours = extract_chip(faces[0].image, far)
    assert not ref.any() and not ours.any()


@pytest.mark.parametrize("size,padding", [(200, 0.2), (151, 0.1), (80, 0.4), (40, 0.0)])
def test_other_sizes_and_paddings(faces: list[Face], size: int, padding: float) -> None:
    for face in faces[:10]:
        ref = dlib.get_face_chip(face.image, face.shape, size, padding)
        ours = extract_chip(face.image, face.landmarks, size, padding)
        assert ours.shape == (size, size, 3)
        _assert_matches(ours, ref, f"{face.name} {size} {padding}")


def test_grey_image(faces: list[Face]) -> None:
    for face in faces[:10]:
        grey = np.ascontiguousarray(face.image[..., 1])
        ref = dlib.get_face_chip(grey, face.shape, 150, 0.25)
        _assert_matches(extract_chip(grey, face.landmarks), ref, face.name)


def test_pyramid_down2_equals_dlib() -> None:
    rng = np.random.default_rng(0)
    pyr = dlib.pyramid_down(2)
    for shape in [(37, 41, 3), (64, 9, 3), (100, 101), (9, 9)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(pyramid_down2(img), pyr(img)), shape
    assert pyramid_down2(np.zeros((8, 50, 3), np.uint8)).size == 0


def test_bad_inputs() -> None:
    img = np.zeros((50, 50, 3), np.uint8)
    lm = np.array([[30, 20], [25, 20], [10, 20], [15, 20], [20, 30]], float)
    assert extract_chip(img, lm).shape == (150, 150, 3)
    with pytest.raises(InputError):
        extract_chip(img, lm[:4])
    with pytest.raises(InputError):
        extract_chip(img.astype(np.float32), lm)
    with pytest.raises(InputError):
        extract_chip(img[..., :2], lm)
    with pytest.raises(InputError):
        chip_transform(np.full((5, 2), np.nan))
    with pytest.raises(InputError):
        landmarks_to_chip(lm, np.eye(3))
