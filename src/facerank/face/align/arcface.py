"""ArcFace 112x112 alignment from 5 points, identical to `cv2.FaceRecognizerSF.alignCrop`.

OpenCV's alignCrop (modules/objdetect/src/face_recognize.cpp) fits a least-squares similarity
(Umeyama) from the five detected points (eye centres, nose tip, mouth corners; image
left-to-right, i.e. YuNet's order) onto the ArcFace template, with two quirks reproduced here so
the crops are bit-identical: means and de-meaned points are computed in float32, the template
mean is the hard-coded (56.0262, 71.9008) rather than the template's own mean, and each product
is taken in float32 before being summed in float64. The crop is `cv2.warpAffine(..., (112, 112),
INTER_LINEAR)` with a black border.
"""

from __future__ import annotations

import cv2
import numpy as np

from facerank.errors import InputError

__all__ = ["ARCFACE_FACE_BOX", "ARCFACE_SIZE", "ARCFACE_TEMPLATE", "arcface_chip",
           "arcface_chip_transform", "arcface_matrix"]


ARCFACE_SIZE = 112
# The ArcFace template (insightface `arcface_dst`) as OpenCV writes it, float32.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float32)  # (5, 2)
_TEMPLATE_MEAN = np.array([56.0262, 71.9008], dtype=np.float32)


def _check_points(points5: np.ndarray) -> np.ndarray:
    pts = np.asarray(points5, dtype=np.float64)
    if pts.shape != (5, 2):
        raise InputError(f"ArcFace alignment needs (5, 2) points, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise InputError("ArcFace alignment: the 5 points contain NaN or infinite coordinates")
    return pts.astype(np.float32)


def arcface_matrix(points5: np.ndarray) -> np.ndarray:
    """(5, 2) image points -> 2x3 float64 affine mapping image (x, y) to the 112 chip."""
    src = _check_points(points5)  # (5, 2) float32
    mean = np.zeros(2, np.float32)
    for i in range(5):  # sequential float32 sum, as the C++ code does
        mean = mean + src[i]
    mean = mean / np.float32(5)
    src_d = src - mean  # float32
    dst_d = ARCFACE_TEMPLATE - _TEMPLATE_MEAN  # float32
    a = np.zeros((2, 2))
    for r in range(2):
        for c in range(2):
            a[r, c] = sum(float(dst_d[i, r] * src_d[i, c]) for i in range(5)) / 5
    d = np.array([1.0, 1.0])
    if a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0] < 0:
        d[1] = -1.0
    u, s, vt = np.linalg.svd(a)
    rank = int((s > s.max() * 2 * np.finfo(np.float32).tiny).sum())
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) <= 0:
        t = u @ np.diag([d[0], -1.0]) @ vt
    elif rank == 1:
        t = u @ vt
    else:
        t = u @ np.diag(d) @ vt
    var = sum(float(src_d[i, 0] * src_d[i, 0]) for i in range(5)) / 5 + sum(
        float(src_d[i, 1] * src_d[i, 1]) for i in range(5)) / 5
    scale = 1.0 / var * float(s @ d)
    ts = t @ mean.astype(np.float64)
    out = np.zeros((2, 3))
    out[:, :2] = t * scale
    out[:, 2] = _TEMPLATE_MEAN.astype(np.float64) - scale * ts
    return out


def arcface_chip(image: np.ndarray, points5: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) image + (5, 2) points -> uint8 (112, 112, 3) aligned crop."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    return cv2.warpAffine(img, arcface_matrix(points5), (ARCFACE_SIZE, ARCFACE_SIZE),
                          flags=cv2.INTER_LINEAR)


def arcface_chip_transform(points5: np.ndarray) -> np.ndarray:
    """2x3 affine mapping chip (x, y) -> image (x, y) (the inverse of `arcface_matrix`), in the
    convention of `facerank.face.align.dlib_chip.chip_transform`."""
    return cv2.invertAffineTransform(arcface_matrix(points5))


def _arcface_face_box() -> tuple[float, float, float, float]:
    """Where dlib's face box (the unit square its chip template is defined on) falls in the
    ArcFace chip: the mean face's 5 points (from dlib's 68-point mean face, in that unit
    square) are fitted onto the ArcFace template and the square's corners mapped through."""
    from facerank.face.align.dlib_chip import _MEAN_FACE68

    m68 = np.full((68, 2), np.nan)
    m68[17:] = _MEAN_FACE68
    pts = np.stack([m68[36:42].mean(0), m68[42:48].mean(0), m68[30], m68[48], m68[54]])
    # work at 100x so float32 rounding in the fit is negligible
    m = arcface_matrix(pts * 100.0)
    corners = np.array([[0, 0], [100, 100]], dtype=np.float64) @ m[:, :2].T + m[:, 2]
    x0, y0 = corners[0]
    x1, y1 = corners[1]
    return float(x0), float(y0), float(x1), float(y1)


#: dlib's face box in ArcFace chip pixels, ~ (21.8, 35.5, 90.4, 104.2): the box the 68-point
#: predictor is run on when landmarks are found again on edited (occluded) chips.
ARCFACE_FACE_BOX = _arcface_face_box()
