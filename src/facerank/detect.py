"""Face detection (dlib HOG by default, MMOD CNN as an option) and 5/68-point landmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from facerank.errors import InputError, MultipleFacesError, NoFaceError
from facerank.paths import DLIB_MMOD, DLIB_SHAPE5, DLIB_SHAPE68, bundled_model

Policy = Literal["largest", "center", "strict"]
Fallback = Literal["none", "whole", "center"]

# Median HOG box on 100 LFW images (250x250): (77, 86, 182, 190) -> centre and side as fractions.
CENTER_BOX = (0.518, 0.552, 0.42)  # (cx / w, cy / h, side / min(w, h))


@dataclass
class Detection:
    """One face: box (x0, y0, x1, y1) in pixels, detector score, landmarks as (x, y)."""

    box: np.ndarray  # (4,) float
    score: float
    landmarks5: np.ndarray  # (5, 2)
    landmarks68: np.ndarray | None  # (68, 2)
    source: str  # "hog" | "hog-up1" | "mmod" | "fallback-whole" | "fallback-center"
    # (5, 2) eye centres, nose tip, mouth corners, left to right in the image: the points the
    # ArcFace 112 template is defined on (from a detector that finds them, else from the 68)
    points5: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points5 is None and self.landmarks68 is not None:
            self.points5 = points5_from_68(self.landmarks68)

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def points5_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """iBUG 68 points (68, 2) -> (5, 2): the two eye centres (mean of each eye's six points),
    the nose tip (30) and the mouth corners (48, 54), in image left-to-right order."""
    l68 = np.asarray(landmarks68, dtype=np.float64)
    return np.stack([l68[36:42].mean(axis=0), l68[42:48].mean(axis=0), l68[30], l68[48],
                     l68[54]])


def _shape_to_array(shape) -> np.ndarray:  # noqa: ANN001 - dlib type
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class FaceDetector:
    """dlib detector + landmark predictors with a policy for zero or several faces.

    method: "hog" (fast, frontal) or "mmod" (CNN, slower, more poses).
    policy: which face to keep when several are found — "largest", "center" (nearest the
        image centre; the right choice for LFW-style centred crops) or "strict" (raise).
    fallback: when no face is found — "none" (raise `NoFaceError`), "whole" (treat the
        whole image as the face box, for pre-cropped data) or "center" (the box where HOG
        finds LFW deep-funneled faces: median over 100 LFW images, see `CENTER_BOX`).
    upsample: dlib's upsampling passes; with `retry_upsample` a failed pass at 0 retries at 1.
    """

    def __init__(
        self,
        method: Literal["hog", "mmod"] = "hog",
        policy: Policy = "largest",
        fallback: Fallback = "none",
        upsample: int = 0,
        retry_upsample: bool = True,
        landmarks68: bool = True,
    ) -> None:
        import dlib

        if method not in ("hog", "mmod"):
            raise InputError(f"unknown detector {method!r}; use 'hog' or 'mmod'")
        if policy not in ("largest", "center", "strict"):
            raise InputError(f"unknown face policy {policy!r}; use largest, center or strict")
        if fallback not in ("none", "whole", "center"):
            raise InputError(f"unknown no-face fallback {fallback!r}; use none, whole or center")
        self.method = method
        self.policy = policy
        self.fallback = fallback
        self.upsample = upsample
        self.retry_upsample = retry_upsample
        if method == "hog":
            self._hog = dlib.get_frontal_face_detector()
        else:
            self._mmod = dlib.cnn_face_detection_model_v1(str(bundled_model(DLIB_MMOD)))
        self._sp5 = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE5)))
        self._sp68 = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE68))) if landmarks68 else None
        self._rect = dlib.rectangle

    @property
    def config_id(self) -> str:
        """A string that identifies this configuration (used in cache keys)."""
        return (f"{self.method}-{self.policy}-{self.fallback}-up{self.upsample}"
                f"{'r' if self.retry_upsample else ''}")

    def _raw(self, image: np.ndarray, upsample: int) -> list[tuple[object, float]]:
        if self.method == "hog":
            rects, scores, _ = self._hog.run(image, upsample, 0.0)
            return list(zip(rects, scores, strict=True))
        return [(d.rect, float(d.confidence)) for d in self._mmod(image, upsample)]

    def _landmarks(self, image: np.ndarray, rect: object) -> tuple[np.ndarray, np.ndarray | None]:
        l5 = _shape_to_array(self._sp5(image, rect))
        l68 = _shape_to_array(self._sp68(image, rect)) if self._sp68 is not None else None
        return l5, l68

    def detect_all(self, image: np.ndarray) -> list[Detection]:
        """Every face the detector finds (no policy, no fallback), best score first."""
        image = np.ascontiguousarray(image)
        raw = self._raw(image, self.upsample)
        source = self.method
        if not raw and self.retry_upsample and self.upsample == 0:
            raw = self._raw(image, 1)
            source = f"{self.method}-up1"
        out = []
        for rect, score in sorted(raw, key=lambda rs: -rs[1]):
            l5, l68 = self._landmarks(image, rect)
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1],
                           dtype=np.float64)
            out.append(Detection(box, float(score), l5, l68, source))
        return out

    def detect(self, image: np.ndarray, name: str = "<image>") -> Detection:
        """The one face this policy keeps; raises NoFaceError / MultipleFacesError."""
        faces = self.detect_all(image)
        if not faces:
            return self._fallback(image, name)
        if len(faces) == 1:
            return faces[0]
        if self.policy == "strict":
            raise MultipleFacesError(
                f"{name}: {len(faces)} faces found; crop the image to one face or use "
                "--faces largest"
            )
        if self.policy == "largest":
            return max(faces, key=lambda f: f.area)
        h, w = image.shape[:2]
        centre = np.array([w / 2, h / 2])
        return min(faces, key=lambda f: float(np.linalg.norm(
            (f.box[:2] + f.box[2:]) / 2 - centre)))

    def chip_landmarks68(self, chips: np.ndarray, padding: float = 0.25,
                         box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """68 landmarks predicted on aligned chips (N, S, S, 3) -> (N, 68, 2), chip coordinates.

        The face box is the chip's central square: a chip made with `padding` p puts the face
        span in the middle 1 / (1 + 2p) of its side; `box` (x0, y0, x1, y1) in chip pixels
        overrides it (the ArcFace chip's `Geometry.face_box`). Used for queries made by editing
        a chip (crop, mask, sunglasses), where landmarks must be found again, as a real query's
        would.
        """
        if self._sp68 is None:
            return np.full((len(chips), 68, 2), np.nan)
        size = chips.shape[1]
        margin = size * padding / (1 + 2 * padding)
        x0, y0, x1, y1 = box if box is not None else (margin, margin, size - margin,
                                                      size - margin)
        rect = self._rect(int(round(x0)), int(round(y0)), int(round(x1)) - 1,
                          int(round(y1)) - 1)
        return np.stack([_shape_to_array(self._sp68(np.ascontiguousarray(c), rect))
                         for c in chips]) if len(chips) else np.zeros((0, 68, 2))

    def _fallback(self, image: np.ndarray, name: str) -> Detection:
        h, w = image.shape[:2]
        if self.fallback == "none":
            raise NoFaceError(
                f"{name}: no face found; use a clearer frontal photo, --detector mmod, or "
                "--no-face whole if the image is already a face crop"
            )
        if self.fallback == "whole":
            box = np.array([0, 0, w, h], dtype=np.float64)
        else:
            fx, fy, fs = CENTER_BOX
            side = fs * min(w, h)
            cx, cy = fx * w, fy * h
            box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        rect = self._rect(int(round(box[0])), int(round(box[1])),
                          int(round(box[2])) - 1, int(round(box[3])) - 1)
        l5, l68 = self._landmarks(np.ascontiguousarray(image), rect)
        return Detection(box, 0.0, l5, l68, f"fallback-{self.fallback}")
