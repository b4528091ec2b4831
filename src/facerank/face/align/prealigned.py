"""Pre-aligned input: face crops whose landmark positions are known from their template.

    dlib150     a dlib face chip (`dlib.get_face_chip`, size 150, padding 0.25, or any square
                size with that geometry): used as the chip itself, resized to 150 if needed
    arcface112  an insightface-style ArcFace crop (112x112, or any square size scaled from
                it): the five template points (`align.ARCFACE112`) are put on dlib's mean face
                (`align.dlib5_from_points5`) and our chip is cut from the crop
    auto        150x150 -> dlib150, 112x112 -> arcface112, any other size is detected as usual
    none        always detect

Such crops are too tight for detectors (the face fills the frame) and a central-box fallback
would align the wrong region; mapping from the known template is exact instead. The 68
landmarks (for masks, sunglasses and LMK weights) are predicted on the chip, as for edited chips.
"""

from __future__ import annotations

import cv2
import numpy as np

from facerank.errors import InputError
from facerank.face.align.dlib_chip import (
    ARCFACE112,
    _template,
    chip_transform,
    dlib5_from_points5,
    extract_chip,
    mean_face_points5,
)
from facerank.face.detect import Detection, FaceDetector

__all__ = ["ALIGNED", "aligned_detection", "aligned_kind", "check_aligned"]


ALIGNED = ("none", "auto", "dlib150", "arcface112")
_AUTO_SIZES = {150: "dlib150", 112: "arcface112"}


def check_aligned(aligned: str) -> str:
    """`aligned` if it is a known mode, else a one-line InputError."""
    if aligned not in ALIGNED:
        raise InputError(f"--aligned {aligned!r}: use none, auto, dlib150 or arcface112")
    return aligned


def aligned_kind(image: np.ndarray, aligned: str, name: str = "<image>") -> str | None:
    """Which template an image (H, W, 3) follows under mode `aligned`; None: detect it."""
    check_aligned(aligned)
    h, w = image.shape[:2]
    if aligned == "none":
        return None
    if aligned == "auto":
        return _AUTO_SIZES.get(h) if h == w else None
    if h != w:
        raise InputError(f"{name}: --aligned {aligned} needs a square face crop, got {w}x{h}; "
                         "use --aligned auto or none to detect the face instead")
    return aligned


def aligned_detection(image: np.ndarray, kind: str, detector: FaceDetector,
                      size: int = 150, padding: float = 0.25,
                      ) -> tuple[Detection, np.ndarray, np.ndarray]:
    """The Detection a crop of template `kind` implies, our (size, size, 3) chip of it and the
    chip's 68 landmarks (68, 2).

    Detection.source is "aligned-<kind>"; its landmarks5 are dlib-style 5 points whose dlib
    chip is the template's, its landmarks68 are predicted on that chip and mapped back.
    """
    side = image.shape[0]
    if kind == "dlib150":
        if side != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if side > size
                               else cv2.INTER_LINEAR)
        scale = side / size
        l5 = _template(5, size, padding)[0]  # dlib's 5 template points in chip pixels
        points5 = (padding + mean_face_points5()) / (2 * padding + 1) * size
        chip = np.ascontiguousarray(image)
    elif kind == "arcface112":
        scale = 1.0
        points5 = ARCFACE112 * (side / 112.0)
        l5 = dlib5_from_points5(points5)
        chip = extract_chip(image, l5, size, padding)
    else:
        raise InputError(f"unknown aligned template {kind!r}; use dlib150 or arcface112")
    chip_l68 = detector.chip_landmarks68(chip[None], padding)[0]  # (68, 2) chip pixels
    t = chip_transform(l5, size, padding)  # chip -> (resized) image
    l68 = chip_l68 @ t[:, :2].T + t[:, 2]
    box = np.array([0.0, 0.0, side, side])
    det = Detection(box, 0.0, l5 * scale, l68 * scale, f"aligned-{kind}", points5 * scale)
    return det, chip, chip_l68
