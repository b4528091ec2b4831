"""Face features: image -> detect -> align -> backbone -> FaceFeatures, batched and cached.

The cache keeps one small `.npz` per image under
`<cache>/features/<config digest>/<hash[:2]>/<sha1 of file bytes>.npz`, where the digest covers
the backbone id, the detector configuration, the grids kept and `FEATURES_VERSION`; changing
any of them starts a fresh cache instead of serving stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facerank._util.paths import cache_root
from facerank._util.progress import progress_bar
from facerank.errors import FacerankError, InputError
from facerank.face.align.dlib_chip import landmarks_to_chip
from facerank.face.detect import Detection, FaceDetector
from facerank.face.imageio import JPEG_SCALES, load_image, load_image_reduced
from facerank.models.backbone import Backbone, make_backbone

__all__ = ["CHIP_PADDING", "CHIP_SIZE", "FEATURES_VERSION", "Aligned", "FaceFeatures",
           "FeatureExtractor", "FeatureSet", "file_digest", "l2_normalize", "make_extractor"]


FEATURES_VERSION = 1  # bump when the extracted features change (not on every release)
CHIP_SIZE = 150  # dlib's chip; each backbone has its own geometry (models/backbone.py)
CHIP_PADDING = 0.25


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ||x|| along `axis` (zero vectors stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


@dataclass
class FaceFeatures:
    """Everything facerank keeps about one face."""

    embedding: np.ndarray  # (D,) L2-normalised
    descriptor: np.ndarray  # (D,) raw backbone output (dlib distance uses this)
    grids: dict[str, np.ndarray]  # name -> (C, H, W)
    landmarks5: np.ndarray  # (5, 2) image coordinates of the points the backbone aligned on
    # (dlib: dlib's 5 landmarks; sface: Detection.points5)
    landmarks68: np.ndarray  # (68, 2) image coordinates (NaN when not computed)
    chip_landmarks68: np.ndarray  # (68, 2) chip coordinates (NaN when not computed)
    box: np.ndarray  # (4,) x0, y0, x1, y1
    det_score: float
    det_source: str
    path: str = ""
    # URL confidence, computed from the features above where it is shown and never
    # cached: one number (1.0 = a typical clean LFW face) and the (K,) sub-embedding values
    confidence: float | None = None
    confidences: np.ndarray | None = None
    # `face.quality.chip_sharpness` of the aligned chip; NaN where unknown (features stored
    # before it was computed)
    sharpness: float = float("nan")


@dataclass
class FeatureSet:
    """Features of many images, stacked; `failures` lists (path, message) of skipped files."""

    paths: list[str]
    descriptors: np.ndarray  # (N, D)
    grids: dict[str, np.ndarray]  # name -> (N, C, H, W), float16
    landmarks5: np.ndarray  # (N, 5, 2)
    landmarks68: np.ndarray  # (N, 68, 2)
    chip_landmarks68: np.ndarray  # (N, 68, 2)
    boxes: np.ndarray  # (N, 4)
    det_scores: np.ndarray  # (N,)
    det_sources: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    # (N,) `face.quality.chip_sharpness` per face, NaN where unknown; None: all unknown
    sharpness: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        s = np.full(n, np.nan) if self.sharpness is None else np.asarray(self.sharpness,
                                                                           np.float64)
        if s.shape != (n,):
            raise InputError(f"FeatureSet: {s.size} sharpness values for {n} faces")
        self.sharpness = s

    @property
    def embeddings(self) -> np.ndarray:
        """(N, D) L2-normalised descriptors."""
        return l2_normalize(self.descriptors.astype(np.float32))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> FaceFeatures:
        return FaceFeatures(
            embedding=l2_normalize(self.descriptors[i].astype(np.float32)),
            descriptor=self.descriptors[i],
            grids={k: v[i].astype(np.float32) for k, v in self.grids.items()},
            landmarks5=self.landmarks5[i],
            landmarks68=self.landmarks68[i],
            chip_landmarks68=self.chip_landmarks68[i],
            box=self.boxes[i],
            det_score=float(self.det_scores[i]),
            det_source=self.det_sources[i],
            path=self.paths[i],
            sharpness=float(self.sharpness[i]),
        )

    def take(self, rows: Sequence[int] | np.ndarray) -> FeatureSet:
        """The given rows, as a new FeatureSet (failures are not carried over)."""
        idx = np.asarray(rows, dtype=np.int64)
        return FeatureSet(
            paths=[self.paths[i] for i in idx], descriptors=self.descriptors[idx],
            grids={k: v[idx] for k, v in self.grids.items()}, landmarks5=self.landmarks5[idx],
            landmarks68=self.landmarks68[idx], chip_landmarks68=self.chip_landmarks68[idx],
            boxes=self.boxes[idx], det_scores=self.det_scores[idx],
            det_sources=[self.det_sources[i] for i in idx], sharpness=self.sharpness[idx],
        )

    @classmethod
    def stack(cls, items: Sequence[FaceFeatures], failures: list[tuple[str, str]] | None = None,
              grid_names: Sequence[str] = ()) -> FeatureSet:
        """Stack single-face features (all with the same grids)."""
        names = list(items[0].grids) if items else list(grid_names)
        dim = items[0].descriptor.shape[0] if items else 128
        return cls(
            paths=[f.path for f in items],
            descriptors=np.stack([f.descriptor for f in items]).astype(np.float32)
            if items else np.zeros((0, dim), np.float32),
            grids={n: np.stack([f.grids[n] for f in items]).astype(np.float16) for n in names}
            if items else {},
            landmarks5=_stack([f.landmarks5 for f in items], (5, 2)),
            landmarks68=_stack([f.landmarks68 for f in items], (68, 2)),
            chip_landmarks68=_stack([f.chip_landmarks68 for f in items], (68, 2)),
            boxes=_stack([f.box for f in items], (4,)),
            det_scores=np.array([f.det_score for f in items], dtype=np.float64),
            det_sources=[f.det_source for f in items],
            failures=list(failures or []),
            sharpness=np.array([f.sharpness for f in items], dtype=np.float64),
        )

    def save(self, path: str | Path) -> None:
        """Write as one `.npz` (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "paths": np.array(self.paths, dtype=str),
            "descriptors": self.descriptors,
            "embeddings": self.embeddings,
            "landmarks5": self.landmarks5,
            "landmarks68": self.landmarks68,
            "chip_landmarks68": self.chip_landmarks68,
            "boxes": self.boxes,
            "det_scores": self.det_scores,
            "det_sources": np.array(self.det_sources, dtype=str),
            "failures": np.array([json.dumps(f) for f in self.failures], dtype=str),
            "sharpness": self.sharpness,
        }
        arrays.update({f"grid_{k}": v for k, v in self.grids.items()})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a file written by `save` (no pickle)."""
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a facerank feature file ({e})") from None
        return cls(
            paths=[str(p) for p in z["paths"]],
            descriptors=z["descriptors"],
            grids={k[5:]: z[k] for k in z.files if k.startswith("grid_")},
            landmarks5=z["landmarks5"],
            landmarks68=z["landmarks68"],
            chip_landmarks68=z["chip_landmarks68"],
            boxes=z["boxes"],
            det_scores=z["det_scores"],
            det_sources=[str(s) for s in z["det_sources"]],
            failures=[tuple(json.loads(f)) for f in z["failures"]],
            sharpness=z["sharpness"] if "sharpness" in z.files else None,  # older files: NaN
        )


def _stack(rows: list[np.ndarray | None], shape: tuple[int, ...]) -> np.ndarray:
    out = np.full((len(rows), *shape), np.nan, dtype=np.float64)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out


def file_digest(data: bytes) -> str:
    """Content hash used as the cache key of an image."""
    return hashlib.sha1(data).hexdigest()


@dataclass
class Aligned:
    """A detected and aligned face, before the network."""

    chip: np.ndarray  # (S, S, 3) uint8, S = the backbone's chip size (dlib 150, sface 112)
    detection: Detection
    chip_landmarks68: np.ndarray  # (68, 2) in chip pixels
    points: np.ndarray | None = None  # (5, 2) image points the chip was cut from


MIN_PIXELS_PER_CHIP_PIXEL = 2.0  # a chip is cut from an image with the face at >= 2x its size


def _rescaled(det: Detection, factor: float) -> Detection:
    """`det` with its box and points multiplied by `factor` (another decoded size of the same
    photo; the convention `FaceDetector` uses when it shrinks an image for YuNet)."""
    from dataclasses import replace

    def mul(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else np.asarray(x, np.float64) * factor

    return replace(det, box=mul(det.box), landmarks5=mul(det.landmarks5),
                   landmarks68=mul(det.landmarks68), points5=mul(det.points5))


def _pixels_per_chip_pixel(chip_to_image: np.ndarray) -> float:
    """Image pixels per chip pixel of a 2x3 chip -> image affine (its linear part's scale)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(chip_to_image, np.float64)[:, :2]))))


class FeatureExtractor:
    """Batched image -> FaceFeatures with an on-disk cache.

    backbone: a `Backbone` or its name ("dlib", default, or "sface"); detector: default HOG,
        largest face, no fallback.
    grids: which intermediate maps to keep (stored as float16); None: the backbone's defaults.
    cache: a folder, or None/False to disable (default: `facerank._util.paths.cache_root()`).
    aligned: "none" (detect), "auto", "dlib150" or "arcface112": face crops made with a known
        template skip detection (`facerank.face.align.prealigned`); part of each image's cache key.
    """

    def __init__(
        self,
        backbone: Backbone | str | None = None,
        detector: FaceDetector | None = None,
        grids: Sequence[str] | None = None,
        cache: str | Path | bool | None = True,
        batch_size: int = 64,
        aligned: str = "none",
    ) -> None:
        from facerank.face.align.prealigned import check_aligned

        self.aligned = check_aligned(aligned)
        self.backbone: Backbone = (make_backbone(backbone or "dlib")
                                   if backbone is None or isinstance(backbone, str) else backbone)
        self.detector = detector or FaceDetector()
        self.grid_names = tuple(self.backbone.geometry.default_grids if grids is None else grids)
        unknown = [g for g in self.grid_names if g not in self.backbone.geometry.grids]
        if unknown:
            raise InputError(f"backbone {self.backbone.name} has no grid {unknown[0]!r}; it "
                             f"offers {', '.join(self.backbone.geometry.grids)}")
        self.batch_size = batch_size
        if cache is True:
            self.cache_dir: Path | None = cache_root() / "features" / self.config_digest
        elif cache:
            self.cache_dir = Path(cache) / "features" / self.config_digest
        else:
            self.cache_dir = None

    @property
    def model_id(self) -> str:
        return f"{self.backbone.model_id}@facerank-features-{FEATURES_VERSION}"

    @property
    def config_digest(self) -> str:
        key = json.dumps([self.model_id, self.detector.config_id,
                          self.grid_names, "float16"])
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    # ---- single image --------------------------------------------------------------------

    def align(self, image: np.ndarray, name: str = "<image>") -> Aligned:
        """Detect the face (policy of the detector), or read a pre-aligned crop's template
        points (`aligned`), and cut the backbone's chip."""
        if self.aligned != "none":
            from facerank.face.align.prealigned import aligned_detection, aligned_kind

            kind = aligned_kind(image, self.aligned, name)
            if kind is not None:
                det, chip, chip_l68 = aligned_detection(image, kind, self.detector, CHIP_SIZE,
                                                        CHIP_PADDING)
                if self.backbone.name == "dlib":  # the dlib chip, cut once from the crop
                    return Aligned(chip=chip, detection=det, chip_landmarks68=chip_l68)
                return self.align_detection(image, det)  # other templates from its points5
        return self.align_detection(image, self.detector.detect(image, name))

    def align_file(self, data: bytes, name: str,
                   decoded: tuple[np.ndarray, int] | None = None) -> Aligned:
        """`align` on an encoded image file, decoding no more pixels than the face needs.

        With YuNet alone (`FaceDetector.points_only`: it looks at most `YUNET_MAX_SIDE` pixels
        wide anyway, and no dlib landmark model runs on the face), a JPEG is first
        decoded at 1/k of its size (libjpeg's DCT scaling, `load_image_reduced`), the largest
        k that keeps that long side; the face is found there. The chip is then cut from the
        image decoded at the largest k <= that which keeps at least `MIN_PIXELS_PER_CHIP_PIXEL`
        image pixels per chip pixel (the same image when the face is large, the full photo
        when it is small), at the points found in the reduced image. Box and points are
        returned in the full photo's pixels. Other
        formats, other detectors, dlib landmarks and pre-aligned crops decode in full.

        decoded: `load_image_reduced(data, name, min_long_side=YUNET_MAX_SIDE)`, where the
        caller has decoded it already (it is not decoded again)."""
        from facerank.face.detect import YUNET_MAX_SIDE

        if not data or self.aligned != "none" or not self.detector.points_only:
            full = decoded[0] if decoded is not None and decoded[1] == 1 else \
                load_image(data if data else name, name=name)
            return self.align(full, name)
        small, k0 = decoded if decoded is not None else \
            load_image_reduced(data, name, min_long_side=YUNET_MAX_SIDE)
        if k0 == 1:
            return self.align(small, name)
        det = self.detector.detect(small, name)
        full = _rescaled(det, k0)  # in the full photo's pixels
        per_chip = _pixels_per_chip_pixel(
            self.backbone.chip_transform(self.backbone.points(full)))
        k = next((s for s in (*JPEG_SCALES, 1)
                  if s <= k0 and per_chip / s >= MIN_PIXELS_PER_CHIP_PIXEL), 1)
        if k == k0:
            image, at_k = small, det
        else:
            image, got = load_image_reduced(data, name, scale=k)
            at_k = _rescaled(det, k0 / got)
            k = got
        a = self.align_detection(image, at_k)
        a.detection = full
        if a.points is not None:
            a.points = a.points * k
        return a

    def align_points5(self, image: np.ndarray, points5: np.ndarray) -> Aligned:
        """Cut the backbone's chip of a face whose 5 ArcFace points (5, 2) are known; the 68
        landmarks are predicted on the chip (for masks and LMK weights)."""
        from facerank.face.align.dlib_chip import dlib5_from_points5

        p5 = np.asarray(points5, dtype=np.float64)
        h, w = image.shape[:2]
        det = Detection(np.array([0.0, 0.0, w, h]), 1.0, dlib5_from_points5(p5), None,
                        "known-points5", p5)
        a = self.align_detection(image, det)
        a.chip_landmarks68 = self.detector.chip_landmarks68(
            a.chip[None], box=self.backbone.geometry.face_box)[0]
        return a

    def align_detection(self, image: np.ndarray, det: Detection) -> Aligned:
        """Cut the backbone's chip of an already detected face."""
        points = self.backbone.points(det)  # (5, 2) the points this backbone aligns on
        chip = self.backbone.align_points(image, points)
        if det.landmarks68 is not None:
            chip_l68 = landmarks_to_chip(det.landmarks68, self.backbone.chip_transform(points))
        else:
            chip_l68 = np.full((68, 2), np.nan)
        return Aligned(chip=chip, detection=det, chip_landmarks68=chip_l68, points=points)

    def embed_chips(self, chips: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 chips (N, S, S, 3) -> descriptors (N, D), grids {name: (N, C, H, W)}."""
        return self.backbone.embed_chips(chips, self.batch_size, self.grid_names)

    def extract(self, image: np.ndarray, name: str = "<image>") -> FaceFeatures:
        """Features of the one face in an RGB image; raises NoFaceError etc."""
        return self._embed_one(self.align(image, name), name)

    def extract_bytes(self, data: bytes, name: str = "<image>",
                      decoded: tuple[np.ndarray, int] | None = None) -> FaceFeatures:
        """Features of the one face in an encoded image held in memory (`align_file`: a large
        JPEG decodes only as far as its face needs; `decoded` as there); not cached. Raises
        NoFaceError etc."""
        return self._embed_one(self.align_file(bytes(data), name, decoded), name)

    def _embed_one(self, a: Aligned, name: str) -> FaceFeatures:
        """The network on one aligned face -> its FaceFeatures (not cached)."""
        desc, grids = self.embed_chips(a.chip[None])
        return self._features(a, desc[0], {k: v[0] for k, v in grids.items()}, name)

    def extract_file(self, path: str | Path) -> FaceFeatures:
        """`extract` on an image file (cached)."""
        fs = self.extract_paths([path], progress=False, raise_errors=True)
        return fs[0]

    @staticmethod
    def _features(a: Aligned, desc: np.ndarray, grids: dict[str, np.ndarray],
                  name: str) -> FaceFeatures:
        from facerank.face.quality import chip_sharpness

        d = a.detection
        l68 = d.landmarks68 if d.landmarks68 is not None else np.full((68, 2), np.nan)
        return FaceFeatures(
            embedding=l2_normalize(desc.astype(np.float32)), descriptor=desc.astype(np.float32),
            grids=grids, landmarks5=d.landmarks5 if a.points is None else a.points,
            landmarks68=l68,
            chip_landmarks68=a.chip_landmarks68, box=d.box, det_score=d.score,
            det_source=d.source, path=name, sharpness=float(chip_sharpness(a.chip)[0]),
        )

    # ---- many images ---------------------------------------------------------------------

    def extract_paths(
        self,
        paths: Iterable[str | Path],
        progress: bool = True,
        raise_errors: bool = False,
        description: str = "extracting",
        points5: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> FeatureSet:
        """Features for many files, in order; bad files are skipped and listed in `failures`.

        points5 (N, 5, 2): known ArcFace points of each image's face (eye centres, nose tip,
        mouth corners, as a benchmark's landmark file gives them); then nothing is detected.
        """
        paths = [str(p) for p in paths]
        known = None
        if points5 is not None:
            pts = np.asarray(points5, dtype=np.float64)
            if pts.shape != (len(paths), 5, 2):
                raise InputError(f"points5 must be ({len(paths)}, 5, 2), got {pts.shape}")
            known = dict(zip(paths, pts, strict=True))
        return self._extract_items(
            paths, lambda p: Path(p).read_bytes() if Path(p).is_file() else b"",
            progress, raise_errors, description, known)

    def extract_blobs(
        self,
        blobs: Sequence[bytes],
        names: Sequence[str],
        progress: bool = True,
        raise_errors: bool = False,
        description: str = "extracting",
    ) -> FeatureSet:
        """`extract_paths` on encoded image files held in memory (`names[i]` names
        `blobs[i]` in errors and in `FeatureSet.paths`); cached by content as files are."""
        if len(blobs) != len(names):
            raise InputError(f"{len(blobs)} images but {len(names)} names")
        by_name = dict(zip(names, blobs, strict=True))
        if len(by_name) != len(names):
            raise InputError("extract_blobs needs one distinct name per image")
        return self._extract_items(list(names), by_name.__getitem__, progress, raise_errors,
                                   description)

    def _extract_items(
        self,
        paths: list[str],
        read: Callable[[str], bytes],
        progress: bool,
        raise_errors: bool,
        description: str,
        known: dict[str, np.ndarray] | None = None,
    ) -> FeatureSet:
        """Features of the images `read(name)` returns (b"": missing), in order; `known`:
        name -> (5, 2) ArcFace points of its face (no detection)."""
        results: dict[int, FaceFeatures] = {}
        failures: list[tuple[str, str]] = []
        pending: list[tuple[int, str, Aligned]] = []

        def flush() -> None:
            if not pending:
                return
            desc, grids = self.embed_chips(np.stack([a.chip for _, _, a in pending]))
            for j, (i, digest, a) in enumerate(pending):
                f = self._features(a, desc[j], {k: v[j] for k, v in grids.items()}, paths[i])
                results[i] = f
                self._cache_put(digest, f)
            pending.clear()

        with progress_bar(progress, description, len(paths)) as advance:
            for i, p in enumerate(paths):
                try:
                    data = read(p)
                    digest = file_digest(data)
                    if known is not None:  # the same file at given points is another face
                        pts = np.round(known[p], 2).tobytes().hex()
                        digest = file_digest(f"{digest}-points5-{pts}".encode())
                    elif self.aligned != "none":  # a file read as a crop is another face
                        digest = file_digest(f"{digest}-aligned-{self.aligned}".encode())
                    cached = self._cache_get(digest, p) if data else None
                    if cached is not None and not np.isfinite(cached.sharpness):
                        cached.sharpness = self._sharpness_at(data, p, cached.landmarks5)
                        if np.isfinite(cached.sharpness):  # computed once, then kept
                            self._cache_put(digest, cached)
                    if cached is not None:
                        results[i] = cached
                    else:
                        if known is None:
                            a = self.align_file(data, p)
                        else:
                            a = self.align_points5(load_image(data if data else p, name=p),
                                                   known[p])
                        pending.append((i, digest, a))
                        if len(pending) >= self.batch_size:
                            flush()
                except FacerankError as e:
                    if raise_errors:
                        raise
                    failures.append((p, str(e)))
                advance()
            flush()
        items = [results[i] for i in sorted(results)]
        return FeatureSet.stack(items, failures, self.grid_names)

    def _sharpness_at(self, data: bytes, name: str, points: np.ndarray) -> float:
        """`chip_sharpness` of the chip cut again at the stored points of a cached face (an
        entry written before sharpness was stored); NaN if that fails."""
        from facerank.face.quality import chip_sharpness

        try:
            chip = self.backbone.align_points(load_image(data, name=name), points)
            return float(chip_sharpness(chip)[0])
        except (FacerankError, ValueError):
            return float("nan")

    # ---- cache ---------------------------------------------------------------------------

    def _cache_path(self, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / digest[:2] / f"{digest}.npz"

    def _cache_get(self, digest: str, name: str) -> FaceFeatures | None:
        path = self._cache_path(digest)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if self.detector.landmarks68 and not np.isfinite(z["chip_landmarks68"]).any():
                    return None  # cached without the 68 points this extractor needs: recompute
                return FaceFeatures(
                    embedding=l2_normalize(z["descriptor"]), descriptor=z["descriptor"],
                    grids={n: z[f"grid_{n}"].astype(np.float32) for n in self.grid_names},
                    landmarks5=z["landmarks5"], landmarks68=z["landmarks68"],
                    chip_landmarks68=z["chip_landmarks68"], box=z["box"],
                    det_score=float(z["det_score"]), det_source=str(z["det_source"]),
                    path=name,
                    sharpness=float(z["sharpness"]) if "sharpness" in z.files else float("nan"),
                )
        except (OSError, KeyError, ValueError):
            return None  # a damaged entry is recomputed and rewritten

    def _cache_put(self, digest: str, f: FaceFeatures) -> None:
        path = self._cache_path(digest)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{digest}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp, descriptor=f.descriptor, landmarks5=f.landmarks5, landmarks68=f.landmarks68,
            chip_landmarks68=f.chip_landmarks68, box=f.box, det_score=f.det_score,
            det_source=f.det_source, sharpness=f.sharpness,
            **{f"grid_{n}": f.grids[n].astype(np.float16) for n in self.grid_names},
        )
        tmp.replace(path)


def landmark_models(backbone: str, detector: str, no_face: str) -> tuple[bool, bool]:
    """(dlib 68-point model, dlib 5-point model on YuNet faces) that extraction needs.

    dlib's chip is cut from its 5 points; SFace's ArcFace crop needs 5 points that only YuNet
    finds itself, so HOG/MMOD detections and fallback boxes take them from the 68 landmarks
    (a non-default path). Anything else that reads the 68 landmarks (the lmk patch weighting)
    asks for them itself.
    """
    need68 = backbone != "dlib" and (detector != "yunet" or no_face != "none")
    return need68, backbone == "dlib"


def make_extractor(detector: str = "yunet", faces: str = "largest", no_face: str = "none",
                   model: Path | None = None, cache: bool = True, aligned: str = "none",
                   backbone: str = "dlib", landmarks68: bool = False) -> FeatureExtractor:
    """A FeatureExtractor from the CLI's and API's options: detector ("yunet", "hog", ...),
    which faces, what to do without one, a dlib .dat `model`, pre-aligned input and the
    backbone name. Models load here, not at import. landmarks68: also load dlib's 68-point
    predictor (non-commercial licence; needed only by the lmk patch weighting)."""
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor
    from facerank.models.backbone import make_backbone

    need68, need5 = landmark_models(backbone, detector, no_face)
    det = FaceDetector(method=detector, policy=faces, fallback=no_face,  # type: ignore[arg-type]
                       landmarks68=landmarks68 or need68, landmarks5=need5)
    if backbone == "dlib":
        from facerank.models.dlib_resnet import DlibResNet

        return FeatureExtractor(backbone=DlibResNet.from_dat(model), detector=det, cache=cache,
                                aligned=aligned)
    if model is not None:
        raise InputError(f"--model is a dlib .dat file; it does not apply to --backbone {backbone}")
    return FeatureExtractor(backbone=make_backbone(backbone), detector=det, cache=cache,
                            aligned=aligned)
