"""Seeded occluded queries on aligned chips: random crop, face mask, sunglasses (DESIGN.md §4).

Each image gets its own random stream derived from (seed, kind, image id) through SHA-256, so
an image's occlusion does not depend on which other images are in the batch, nor on Python's
randomised `hash()`.

    crop        a random 70 % x 70 % window resized back to the chip (DeepFace-EMD's LFW-crop)
    mask        a face mask from the nose bridge over the cheeks to below the chin, following
                the jaw landmarks; seeded colour (white, surgical blue, black, grey, striped,
                dotted), top edge (rounded or pointed over the nose), pleats and ear straps
    sunglasses  two dark lenses sized from each eye's landmarks (ellipse, rounded rectangle or
                aviator), a bridge, temple arms, an optional rim; seeded tint and frame colour
    lowres      down-scaled to a random 16-40 px and back (lowres24: exactly 24 px, lfw-lowres)
    blur        Gaussian blur, sigma 1-4 px;  jpeg  JPEG round trip at quality 5-30

Landmarks are dlib's 68 points (iBUG-300W order) in chip (x, y) pixels. Drawing is anti-aliased:
each shape is rasterised with `cv2.LINE_AA` at 1/16 pixel into a coverage map and composited;
pixels outside every shape are returned bit-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from facerank.errors import InputError
from facerank.face.align.dlib_chip import check_landmarks

#: Bump when any generator's output changes for the same (seed, kind, id); cached occluded
#: query sets should include it in their key.
VERSION = 2

_SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 pixel
MASK_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 232),
    "surgical": (140, 190, 222),
    "black": (30, 30, 33),
    "grey": (122, 125, 130),
    "striped": (40, 60, 120),  # base; stripes of a second colour are drawn over it
    "dotted": (180, 40, 50),
}
MASK_WEIGHTS = np.array([0.2, 0.25, 0.2, 0.15, 0.1, 0.1])  # plain masks are the common case
PATTERN_COLOURS = ((238, 238, 238), (230, 200, 60), (20, 20, 20), (200, 120, 160))
LENS_TINTS = ((12, 12, 14), (45, 30, 18), (20, 38, 26), (14, 24, 46), (48, 48, 50))
FRAME_COLOURS = ((15, 15, 15), (185, 150, 70), (170, 170, 176), (80, 50, 30))
LENS_SHAPES = ("ellipse", "rounded", "aviator")


# ---- helpers -------------------------------------------------------------------------------




def _coverage(shape: tuple[int, int], draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """(H, W) float32 coverage in [0, 1] of what `draw(layer)` paints with value 255."""
    layer = np.zeros(shape, np.uint8)
    draw(layer)
    return layer.astype(np.float32) / 255.0


def _fix(points: np.ndarray) -> np.ndarray:
    """(K, 2) float xy -> int32 points in cv2's `shift` sub-pixel units."""
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _poly_cov(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """(H, W) anti-aliased coverage of a filled polygon (K, 2) xy."""
    return _coverage(shape, lambda m: cv2.fillPoly(m, [_fix(poly)], 255, cv2.LINE_AA, _SHIFT))


def _line_cov(shape: tuple[int, int], lines: Sequence[np.ndarray], thickness: int) -> np.ndarray:
    """(H, W) anti-aliased coverage of open polylines, each (K, 2) xy."""
    pts = [_fix(p) for p in lines]
    return _coverage(shape, lambda m: cv2.polylines(m, pts, False, 255, thickness, cv2.LINE_AA,
                                                    _SHIFT))


def _over(base: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Composite `colour` ((3,) or (H, W, 3)) over float `base` (H, W, 3) with (H, W) alpha."""
    a = alpha[..., None]
    return base * (1.0 - a) + np.asarray(colour, np.float32) * a


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _jitter(colour: Sequence[int], rng: np.random.Generator, amount: float) -> np.ndarray:
    """(3,) float32 colour with seeded per-channel jitter of +-amount."""
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    """(n, 2) points of the quadratic Bezier p0 -> p2 with control point p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _chaikin(poly: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Closed polygon (K, 2) with its corners cut `rounds` times (rounded outline)."""
    for _ in range(rounds):
        nxt = np.roll(poly, -1, axis=0)
        poly = np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], 1).reshape(-1, 2)
    return poly


def _interp_points(pts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Points at fractional indices `idx` (M,) along the polyline pts (K, 2)."""
    k = np.arange(len(pts))
    return np.stack([np.interp(idx, k, pts[:, 0]), np.interp(idx, k, pts[:, 1])], 1)


# ---- crop ----------------------------------------------------------------------------------


def crop_resize(chip: np.ndarray, rng: np.random.Generator, frac: float = 0.7) -> np.ndarray:
    """A random frac x frac window (uniform position) of the chip, resized back (INTER_LINEAR)."""
    if not 0.0 < frac <= 1.0:
        raise InputError(f"crop fraction must be in (0, 1], got {frac}")
    h, w = chip.shape[:2]
    ch, cw = int(round(h * frac)), int(round(w * frac))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return cv2.resize(chip[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def _crop(chip: np.ndarray, landmarks68: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """`crop_resize` with the common (chip, landmarks, rng) signature; landmarks are unused."""
    return crop_resize(chip, rng)


# ---- mask ----------------------------------------------------------------------------------


def _mask_texture(name: str, colour: np.ndarray, hw: tuple[int, int], centre: np.ndarray,
                  half_w: float, top: float, bottom: float,
                  rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 fabric: base colour, pattern or pleats, and a soft rounded shading."""
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    tex = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    scale = max(half_w, 1.0)
    if name == "striped":
        period = scale * float(rng.uniform(0.16, 0.26))
        angle = float(rng.choice([0.0, np.pi / 4, -np.pi / 4]))
        phase = (xs * np.sin(angle) + ys * np.cos(angle)) / period
        # anti-aliased square wave: distance to the stripe edge in pixels, clipped to [0, 1]
        edge = (np.abs((phase % 1.0) - 0.5) - 0.25) * period
        on = np.clip(edge + 0.5, 0.0, 1.0)
        second = _jitter(PATTERN_COLOURS[int(rng.integers(len(PATTERN_COLOURS)))], rng, 8)
        tex = _over(tex, on, second)
    elif name == "dotted":
        period = scale * float(rng.uniform(0.22, 0.32))
        dx = (xs - centre[0]) / period
        dy = (ys - top) / period
        dx = dx + 0.5 * (np.round(dy) % 2)  # staggered rows
        dist = np.hypot(dx - np.round(dx), dy - np.round(dy)) * period  # px to nearest dot
        on = np.clip(0.28 * period - dist + 0.5, 0.0, 1.0)
        second = _jitter(PATTERN_COLOURS[int(rng.integers(len(PATTERN_COLOURS)))], rng, 8)
        tex = _over(tex, on, second)
    elif name in ("surgical", "white"):  # three horizontal pleats, slightly darker
        span = bottom - top
        for f in (0.30, 0.48, 0.66):
            y = top + f * span + float(rng.uniform(-0.03, 0.03)) * span
            band = np.clip(1.0 - np.abs(ys - y) / 1.2, 0.0, 1.0) * 0.35
            tex = _over(tex, band, colour * 0.72)
    # rounded look: darker towards the sides and the bottom
    u = np.clip((xs - centre[0]) / scale, -1.0, 1.0)
    v = np.clip((ys - top) / max(bottom - top, 1.0), 0.0, 1.0)
    shade = 1.0 - 0.22 * u**2 - 0.08 * v**2  # (H, W)
    return tex * shade[..., None]


def draw_mask(chip: np.ndarray, landmarks68: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face mask from the nose bridge over cheeks, nose, mouth and chin (68 chip landmarks)."""
    lm = check_landmarks(landmarks68, ((68, 2),), "mask")
    hw = chip.shape[:2]
    jaw = lm[0:17]  # (17, 2) right ear (image left) .. chin (8) .. left ear
    face_w = float(np.linalg.norm(lm[16] - lm[0]))
    face_h = float(lm[8, 1] - lm[27, 1])
    centre = lm[30].copy()  # nose tip

    name = list(MASK_COLOURS)[int(rng.choice(len(MASK_COLOURS), p=MASK_WEIGHTS))]
    colour = _jitter(MASK_COLOURS[name], rng, 8)
    # top edge peak on the nose bridge (between 28 and 29), side corners on the jaw at 1..1.8
    peak = lm[28] + float(rng.uniform(0.0, 0.6)) * (lm[29] - lm[28])
    k = float(rng.uniform(1.0, 1.8))
    margin = float(rng.uniform(0.02, 0.06))  # the mask stands off the jaw line a little
    idx = np.concatenate([[k], np.arange(int(np.ceil(k + 1e-9)), 16 - int(np.ceil(k + 1e-9)) + 1),
                          [16 - k]])
    side = _interp_points(jaw, idx)  # (M, 2) from the left corner around the chin to the right
    side = side + (side - centre) * margin
    chin_drop = float(rng.uniform(0.03, 0.08)) * face_h
    w_chin = np.exp(-(((idx - 8.0) / 2.5) ** 2))  # (M,) the mask hangs below the chin
    side[:, 1] += chin_drop * w_chin
    left, right = side[0], side[-1]
    if rng.random() < 0.5:  # rounded top edge: one curve over the nose
        lift = float(rng.uniform(0.0, 0.06)) * face_h
        # control point chosen so the curve passes through the (lifted) peak at t = 1/2
        top_r = _bezier(right, 2 * (peak - [0, lift]) - (left + right) / 2, left)
    else:  # pointed top edge: two gentle curves meeting on the nose (folded / KN95 style)
        sag = float(rng.uniform(0.02, 0.06)) * face_h
        top_r = np.concatenate([
            _bezier(right, (right + peak) / 2 + [0, sag], peak, 12),
            _bezier(peak, (left + peak) / 2 + [0, sag], left, 12)[1:],
        ])
    poly = _chaikin(np.concatenate([side, top_r[1:-1]]), rounds=2)  # (K, 2) closed outline
    cov = _poly_cov(hw, poly)
    top_y, bottom_y = float(peak[1]), float(side[:, 1].max())
    tex = _mask_texture(name, colour, hw, centre, face_w / 2, top_y, bottom_y, rng)
    out = _over(chip.astype(np.float32), cov, tex)

    if rng.random() < 0.7:  # ear straps: from the upper and lower corners towards each ear
        t = max(1, int(round(face_w / 80)))
        strap = colour if name not in ("surgical", "white") else np.float32([244, 244, 244])
        lines = []
        for ear, a, b, out_dir in ((lm[0], left, side[2], -1.0), (lm[16], right, side[-3], 1.0)):
            e = ear + np.array([out_dir * 0.04 * face_w, -0.02 * face_h])
            lines += [np.stack([a, e]), np.stack([b, e])]
        out = _over(out, _line_cov(hw, lines, t) * (1.0 - cov), strap * 0.95)
    return _to_uint8(out)


# ---- sunglasses ----------------------------------------------------------------------------


def _lens_outline(shape: str, a: float, b: float, nose_side: float, n: int = 64) -> np.ndarray:
    """(n, 2) lens outline in a local frame (x right, y down), half sizes a x b.

    nose_side is +1 when the nose is to the right of this lens (image left eye), else -1.
    """
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(th), np.sin(th)
    if shape == "ellipse":
        return np.stack([a * c, b * s], 1)
    if shape == "rounded":  # superellipse, exponent 4
        return np.stack([a * np.sign(c) * np.abs(c) ** 0.5, b * np.sign(s) * np.abs(s) ** 0.5], 1)
    # aviator: flatter top, deeper bottom that droops towards the nose
    x = a * np.sign(c) * np.abs(c) ** 0.75
    y = np.where(s < 0, 0.85 * b * s, 1.12 * b * s)
    x = x + nose_side * 0.18 * a * np.clip(s, 0, None)
    return np.stack([x, y], 1)


def draw_sunglasses(chip: np.ndarray, landmarks68: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Two dark lenses over the eyes with a bridge, temple arms and optional rim (68 chip xy)."""
    lm = check_landmarks(landmarks68, ((68, 2),), "sunglasses")
    hw = chip.shape[:2]
    eyes = (lm[36:42], lm[42:48])  # image-left eye, image-right eye, (6, 2) each
    centres = [e.mean(axis=0) for e in eyes]
    d = float(np.linalg.norm(centres[1] - centres[0]))  # inter-eye distance
    roll = np.arctan2(centres[1][1] - centres[0][1], centres[1][0] - centres[0][0])
    rot = np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    up = rot @ np.array([0.0, -1.0])  # (2,) "up" in the face's frame

    shape = LENS_SHAPES[int(rng.integers(len(LENS_SHAPES)))]
    tint = _jitter(LENS_TINTS[int(rng.integers(len(LENS_TINTS)))], rng, 6)
    opacity = float(rng.uniform(0.92, 1.0))
    gradient = rng.random() < 0.3
    scale = float(rng.uniform(1.9, 2.4))
    ratio = float(rng.uniform(0.66, 0.86))
    lift = float(rng.uniform(0.05, 0.2))
    frame = _jitter(FRAME_COLOURS[int(rng.integers(len(FRAME_COLOURS)))], rng, 6)
    rim = rng.random() < 0.7
    highlight = rng.random() < 0.6
    t = max(1, int(round(d / 30)))

    lens_cov = np.zeros(hw, np.float32)
    lens_alpha = np.zeros(hw, np.float32)
    outlines, inner, outer = [], [], []
    ys = np.arange(hw[0], dtype=np.float32)[:, None]  # (H, 1)
    for eye, c, nose_side in ((eyes[0], centres[0], 1.0), (eyes[1], centres[1], -1.0)):
        eye_w = float(np.linalg.norm(eye[3] - eye[0]))  # corner to corner
        a = min(eye_w / 2 * scale, 0.46 * d)
        b = max(a * ratio, float(np.ptp(eye[:, 1])) * 1.5)
        centre = c + up * lift * b
        poly = _lens_outline(shape, a, b, nose_side) @ rot.T + centre  # (n, 2)
        outlines.append(poly)
        cov = _poly_cov(hw, poly)
        lens_cov = np.maximum(lens_cov, cov)
        alpha = np.full((hw[0], 1), opacity, np.float32)
        if gradient:  # lighter towards the bottom of the lens
            g = np.clip((ys - (centre[1] - b)) / (2 * b), 0.0, 1.0)
            alpha = opacity * (1.0 - 0.12 * g)
        lens_alpha = np.maximum(lens_alpha, cov * alpha)
        inner.append(centre + rot @ np.array([nose_side * a * 0.97, -0.3 * b]))
        outer.append(centre + rot @ np.array([-nose_side * a * 0.97, -0.45 * b]))
    out = _over(chip.astype(np.float32), lens_alpha, tint)
    if highlight:  # a faint reflection in the upper outer part of each lens
        glare = np.zeros(hw, np.float32)
        for poly, o in zip(outlines, outer, strict=True):
            c = poly.mean(axis=0)
            p = c + (o - c) * 0.45
            ax = (max(1.0, d * 0.07), max(1.0, d * 0.025))
            glare = np.maximum(glare, _coverage(hw, lambda m, p=p, ax=ax: cv2.ellipse(
                m, tuple(int(v) for v in _fix(p)), tuple(int(v) for v in _fix(ax)),
                float(np.degrees(roll)) - 25.0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)))
        out = _over(out, glare * lens_cov * 0.25, np.float32([235, 235, 235]))

    # frame: bridge arching over the nose, temple arms to the ears, optional rim
    mid = (inner[0] + inner[1]) / 2 + up * 0.08 * d
    lines = [_bezier(inner[0], mid, inner[1], 12)]
    for o, ear, sign in ((outer[0], lm[0], -1.0), (outer[1], lm[16], 1.0)):
        end = np.array([ear[0] + sign * 0.15 * d, o[1] + 0.3 * (ear[1] - o[1])])
        lines.append(np.stack([o, end]))
    if rim:
        lines += [np.concatenate([p, p[:1]]) for p in outlines]
    out = _over(out, _line_cov(hw, lines, t), frame)
    return _to_uint8(out)


# ---- image-quality degradations (URL's augmentable variations) ----------------------------

LOWRES_SIDES = (16, 40)  # training: a random side in [16, 40] px (TinyFace-like faces)
LOWRES_EVAL_SIDE = 24  # lfw-lowres: every query chip at 24 px
BLUR_SIGMA = (1.0, 4.0)  # Gaussian sigma in chip pixels (150 px chip)
JPEG_QUALITY = (5, 30)  # libjpeg quality; 5 is blocky, 30 mildly artefacted
_DOWN = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


def downscale(chip: np.ndarray, side: int, down: int = cv2.INTER_AREA) -> np.ndarray:
    """The chip down-scaled to side x side px with filter `down`, back up with INTER_LINEAR."""
    h, w = chip.shape[:2]
    small = cv2.resize(chip, (int(side), int(side)), interpolation=down)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _lowres(chip: np.ndarray, landmarks68: np.ndarray | None,
            rng: np.random.Generator) -> np.ndarray:
    """A random side in LOWRES_SIDES and a random down-scaling filter."""
    side = int(rng.integers(LOWRES_SIDES[0], LOWRES_SIDES[1] + 1))
    return downscale(chip, side, _DOWN[int(rng.integers(len(_DOWN)))])


def _lowres24(chip: np.ndarray, landmarks68: np.ndarray | None,
              rng: np.random.Generator) -> np.ndarray:
    """lfw-lowres: 24 px with a seeded down-scaling filter (area, linear or cubic)."""
    return downscale(chip, LOWRES_EVAL_SIDE, _DOWN[int(rng.integers(len(_DOWN)))])


def _blur(chip: np.ndarray, landmarks68: np.ndarray | None,
          rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur with a random sigma in BLUR_SIGMA."""
    sigma = float(rng.uniform(*BLUR_SIGMA))
    return cv2.GaussianBlur(chip, (0, 0), sigmaX=sigma, sigmaY=sigma)


def _jpeg(chip: np.ndarray, landmarks68: np.ndarray | None,
          rng: np.random.Generator) -> np.ndarray:
    """JPEG round trip at a random quality in JPEG_QUALITY (chips are RGB; cv2 codes BGR)."""
    q = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(chip[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise InputError(f"jpeg: could not encode a chip of shape {chip.shape}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


# ---- batch API -----------------------------------------------------------------------------

OCCLUSIONS: dict[str, Callable[[np.ndarray, np.ndarray | None, np.random.Generator],
                               np.ndarray]] = {
    "crop": _crop,
    "mask": draw_mask,
    "sunglasses": draw_sunglasses,
    "lowres": _lowres,
    "lowres24": _lowres24,
    "blur": _blur,
    "jpeg": _jpeg,
}
NEEDS_LANDMARKS = frozenset({"mask", "sunglasses"})


def occlusion_rng(seed: int, kind: str, image_id: str | int) -> np.random.Generator:
    """The stream fixed by (seed, kind, id); ids 3 and "3" are the same id."""
    digest = hashlib.sha256(f"{seed}\0{kind}\0{image_id}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def occlude(kind: str, chips: np.ndarray, landmarks68: np.ndarray | None, seed: int,
            ids: Sequence[str | int] | None = None) -> np.ndarray:
    """Occluded copies (N, S, S, 3) uint8 of chips (N, S, S, 3) uint8; landmarks (N, 68, 2).

    ids (default 0..N-1) name the images so each gets its own stream; use stable ids such as
    paths relative to the data set root. The crop needs no landmarks (None is accepted).
    """
    if kind not in OCCLUSIONS:
        raise InputError(f"unknown occlusion {kind!r}; choose from {', '.join(OCCLUSIONS)}")
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[-1] != 3 or chips.dtype != np.uint8:
        raise InputError(f"chips must be (N, H, W, 3) uint8, got {chips.shape} {chips.dtype}")
    n = len(chips)
    ids = list(range(n)) if ids is None else list(ids)
    if len(ids) != n:
        raise InputError(f"{len(ids)} ids for {n} chips")
    lms: np.ndarray | None = None
    if landmarks68 is not None or kind in NEEDS_LANDMARKS:
        if landmarks68 is None:
            raise InputError(f"{kind} needs (N, 68, 2) chip landmarks, got None")
        lms = np.asarray(landmarks68, dtype=np.float64)
        if lms.shape != (n, 68, 2):
            raise InputError(f"{kind}: landmarks must be ({n}, 68, 2), got {lms.shape}")
        if kind in NEEDS_LANDMARKS:
            bad = np.flatnonzero(~np.isfinite(lms).all(axis=(1, 2)))
            if len(bad):
                i = int(bad[0])
                raise InputError(f"{kind}: chip {i} (id {ids[i]!r}) has NaN landmarks "
                                 f"({len(bad)} chip(s) in all); occlusion needs all 68 points")
    fn = OCCLUSIONS[kind]
    out = np.empty_like(chips)  # (N, S, S, 3)
    for i, image_id in enumerate(ids):
        out[i] = fn(chips[i], None if lms is None else lms[i], occlusion_rng(seed, kind, image_id))
    return out
