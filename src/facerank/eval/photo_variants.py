"""Harder photo-level variants of LFW: realistic occluders and degradations drawn on the photo.

Every variant edits the whole 250x250 photo before detection (as `lfw-mask-photo` does), placed
by the 68 landmarks of the clean photo in image pixels, with the seeded stream of
(seed, variant, image id) (`occlusion.occlusion_rng`), so a variant of an image is the same on
every run and for every backbone. The query then goes through the detector and network under
test, as a user's photo would.

    mask-shaded   the textured `lfw-mask` mask (surgical, cloth, N95, patterned) with a side light
                  across the face (shading, -45..+45 % brightness) and a cast shadow
    hand          a skin-toned hand (palm + four fingers) over the mouth or one eye side
    scarf         a striped or plain scarf from below the nose over the jaw, wider than the face
    cap           a cap whose crown and brim cover the forehead down to the eyebrows, with shade
    lowres        the face down to 16-32 px wide (whole photo scaled), back up
    dark          gamma 2-3 (under-exposure) with sensor noise sigma 4-10
    grey          grey-scale photo
    blur-jpeg     Gaussian blur sigma 1.5-3 then JPEG quality 8-25
    partial       the photo cut at a random side through the face (35-50 % of the face kept out)
    mask-dark-lowres    mask-shaded, then dark, then lowres
    scarf-dark-lowres   scarf, then dark, then lowres
    hand-grey-blur      hand, then grey, then blur-jpeg
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from facerank.errors import InputError
from facerank.eval.occlusion import (
    _jitter,
    _over,
    _poly_cov,
    _to_uint8,
    draw_mask,
    occlusion_rng,
)

Edit = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
SKIN_TONES = ((224, 182, 150), (198, 148, 112), (160, 110, 80), (110, 74, 50), (236, 200, 172))
SCARF_COLOURS = ((150, 30, 40), (30, 50, 110), (60, 60, 60), (200, 180, 140), (40, 100, 60))
CAP_COLOURS = ((20, 20, 25), (180, 30, 30), (30, 60, 140), (200, 200, 200), (90, 110, 60))


def _face_frame(lm: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """centre (2,), face width (px), unit x axis (eye to eye) and unit y axis (down the face)."""
    left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    ex = right - left
    ex = ex / (np.linalg.norm(ex) + 1e-9)
    ey = np.array([-ex[1], ex[0]])
    width = float(np.linalg.norm(lm[16] - lm[0]))
    return lm[27:36].mean(axis=0), max(width, 8.0), ex, ey


def _shading(shape: tuple[int, int], lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) multiplicative light field: a side light across the face."""
    h, w = shape
    c, width, ex, _ = _face_frame(lm)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = rng.choice([-1.0, 1.0])
    t = ((xx - c[0]) * ex[0] + (yy - c[1]) * ex[1]) / (0.6 * width) * side
    amp = rng.uniform(0.25, 0.45)
    return np.clip(1.0 + amp * np.tanh(t), 0.35, 1.6).astype(np.float32)


def mask_shaded(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The textured mask of `lfw-mask`, then a side light and a shadow under the nose."""
    out = draw_mask(image, lm, rng).astype(np.float32)
    out *= _shading(image.shape[:2], lm, rng)[..., None]
    return _to_uint8(out)


def _ellipse(centre: np.ndarray, a: float, b: float, angle: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = np.cos(angle), np.sin(angle)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([centre[0] + ca * x - sa * y, centre[1] + sa * x + ca * y], axis=1)


def _textured(base: np.ndarray, cov: np.ndarray, colour: np.ndarray, rng: np.random.Generator,
              stripes: bool, ex: np.ndarray) -> np.ndarray:
    """Composite a colour with fabric noise (and stripes along `ex`) and soft shading."""
    h, w = cov.shape
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
    tex = colour[None, None, :] * (1.0 + 0.12 * noise[..., None])
    if stripes:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(6, 14)
        phase = (xx * -ex[1] + yy * ex[0]) / period * 2 * np.pi
        tex = tex * (0.7 + 0.3 * (np.sin(phase) > 0))[..., None]
    return _over(base, cov, tex)


def hand(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand (palm + 4 fingers) over the mouth (60 %) or one eye side, skin-toned, shaded."""
    c, width, ex, ey = _face_frame(lm)
    skin = _jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], rng, 12)
    if rng.random() < 0.6:
        target = lm[48:68].mean(axis=0)  # mouth
    else:
        target = lm[36:42].mean(axis=0) if rng.random() < 0.5 else lm[42:48].mean(axis=0)
    tilt = rng.uniform(-0.5, 0.5)
    palm_c = target + ey * width * rng.uniform(0.05, 0.2)
    ang = float(np.arctan2(ex[1], ex[0])) + tilt
    cov = _poly_cov(image.shape[:2], _ellipse(palm_c, 0.42 * width, 0.3 * width, ang))
    fx, fy = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
    for k in range(4):  # fingers reach up and across
        base = palm_c + fx * width * (-0.3 + 0.2 * k) - fy * 0.2 * width
        tip = base - fy * width * rng.uniform(0.35, 0.55) + fx * width * rng.uniform(-.1, .1)
        mid = (base + tip) / 2
        length = float(np.linalg.norm(tip - base))
        a2 = float(np.arctan2(*(tip - base)[::-1]))
        cov = np.maximum(cov, _poly_cov(image.shape[:2],
                                        _ellipse(mid, length / 2, 0.075 * width, a2)))
    shade = _shading(image.shape[:2], lm, rng)[..., None]
    out = _textured(image.astype(np.float32), cov, skin, rng, False, ex)
    return _to_uint8(out * np.where(cov[..., None] > 0, shade, 1.0))


def scarf(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scarf from just below the nose tip down past the chin, wider than the jaw."""
    c, width, ex, ey = _face_frame(lm)
    top = lm[33] + ey * width * rng.uniform(-0.05, 0.12)
    jaw = lm[2:15]
    wide = c + (jaw - c) * np.array([1.25, 1.0])  # a bit wider than the face
    up_l = top - ex * width * 0.75
    up_r = top + ex * width * 0.75
    poly = np.vstack([up_l[None], up_r[None], wide[-1:] + ey * width * 0.7,
                      wide[::-1] + ey * width * 0.7, wide[:1] + ey * width * 0.7])
    cov = _poly_cov(image.shape[:2], poly)
    colour = _jitter(SCARF_COLOURS[int(rng.integers(len(SCARF_COLOURS)))], rng, 20)
    out = _textured(image.astype(np.float32), cov, colour, rng, bool(rng.random() < 0.5), ex)
    return _to_uint8(out * _shading(image.shape[:2], lm, rng)[..., None] ** 0.5)


def cap(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cap: crown over the forehead and a brim down to the eyebrows, with shade under it."""
    c, width, ex, ey = _face_frame(lm)
    brow = lm[17:27]
    drop = rng.uniform(-0.05, 0.12) * width  # brim edge relative to the brows (+ = lower)
    edge = brow + ey * drop
    brim = np.vstack([edge[0] - ex * 0.25 * width, edge, edge[-1] + ex * 0.25 * width])
    crown = brim[::-1] - ey * width * 0.9
    cov = _poly_cov(image.shape[:2], np.vstack([brim, crown]))
    colour = _jitter(CAP_COLOURS[int(rng.integers(len(CAP_COLOURS)))], rng, 15)
    out = _textured(image.astype(np.float32), cov, colour, rng, False, ex)
    shade = _poly_cov(image.shape[:2], np.vstack([brim, brim[::-1] + ey * width * 0.35]))
    out *= (1.0 - rng.uniform(0.3, 0.55) * cv2.GaussianBlur(shade, (0, 0), 3))[..., None]
    return _to_uint8(out)


def lowres(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole photo scaled so the face is 16-32 px wide, then back up (linear)."""
    _, width, _, _ = _face_frame(lm)
    f = min(1.0, rng.uniform(16, 32) / width)
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(4, round(w * f)), max(4, round(h * f))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def dark(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Under-exposure: gamma 2-3, then sensor noise of sigma 4-10 grey levels."""
    x = (image.astype(np.float32) / 255.0) ** rng.uniform(2.0, 3.0) * 255.0
    return _to_uint8(x + rng.normal(0, rng.uniform(4, 10), x.shape[:2])[..., None])


def grey(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(g[..., None], 3, axis=2)


def blur_jpeg(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur sigma 1.5-3, then JPEG quality 8-25."""
    x = cv2.GaussianBlur(image, (0, 0), rng.uniform(1.5, 3.0))
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(x[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(8, 26))])
    if not ok:
        raise InputError(f"blur-jpeg: could not encode a photo of shape {image.shape}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def partial(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo cut through the face at a random side, 35-50 % of the face left out (black)."""
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    out = image.copy()
    f = rng.uniform(0.35, 0.5)
    side = int(rng.integers(4))
    h, w = image.shape[:2]
    if side == 0:
        out[:, : int(np.clip(x0 + f * (x1 - x0), 0, w))] = 0
    elif side == 1:
        out[:, int(np.clip(x1 - f * (x1 - x0), 0, w)):] = 0
    elif side == 2:
        out[: int(np.clip(y0 + f * (y1 - y0), 0, h))] = 0
    else:
        out[int(np.clip(y1 - f * (y1 - y0), 0, h)):] = 0
    return out


def _chain(*edits: Edit) -> Edit:
    def run(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for e in edits:
            image = e(image, lm, rng)
        return image
    return run


PHOTO_VARIANTS: dict[str, Edit] = {
    "mask-shaded": mask_shaded, "hand": hand, "scarf": scarf, "cap": cap, "lowres": lowres,
    "dark": dark, "grey": grey, "blur-jpeg": blur_jpeg, "partial": partial,
    "mask-dark-lowres": _chain(mask_shaded, dark, lowres),
    "scarf-dark-lowres": _chain(scarf, dark, lowres),
    "hand-grey-blur": _chain(hand, grey, blur_jpeg),
}
VARIANTS_VERSION = 1  # bump when a variant's drawing changes (cache keys include it)


def photo_variant_image(name: str, image: np.ndarray, landmarks68: np.ndarray, seed: int,
                        image_id: str) -> np.ndarray:
    """Variant `name` of a photo (H, W, 3) uint8 placed by its 68 landmarks (68, 2) in image
    pixels, with the seeded stream of (seed, name, image_id)."""
    if name not in PHOTO_VARIANTS:
        raise InputError(f"unknown photo variant {name!r}; choose from "
                         f"{', '.join(PHOTO_VARIANTS)}")
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"{name}: {image_id} needs 68 finite landmarks, got {lm.shape}")
    return PHOTO_VARIANTS[name](image, lm, occlusion_rng(seed, f"photo-{name}", image_id))
