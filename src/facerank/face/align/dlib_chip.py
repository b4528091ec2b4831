"""dlib-exact face chips in pure numpy (no dlib call at run time).

Reproduces `dlib.get_face_chip(img, shape, size, padding)`, i.e. dlib's
`get_face_chip_details` + `extract_image_chip` (dlib/image_transforms/interpolation.h):

1. A similarity transform (Umeyama least squares) maps dlib's mean-face template, scaled to the
   padded chip, onto the landmarks. dlib keeps only its angle and scale and turns it into a
   rectangle `rect` of side `size * scale` (dlib's inclusive-width convention, so the corner
   pixel centres are `size * scale - 1` apart) centred on the image of the chip centre.
2. Chip pixels (0, 0), (cols-1, 0), (0, rows-1) map onto the rotated corners of `rect`, so the
   sampling step is `(size*scale - 1) / (size - 1)` image pixels, not `scale`.
3. When `rect` is more than about twice the chip size, dlib samples from a `pyramid_down<2>`
   level (5-tap [1 4 6 4 1] integer filter, truncating /256) of a crop around the face, with
   `rect` mapped by `p/2 - (1.25, 0.75)` per level.
4. Bilinear interpolation in float64, truncated to uint8; samples whose 2x2 neighbourhood
   leaves the (cropped) source image are black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facerank.errors import InputError

# dlib's 5-point template (right eye outer, right eye inner, left eye outer, left eye inner, nose)
# in units of the unpadded face box.
__all__ = ["ARCFACE112", "ChipDetails", "check_landmarks", "chip_details", "chip_transform",
           "dlib5_from_points5", "extract_chip", "landmarks_to_chip", "mean_face_points5",
           "pyramid_down2"]


_MEAN_FACE5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)  # (5, 2)

# dlib's mean positions of the 68-point landmarks 17..67.
_MEAN_FACE68_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE68_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
_MEAN_FACE68 = np.stack([_MEAN_FACE68_X, _MEAN_FACE68_Y], axis=1)  # (51, 2), points 17..67
# dlib fits on 27..54 and 60..64: no jaw line, eyebrows (17..26) or lower lip (55..59, 65..67).
_USED68 = np.array([i for i in range(17, 68) if not (55 <= i <= 59 or i >= 65 or i <= 26)])


@dataclass(frozen=True)
class ChipDetails:
    """dlib's `chip_details`: an image rectangle (l, t, r, b), rotation angle and chip size."""

    rect: tuple[float, float, float, float]  # inclusive corner coordinates, as dlib's drectangle
    angle: float  # radians
    rows: int
    cols: int


def check_landmarks(landmarks: np.ndarray | None,
                    shapes: tuple[tuple[int, int], ...] = ((5, 2), (68, 2)),
                    where: str = "landmarks") -> np.ndarray:
    """Landmarks as finite float64 (N, 2) with N a dlib shape in `shapes`; otherwise an
    InputError naming `where`, the shape, or the first non-finite point."""
    if landmarks is None:
        raise InputError(f"{where}: needs {' or '.join(str(s[0]) for s in shapes)} landmarks, "
                         "got None")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape not in shapes:
        raise InputError(f"{where}: must have shape {' or '.join(map(str, shapes))} (dlib's "
                         f"{' or '.join(str(s[0]) for s in shapes)}-point landmarks), got "
                         f"{pts.shape}")
    bad = np.flatnonzero(~np.isfinite(pts).all(axis=1))
    if len(bad):
        raise InputError(f"{where}: landmark {int(bad[0])} is NaN/inf ({len(bad)} bad points); "
                         "was a face found?")
    return pts


def _template(n_parts: int, size: int, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """Template points in chip pixels (K, 2) and the landmark indices (K,) they pair with."""
    if n_parts == 5:
        mean, idx = _MEAN_FACE5, np.arange(5)
    else:
        mean, idx = _MEAN_FACE68[_USED68 - 17], _USED68
    return (padding + mean) / (2 * padding + 1) * float(size), idx


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Umeyama least-squares similarity src -> dst (both (K, 2)): returns m (2, 2), b (2,)."""
    n = len(src)
    mean_src = src.sum(axis=0) / n  # (2,)
    mean_dst = dst.sum(axis=0) / n
    ds, dd = src - mean_src, dst - mean_dst
    sigma_src = float((ds * ds).sum()) / n
    cov = dd.T @ ds / n  # (2, 2)
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(2)
    det_cov = np.linalg.det(cov)
    if det_cov < 0 or (det_cov == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        s[1 if d[1] < d[0] else 0] = -1.0
    r = u @ np.diag(s) @ vt
    c = float((d * s).sum()) / sigma_src if sigma_src != 0 else 1.0
    m = c * r
    return m, mean_dst - m @ mean_src


def _padding32(padding: float) -> float:
    # dlib.get_face_chip takes `float padding`: round like the Python binding does.
    return float(np.float32(padding))


def chip_details(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib's `get_face_chip_details(shape, size, padding)` for a (5, 2) or (68, 2) shape."""
    pts = check_landmarks(landmarks)
    if size < 1 or padding < 0:
        raise InputError(f"need size >= 1 and padding >= 0, got size={size}, padding={padding}")
    chip_pts, idx = _template(len(pts), size, _padding32(padding))
    m, b = _similarity(chip_pts, pts[idx])  # chip -> image
    px, py = m[0, 0], m[1, 0]  # image of the chip's x unit vector
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    half = np.array([size / 2.0, size / 2.0])
    cx, cy = m @ half + b
    w = size * scale - 1  # dlib's centered_drect: width counts pixels, corners are w-1 apart
    h = size * scale - 1
    return ChipDetails((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle, size, size)


def _rotate(center: tuple[float, float], p: tuple[float, float], angle: float) -> np.ndarray:
    """dlib's rotate_point: rotate p about center by angle (radians)."""
    sa, ca = math.sin(angle), math.cos(angle)
    x, y = p[0] - center[0], p[1] - center[1]
    return np.array([ca * x - sa * y + center[0], sa * x + ca * y + center[1]])


def _corners(rect: tuple[float, float, float, float], angle: float) -> list[np.ndarray]:
    """Rotated tl, tr, bl, br corners of a dlib drectangle (l, t, r, b)."""
    left, top, right, bottom = rect
    c = ((left + right) / 2.0, (top + bottom) / 2.0)
    pts = [(left, top), (right, top), (left, bottom), (right, bottom)]
    return [_rotate(c, p, angle) for p in pts]


def _corner_affine(rect: tuple[float, float, float, float], angle: float, rows: int,
                   cols: int) -> np.ndarray:
    """2x3 affine taking chip (0,0), (cols-1,0), (0,rows-1) to the rotated rect corners."""
    tl, tr, bl, _ = _corners(rect, angle)
    ex = (tr - tl) / max(cols - 1, 1)
    ey = (bl - tl) / max(rows - 1, 1)
    return np.array([[ex[0], ey[0], tl[0]], [ex[1], ey[1], tl[1]]])


def chip_transform(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """2x3 affine mapping chip (x, y) -> image (x, y), as dlib's chip for this shape defines it.

    This is the inverse of dlib's `get_mapping_to_chip(get_face_chip_details(...))`; dlib's
    pyramid path for large faces samples a blurred level with a half-pixel shift (see module
    docstring), but the nominal geometry is this matrix.
    """
    d = chip_details(landmarks, size, padding)
    return _corner_affine(d.rect, d.angle, d.rows, d.cols)


def landmarks_to_chip(landmarks: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Map (N, 2) image-coordinate points into chip coordinates (inverse of `transform`)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    t = np.asarray(transform, dtype=np.float64)
    if t.shape != (2, 3):
        raise InputError(f"transform must be a 2x3 affine matrix, got shape {t.shape}")
    m_inv = np.linalg.inv(t[:, :2])  # (2, 2)
    return (pts - t[:, 2]) @ m_inv.T  # (N, 2)


def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib's `pyramid_down<2>` on uint8 (H, W[, C]): [1 4 6 4 1]^2 filter, drop every other row
    and column, integer sum // 256. Output ((H-3)//2, (W-3)//2[, C]); empty if H or W <= 8."""
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + img.shape[2:], dtype=np.uint8)
    ho, wo = (h - 3) // 2, (w - 3) // 2
    x = img.astype(np.int32)
    taps = (1, 4, 6, 4, 1)
    # output column j is centred on input column 2j + 2, output row i on input row 2i + 2
    t = sum(k * x[:, o: o + 2 * wo - 1: 2] for o, k in enumerate(taps))  # (H, wo[, C])
    out = sum(k * t[o: o + 2 * ho - 1: 2] for o, k in enumerate(taps))  # (ho, wo[, C])
    return (out // 256).astype(np.uint8)


def _bilinear(src: np.ndarray, affine: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's transform_image + interpolate_bilinear: uint8 (rows, cols[, C]), black outside."""
    out_shape = (rows, cols) + src.shape[2:]
    h, w = src.shape[:2]
    if h == 0 or w == 0:
        return np.zeros(out_shape, dtype=np.uint8)
    c = np.arange(cols, dtype=np.float64)[None, :]  # (1, cols)
    r = np.arange(rows, dtype=np.float64)[:, None]  # (rows, 1)
    px = (affine[0, 0] * c + affine[0, 1] * r) + affine[0, 2]  # (rows, cols)
    py = (affine[1, 0] * c + affine[1, 1] * r) + affine[1, 2]
    left = np.floor(px)
    top = np.floor(py)
    valid = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)  # (rows, cols)
    lr = px - left
    tb = py - top
    li = np.clip(left, 0, max(w - 2, 0)).astype(np.intp)
    ti = np.clip(top, 0, max(h - 2, 0)).astype(np.intp)
    ri = np.minimum(li + 1, w - 1)
    bi = np.minimum(ti + 1, h - 1)
    f = src.astype(np.float64)
    tl, tr, bl, br = f[ti, li], f[ti, ri], f[bi, li], f[bi, ri]  # (rows, cols[, C])
    if src.ndim == 3:
        lr, tb = lr[..., None], tb[..., None]
    val = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    chip = np.clip(val, 0, 255).astype(np.uint8)  # dlib truncates (static_cast), clamps to range
    if src.ndim == 3:
        valid = valid[..., None]
    return np.where(valid, chip, np.uint8(0))


def _lround(v: float) -> int:
    """C's lround: nearest integer, halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _rect_down(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """pyramid_down<2>::rect_down: corners mapped by p/2 - (1.25, 0.75)."""
    left, top, right, bottom = rect
    xs = (left / 2.0 - 1.25, right / 2.0 - 1.25)
    ys = (top / 2.0 - 0.75, bottom / 2.0 - 0.75)
    return (min(xs), min(ys), max(xs), max(ys))


def _area(rect: tuple[float, float, float, float]) -> float:
    """drectangle::area with dlib's inclusive width (r - l + 1)."""
    left, top, right, bottom = rect
    if top > bottom or left > right:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def extract_chip(image: np.ndarray, landmarks: np.ndarray, size: int = 150,
                 padding: float = 0.25) -> np.ndarray:
    """`dlib.get_face_chip(image, shape, size, padding)` in numpy: uint8 (size, size, 3) chip.

    image: uint8 (H, W, 3) RGB (or (H, W) grey); landmarks: dlib's (5, 2) or (68, 2) (x, y).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise InputError(
            f"image must be uint8 (H, W, 3) RGB or (H, W) grey, got {img.dtype} {img.shape}"
        )
    d = chip_details(landmarks, size, padding)
    rows, cols = d.rows, d.cols
    n_out = rows * cols
    left, top, right, bottom = d.rect
    h, w = img.shape[:2]

    # dlib's fast path: no rotation and no scaling -> a plain (rounded) crop.
    if d.angle == 0 and rows == bottom - top + 1 and cols == right - left + 1:
        x0, y0 = _lround(left), _lround(top)
        chip = np.zeros((rows, cols) + img.shape[2:], dtype=np.uint8)
        ys, xs = slice(max(y0, 0), min(y0 + rows, h)), slice(max(x0, 0), min(x0 + cols, w))
        if ys.start < ys.stop and xs.start < xs.stop:
            chip[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = img[ys, xs]
        return chip

    # Pyramid depth and the crop (bounding box of the rotated rect, grown for filter borders).
    depth, grow = 0, 2.0
    r = _rect_down(d.rect)
    while _area(r) > n_out:
        r = _rect_down(r)
        depth += 1
        grow = grow * 2 + 2
    corners = np.array(_corners(d.rect, d.angle))  # (4, 2)
    bl_, bt_ = corners.min(axis=0) - grow
    br_, bb_ = corners.max(axis=0) + grow
    bl_, bt_ = max(bl_, 0.0), max(bt_, 0.0)
    br_, bb_ = min(br_, w - 1.0), min(bb_, h - 1.0)
    bx0, by0, bx1, by1 = _lround(bl_), _lround(bt_), _lround(br_), _lround(bb_)
    if bx0 > bx1 or by0 > by1:  # face entirely outside the image: dlib gives a black chip
        return np.zeros((rows, cols) + img.shape[2:], dtype=np.uint8)
    crop = img[by0: by1 + 1, bx0: bx1 + 1]

    # Which level to sample from, and the rect in that level's coordinates.
    rect = (left - bx0, top - by0, right - bx0, bottom - by0)
    level = -1
    while _area(_rect_down(rect)) > n_out:
        level += 1
        rect = _rect_down(rect)
    src = crop
    for _ in range(level + 1):
        src = pyramid_down2(src)
    return _bilinear(src, _corner_affine(rect, d.angle, rows, cols), rows, cols)


# ---- chips from five "ArcFace" points (eye centres, nose tip, mouth corners) -----------------

# insightface's ArcFace 112x112 template (`arcface_dst`), image left to right: the points a
# 112x112 ArcFace-aligned crop puts the eye centres, nose tip and mouth corners on.
ARCFACE112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                       [41.5493, 92.3655], [70.7299, 92.2041]])  # (5, 2)


def mean_face_points5() -> np.ndarray:
    """The same five points on dlib's mean face (units of the unpadded face box): eye centres
    (mean of iBUG 36..41 and 42..47), nose tip (30), mouth corners (48, 54) -> (5, 2)."""
    m = _MEAN_FACE68  # row i is iBUG point i + 17
    return np.stack([m[36 - 17:42 - 17].mean(axis=0), m[42 - 17:48 - 17].mean(axis=0),
                     m[30 - 17], m[48 - 17], m[54 - 17]])


def dlib5_from_points5(points5: np.ndarray) -> np.ndarray:
    """dlib 5-point landmarks (5, 2) whose dlib chip is the similarity that puts `points5`
    (eye centres, nose tip, mouth corners, image left to right) on dlib's mean face.

    The least-squares similarity mean_face_points5 -> points5 maps dlib's own 5-point template
    into the image; `extract_chip` on the result fits that template exactly, so the chip has the
    geometry of dlib's chips without running dlib's predictor (used for YuNet's points and for
    pre-aligned crops whose template points are known).
    """
    pts = np.asarray(points5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise InputError(f"points5 must be five finite (x, y) points, got shape {pts.shape}")
    m, b = _similarity(mean_face_points5(), pts)  # template units -> image
    return _MEAN_FACE5 @ m.T + b
