"""One-line Python API, in the spirit of `face_recognition`.

    import facerank
    v = facerank.embed("photo.jpg")                 # (128,) unit-length embedding
    r = facerank.compare("a.jpg", "b.jpg")          # r.cosine (r.same, r.distance with dlib)
    hits = facerank.Gallery.open("my-gallery").search("probe.jpg", k=5)
    groups = facerank.cluster(["photos/"]).groups()  # cluster id -> photo paths

Every function takes a path (str or Path), the file's bytes, a PIL image or a uint8 numpy array
(H, W, 3) RGB or (H, W) grey. The default chain is the CLI's: YuNet detection, the largest face,
no fallback (a photo without a face is a `NoFaceError`), the SFace network on the ArcFace 112
crop (`backbone="dlib"` for the dlib ResNet on its 150 chip).
Paths go through the same on-disk feature cache as the CLI, so both return the same numbers.
Models load once per process and detector setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerank.errors import InputError

if TYPE_CHECKING:
    from facerank.clustering.pipeline import Clusters
    from facerank.face.features import FaceFeatures, FeatureExtractor
    from facerank.gallery import SearchResult, StoredGallery

__all__ = ["DLIB_THRESHOLD", "Comparison", "Gallery", "compare", "embed", "features"]


DLIB_THRESHOLD = 0.6  # dlib's same-person rule on the descriptor distance (as `facerank compare`)


@lru_cache(maxsize=8)
def _extractor(detector: str, faces: str, no_face: str, aligned: str,
               backbone: str = "sface") -> FeatureExtractor:
    from facerank.face.features import make_extractor

    return make_extractor(detector, faces, no_face, aligned=aligned, backbone=backbone)


def _image_array(x: Any, name: str) -> np.ndarray:  # noqa: ANN401 - any image-like input
    """bytes, PIL image or numpy array -> uint8 RGB (H, W, 3)."""
    from PIL import Image

    from facerank.face.imageio import _to_rgb, load_image

    if isinstance(x, bytes | bytearray):
        return load_image(bytes(x), name=name)
    if isinstance(x, Image.Image):
        return _to_rgb(x)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise InputError(f"{name}: image arrays must be uint8, got {x.dtype}; scale to "
                             "0..255 and use .astype(np.uint8)")
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=2)
        if x.ndim != 3 or x.shape[2] not in (3, 4):
            raise InputError(f"{name}: image arrays must be (H, W, 3) RGB or (H, W) grey, got "
                             f"shape {x.shape}")
        return np.ascontiguousarray(x[..., :3])
    raise InputError(f"{name}: expected a path, bytes, a PIL image or a numpy array, got "
                     f"{type(x).__name__}")


def _features(fx: FeatureExtractor, x: Any, name: str = "<image>") -> FaceFeatures:  # noqa: ANN401
    if isinstance(x, str | Path):
        return fx.extract_file(x)
    if isinstance(x, bytes | bytearray):  # as a file: decoded only as far as the face needs
        return fx.extract_bytes(bytes(x), name)
    return fx.extract(_image_array(x, name), name)


def features(x: Any, detector: str = "yunet", faces: str = "largest",  # noqa: ANN401
             no_face: str = "none", aligned: str = "none", backbone: str = "sface") -> FaceFeatures:
    """Everything facerank keeps about the one face in `x` (embedding, grids, landmarks, how the
    face was found: `det_source`, e.g. "yunet", "fallback-center", "aligned-arcface112")."""
    return _features(_extractor(detector, faces, no_face, aligned, backbone), x)


def embed(x: Any, detector: str = "yunet", faces: str = "largest",  # noqa: ANN401
          no_face: str = "none", aligned: str = "none", backbone: str = "sface") -> np.ndarray:
    """The (128,) L2-normalised embedding of the one face in `x` ("sface" or "dlib")."""
    return features(x, detector, faces, no_face, aligned, backbone).embedding


@dataclass(frozen=True)
class Comparison:
    """`compare`'s answer: the numbers `facerank compare` prints."""

    cosine: float
    distance: float | None  # Euclidean distance of dlib descriptors (None for other backbones)
    same: bool | None  # distance < threshold (dlib's rule; None for other backbones)
    threshold: float | None
    sources: tuple[str, str]  # how each face was found
    calibrator: str = "none"  # the score the probability describes: cosine or a calibrator
    calibrated: float | None = None  # the calibrator's score (None without --calibrate)
    probability: float | None = None  # match probability P(same person), equal prior
    verdict_far: str | None = None  # same/different (or cannot tell) at FAR 1e-3

    @classmethod
    def of(cls, fa: FaceFeatures, fb: FaceFeatures, backbone: str = "dlib") -> Comparison:
        """Cosine of two faces' embeddings, plus dlib's distance rule when `backbone` is dlib
        (the 0.6 rule belongs to dlib's descriptor)."""
        sources = (fa.det_source, fb.det_source)
        cosine = float(fa.embedding @ fb.embedding)
        if backbone != "dlib":
            return cls(cosine, None, None, None, sources)
        dist = float(np.linalg.norm(fa.descriptor - fb.descriptor))
        return cls(cosine, dist, dist < DLIB_THRESHOLD, DLIB_THRESHOLD, sources)

    @property
    def decision(self) -> str:
        if self.same is None:
            return "no rule for this backbone"
        return "same person" if self.same else "different people"


def compare(a: Any, b: Any, detector: str = "yunet", faces: str = "largest",  # noqa: ANN401
            no_face: str = "none", aligned: str = "none", backbone: str = "sface",
            calibrate: str = "none",
            calibrate_with: str | Path | None = None,
            probability_with: str | Path | None = None) -> Comparison:
    """Cosine of the faces in `a` and `b` (with backbone="dlib" also dlib's distance and
    same/different at distance < 0.6), plus the match probability P(same person) of the pair
    (from the cosine, or from the score of `calibrate` = asnorm / ida-r / ida-l) when a model
    ships for it."""
    fx = _extractor(detector, faces, no_face, aligned, backbone)
    fa, fb = _features(fx, a, "<image a>"), _features(fx, b, "<image b>")
    return with_probability(Comparison.of(fa, fb, backbone), fa, fb, fx.model_id, calibrate,
                            calibrate_with, probability_with)


def with_probability(cmp: Comparison, fa: FaceFeatures, fb: FaceFeatures, model_id: str,
                     calibrate: str = "none", calibrate_with: str | Path | None = None,
                     probability_with: str | Path | None = None) -> Comparison:
    """`cmp` with the calibrated score, match probability and FAR 1e-3 verdict filled in."""
    from dataclasses import replace

    from facerank.calibrate import factory
    from facerank.models.backbone import backbone_name

    calibrate = factory.resolve_pair(calibrate, model_id)  # auto: cosine outside a gallery
    cal = factory.build(calibrate, None if calibrate_with is None else Path(calibrate_with),
                        model_id)
    score = cmp.cosine if cal is None else float(
        cal.score_pairs(fa.embedding[None], fb.embedding[None])[0])
    model = factory.probability_model(calibrate, backbone_name(model_id),
                                      None if probability_with is None
                                      else Path(probability_with))
    assert not isinstance(model, factory.AutoProbability)
    qa = qb = None
    if model is not None:  # both faces' quality (a quality-aware model; else score only)
        qa = model.face_quality(fa.descriptor, [fa.sharpness])
        qb = model.face_quality(fb.descriptor, [fb.sharpness])
    prob = None if model is None else float(model(np.array([score]), qa, qb)[0])
    return replace(cmp, calibrator=calibrate, calibrated=None if cal is None else score,
                   probability=prob,
                   verdict_far=None if model is None else model.verdict(score, qa=qa, qb=qb))


def cluster(paths: Any, backbone: str = "sface", detector: str = "yunet",  # noqa: ANN401
            store: str | Path | None = None) -> Clusters:
    """Group photos (paths or folders; one face per photo, the largest) into people.
    `.labels` (N,) cluster ids (-1 = unassigned), `.groups()` id -> paths, `.failures` the
    photos without a face. store: a folder that keeps the clusters and the user's corrections,
    so a later call adds new photos without re-clustering the rest."""
    from facerank.clustering.pipeline import cluster_paths

    if isinstance(paths, str | Path):
        paths = [paths]
    return cluster_paths(list(paths), backbone=backbone, detector=detector, store=store)


class Gallery:
    """A persistent gallery folder (made with `facerank gallery create/add`), for searching."""

    def __init__(self, stored: StoredGallery) -> None:
        self.stored = stored

    @classmethod
    def open(cls, folder: str | Path) -> Gallery:
        from facerank.gallery import StoredGallery

        return cls(StoredGallery.open(folder))

    def __len__(self) -> int:
        return len(self.stored)

    def search(self, x: Any, k: int = 10, stage2: str = "auto",  # noqa: ANN401
               gate: str = "auto", aligned: str = "none", calibrate: str = "auto",
               calibrate_with: str | Path | None = None,
               probability_with: str | Path | None = None) -> list[SearchResult]:
        """The best k matches of the face in `x`, as `facerank search` ranks them (the gallery's
        own detector settings; Stage 1 calibrated by `calibrate` = asnorm / ida-r / ida-l, "none",
        or "auto": IDA-R with the gallery's own cohort on a dlib gallery of 400+ identities,
        else cosine; Stage 2 "emd" behind the bundled quality gate, or "none"), each with the
        gallery face's URL confidence and the pair's match probability (from its Stage-1
        score) as the CLI shows them."""
        from facerank.calibrate import factory
        from facerank.face.align.prealigned import check_aligned
        from facerank.face.features import FeatureExtractor, FeatureSet
        from facerank.models.backbone import backbone_name
        from facerank.rerank.base import make_stage2
        from facerank.uncertainty.confidence import attach_results

        fx = self.stored.extractor
        if aligned != "none":
            fx = FeatureExtractor(backbone=fx.backbone, detector=fx.detector,
                                  grids=fx.grid_names, aligned=check_aligned(aligned))
        cal = factory.build(calibrate, None if calibrate_with is None else Path(calibrate_with),
                            fx.model_id)
        model = factory.probability_model(calibrate, backbone_name(fx.model_id),
                                          None if probability_with is None
                                          else Path(probability_with))
        probe = FeatureSet.stack([_features(fx, x, "<probe>")])
        from facerank.models.backbone import backbone_name

        built = backbone_name(self.stored.meta().get("model_id", ""))
        opts = {"gate": gate, **({"backbone": built} if built != "dlib" else {})}
        results = self.stored.search(probe, k=k, stage2=make_stage2(stage2, **opts),
                                     calibrate=cal)
        return factory.attach_probability(attach_results(self.stored, probe, results)[1], model,
                                          probe, self.stored.features())

    def close(self) -> None:
        self.stored.close()
