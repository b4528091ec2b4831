"""Seeded occluded queries on aligned chips: random crop, face mask, sunglasses.

Each image gets its own random stream derived from (seed, kind, image id), so an image's
occlusion does not depend on which other images are in the batch.

    crop        a random 70 % x 70 % window resized back to the chip (DeepFace-EMD's LFW-crop)
    mask        a face mask from the nose bridge over the cheeks to below the chin, following
                the 68 landmarks; seeded colour (white, surgical blue, black, grey, striped)
                and shape (top edge height, straps)
    sunglasses  two dark lenses sized from each eye's landmarks, a bridge and temple arms
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from facerank.errors import InputError

MASK_COLOURS = {
    "white": (235, 235, 235),
    "surgical": (150, 195, 225),
    "black": (30, 30, 32),
    "grey": (128, 130, 135),
    "striped": (200, 60, 60),
}
LENS_TINTS = ((15, 15, 15), (35, 25, 15), (10, 25, 40), (40, 40, 40))


def crop_resize(chip: np.ndarray, rng: np.random.Generator, frac: float = 0.7) -> np.ndarray:
    """A random frac x frac window of the chip, resized back (INTER_LINEAR)."""
    h, w = chip.shape[:2]
    ch, cw = int(round(h * frac)), int(round(w * frac))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return cv2.resize(chip[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def draw_mask(chip: np.ndarray, landmarks68: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face mask over nose, mouth and chin, following the jaw line (68 landmarks, chip xy)."""
    out = chip.copy()
    lm = landmarks68
    colour_name = list(MASK_COLOURS)[int(rng.integers(len(MASK_COLOURS)))]
    colour = tuple(int(c) for c in MASK_COLOURS[colour_name])
    # top edge: between the nose bridge (28) and the nose middle (29/30), seeded
    t = float(rng.uniform(0.0, 0.6))
    top_y = (1 - t) * lm[28, 1] + t * lm[29, 1]
    jaw = lm[1:16].copy()  # along the jaw, left ear to right ear
    jaw[:, 1] = np.maximum(jaw[:, 1], top_y)
    chin_drop = float(rng.uniform(0.03, 0.09)) * (lm[8, 1] - lm[27, 1])
    jaw[5:10, 1] += chin_drop  # the mask hangs a little below the chin
    curve = float(rng.uniform(-0.05, 0.05)) * (lm[15, 0] - lm[1, 0])
    top = np.array([[lm[15, 0], top_y], [lm[8, 0], top_y - curve], [lm[1, 0], top_y]])
    poly = np.concatenate([jaw, top]).round().astype(np.int32)
    cv2.fillPoly(out, [poly], colour, lineType=cv2.LINE_AA)
    if colour_name == "striped":
        stripe = np.zeros(out.shape[:2], np.uint8)
        cv2.fillPoly(stripe, [poly], 255)
        rows = (np.arange(out.shape[0]) // 4) % 2 == 0
        sel = (stripe > 0) & rows[:, None]
        out[sel] = (240, 240, 240)
    if rng.random() < 0.6:  # ear straps
        for a, b in ((1, 0), (15, 16)):
            p = lm[a].round().astype(int)
            q = (lm[b] + (lm[b] - lm[a]) * 0.6).round().astype(int)
            cv2.line(out, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, 2,
                     cv2.LINE_AA)
    return out


def draw_sunglasses(chip: np.ndarray, landmarks68: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Two dark lenses over the eyes with a bridge and temple arms (68 landmarks, chip xy)."""
    out = chip.copy()
    lm = landmarks68
    tint = LENS_TINTS[int(rng.integers(len(LENS_TINTS)))]
    scale = float(rng.uniform(1.5, 1.9))
    round_lens = rng.random() < 0.5
    centres = []
    for eye in (lm[36:42], lm[42:48]):
        c = eye.mean(axis=0)
        half_w = (eye[:, 0].max() - eye[:, 0].min()) / 2 * scale
        half_h = max(half_w * float(rng.uniform(0.65, 0.85)), 6.0)
        centres.append((c, half_w, half_h))
        if round_lens:
            cv2.ellipse(out, (int(round(c[0])), int(round(c[1]))),
                        (int(round(half_w)), int(round(half_h))), 0, 0, 360, tint, -1,
                        cv2.LINE_AA)
        else:
            p0 = (int(round(c[0] - half_w)), int(round(c[1] - half_h)))
            p1 = (int(round(c[0] + half_w)), int(round(c[1] + half_h)))
            cv2.rectangle(out, p0, p1, tint, -1, cv2.LINE_AA)
    (cl, wl, _), (cr, wr, _) = centres
    frame = (20, 20, 20)
    cv2.line(out, (int(cl[0] + wl), int(cl[1])), (int(cr[0] - wr), int(cr[1])), frame, 2,
             cv2.LINE_AA)
    for c, w_, side, ear in ((cl, wl, -1, lm[0]), (cr, wr, 1, lm[16])):
        cv2.line(out, (int(c[0] + side * w_), int(c[1])), (int(ear[0]), int(ear[1])), frame, 2,
                 cv2.LINE_AA)
    return out


OCCLUSIONS: dict[str, Callable[..., np.ndarray]] = {
    "crop": lambda chip, lm, rng: crop_resize(chip, rng),
    "mask": draw_mask,
    "sunglasses": draw_sunglasses,
}


def _rng(seed: int, kind: str, image_id: str | int) -> np.random.Generator:
    """A stream fixed by (seed, kind, id), independent of Python's randomised hash()."""
    digest = hashlib.sha256(f"{seed}\0{kind}\0{image_id}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def occlude(kind: str, chips: np.ndarray, landmarks68: np.ndarray | None, seed: int,
            ids: Sequence[str | int] | None = None) -> np.ndarray:
    """Occlude N chips (N, S, S, 3) uint8 with their (N, 68, 2) chip landmarks; new array."""
    if kind not in OCCLUSIONS:
        raise InputError(f"unknown occlusion {kind!r}; choose from {', '.join(OCCLUSIONS)}")
    ids = list(range(len(chips))) if ids is None else list(ids)
    if len(ids) != len(chips):
        raise InputError(f"{len(ids)} ids for {len(chips)} chips")
    if kind != "crop":
        if landmarks68 is None or landmarks68.shape[:2] != (len(chips), 68):
            raise InputError(f"{kind} needs (N, 68, 2) landmarks for N={len(chips)} chips")
        bad = np.flatnonzero(~np.isfinite(landmarks68).all(axis=(1, 2)))
        if len(bad):
            raise InputError(f"{kind}: chip {int(bad[0])} has no 68 landmarks (NaN)")
    fn = OCCLUSIONS[kind]
    out = np.empty_like(chips)
    for i, (chip, image_id) in enumerate(zip(chips, ids, strict=True)):
        lm = None if landmarks68 is None else landmarks68[i]
        out[i] = fn(chip, lm, _rng(seed, kind, image_id))
    return out
