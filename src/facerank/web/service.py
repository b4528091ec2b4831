"""The search behind the web page: one probe photo in, the JSON the page shows out.

Why a module of its own: `SearchService` holds the long-lived state (gallery, extractor,
Stage 2, calibrator, the Face-ViT scorer, thumbnails) and runs the whole pipeline with no
HTTP in it, so the FastAPI layer (app.py) stays routes only. Data flows one way:
upload.read_upload -> `SearchService.search`: decode -> detect/extract -> gallery search
(Stage 1 + Stage 2 re-rank + calibration) -> confidence -> explanation images -> JSON dict.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facerank.errors import FacerankError, ImageError, InputError, MultipleFacesError, NoFaceError
from facerank.face.detect import YUNET_MAX_SIDE, probe_label
from facerank.face.features import FeatureExtractor, FeatureSet
from facerank.face.imageio import load_image, load_image_reduced, oriented_size
from facerank.gallery import StoredGallery
from facerank.rerank.base import Reranker, make_stage2, stage2_names
from facerank.web.upload import HTTPProblem

DEFAULT_K = 5
MAX_K = 50
THUMB_SIDE = 256
PROBE_SIDE = 720


def _jpeg_data_url(image: np.ndarray, side: int) -> tuple[str, float]:
    """A JPEG data URL of `image` shrunk to fit `side`, and the scale applied."""
    pil = Image.fromarray(image)
    scale = min(1.0, side / max(pil.size))
    if scale < 1.0:
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), scale


def _clean(x: float) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _points(a: np.ndarray) -> list[list[float] | None]:
    """(N, 2) -> [[x, y] | None] (rows with NaN become None)."""
    return [None if not np.isfinite(p).all() else [round(float(p[0]), 2), round(float(p[1]), 2)]
            for p in np.asarray(a, dtype=np.float64)]


class SearchService:
    """The gallery, the probe extractor and Stage 2, shared by all requests (one at a time)."""

    def __init__(self, gallery_dir: Path, stage2: str, extractor: FeatureExtractor | None,
                 calibrate: str = "auto", calibrate_with: Path | None = None) -> None:
        self.gallery_dir = Path(gallery_dir)
        self.gallery = StoredGallery.open(self.gallery_dir, extractor=extractor)
        self.extractor = self.gallery.extractor  # the gallery's own model and detector settings
        from facerank.calibrate import factory
        from facerank.models.backbone import backbone_name
        from facerank.rerank.base import default_stage2

        backbone = backbone_name(self.extractor.model_id)
        if stage2 == "auto":  # the backbone's default chain (SFace: Stage 1 only)
            stage2 = default_stage2(backbone)
        self.reranker, self.stage2_note = self._stage2(stage2, backbone)
        self.calibrator = factory.build(calibrate, calibrate_with, self.extractor.model_id)
        self.probability = factory.probability_model(calibrate, backbone)
        self._vit: Any = None  # Face-ViT scorer for heatmaps, loaded on first use
        self.lock = threading.Lock()  # dlib, torch and matplotlib state: one request at a time
        self._ids: tuple[str, dict[int, str]] = ("", {})
        self._thumbs: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    @staticmethod
    def _stage2(name: str, backbone: str = "dlib") -> tuple[Reranker | None, str | None]:
        """Build Stage 2 for the gallery's backbone (its grids, gate and Face-ViT); an
        unavailable "emd" falls back to Stage 1 only, with a note."""
        try:
            available = stage2_names()
        except ImportError as e:
            if name == "none":
                return None, None
            return None, f"Stage 2 {name!r} is unavailable ({e}); showing Stage 1 only"
        if name not in available:
            if name == "emd":
                return None, "Stage 2 'emd' is not available in this install; showing Stage 1 only"
            raise InputError(f"unknown Stage-2 method {name!r}; choose from "
                             f"{', '.join(available)}")
        return make_stage2(name, **({} if backbone == "dlib" else {"backbone": backbone})), None

    def info(self) -> dict[str, Any]:
        """What the page shows in its header."""
        meta = self.gallery.meta()
        return {
            "gallery": self.gallery_dir.name, "images": len(self.gallery),
            "identities": len(self.gallery.identities()), "model": meta.get("model_id"),
            "stage2": self.reranker.describe() if self.reranker is not None else "none",
            "stage2_note": self.stage2_note, "default_k": DEFAULT_K, "max_k": MAX_K,
            "calibrate": (used.describe() if (used := self.gallery.calibration_used(
                self.calibrator)) is not None else "none"),
            "match_probability": self._describe_probability(),
        }

    def _describe_probability(self, results: list | None = None) -> dict | None:
        from facerank.calibrate.factory import describe_probability

        return describe_probability(self.probability, results)

    # ---- gallery images ------------------------------------------------------------------

    def image_path(self, image_id: int) -> str | None:
        """The stored file of a gallery image id (the id -> path map follows gallery changes)."""
        generation = self.gallery.meta().get("generation", "")
        if self._ids[0] != generation:
            self._ids = (generation, {int(r["id"]): str(r["path"]) for r in self.gallery.images()})
        return self._ids[1].get(image_id)

    def thumbnail(self, image_id: int) -> bytes:
        """JPEG thumbnail of a gallery image; 404 for unknown ids or missing files."""
        with self._thumb_lock:
            return self._thumbnail(image_id)

    def _thumbnail(self, image_id: int) -> bytes:
        path = self.image_path(image_id)
        if path is None:
            raise HTTPProblem(404, f"no gallery image with id {image_id}")
        key = (image_id, path)
        if key in self._thumbs:
            self._thumbs.move_to_end(key)
            return self._thumbs[key]
        try:
            image = load_image(path)
        except ImageError:
            raise HTTPProblem(404, f"the file of gallery image {image_id} is missing or "
                              "unreadable; re-add it to the gallery") from None
        pil = Image.fromarray(image)
        pil.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=85)
        self._thumbs[key] = buf.getvalue()
        if len(self._thumbs) > 512:
            self._thumbs.popitem(last=False)
        return self._thumbs[key]

    # ---- search --------------------------------------------------------------------------

    def search(self, data: bytes, name: str, k: int, explain: bool,
               aligned: str = "none") -> dict[str, Any]:
        """Decode, detect, extract, search and explain one probe photo (in memory); `aligned`
        other than "none" takes a face crop as is (`facerank.face.align.prealigned`)."""
        t0 = time.perf_counter()
        try:  # decoded once, as `FeatureExtractor.align_file` first decodes a file; the
            # face is read from it (and finer decodes where it needs them), and it is shown
            image, scale = load_image_reduced(data, name=name, min_long_side=YUNET_MAX_SIDE)
        except ImageError as e:
            raise HTTPProblem(400, str(e)) from None
        with self.lock:
            t1 = time.perf_counter()
            try:
                fx = self.extractor
                if aligned != "none":
                    from facerank.face.align.prealigned import check_aligned

                    fx = FeatureExtractor(backbone=fx.backbone, detector=fx.detector,
                                          grids=fx.grid_names, cache=False,
                                          aligned=check_aligned(aligned))
                face = fx.extract_bytes(data, name, decoded=(image, scale))
            except NoFaceError:
                raise HTTPProblem(422, f"no face found in {name}; upload a photo where one face "
                                  "is clearly visible, frontal and not too small") from None
            except MultipleFacesError:
                raise HTTPProblem(422, f"several faces found in {name}; crop the photo to the "
                                  "one face you want to search for") from None
            probe = FeatureSet.stack([face])
            t2 = time.perf_counter()
            results = self.gallery.search(probe, k=k, stage2=self.reranker,
                                          calibrate=self.calibrator)
            from facerank.uncertainty.confidence import attach_results  # URL confidence

            probe_conf, results = attach_results(self.gallery, probe, results)
            from facerank.calibrate.factory import attach_probability, top1_verdict

            feats = self.gallery.features()  # one snapshot for the probabilities and verdict
            results = attach_probability(  # the pair's Stage-1 score and both faces' quality
                results, self.probability, probe, feats)
            verdict = top1_verdict(results, self.probability, probe, feats)
            t3 = time.perf_counter()
            explanation, explain_note = None, None
            points = face.landmarks5 / scale  # in the shown image's pixels
            if explain and results:
                explanation, explain_note = self._explain(probe, image, points, results[0],
                                                          name, face.det_source,
                                                          face.det_score)
            explanation_vit = (self._explain_vit(probe, image, points, results[0])
                               if explain and results else None)
            t4 = time.perf_counter()
        stage2_name = getattr(self.reranker, "name", None)
        image_url, _ = _jpeg_data_url(image, PROBE_SIDE)
        w, h = oriented_size(data)  # the photo's own size: box and points are in its pixels
        return {
            "probe": {
                "name": name, "width": w, "height": h, "image": image_url,
                "box": [round(float(v), 2) for v in face.box],
                "landmarks68": _points(face.landmarks68), "landmarks5": _points(face.landmarks5),
                "det_score": _clean(face.det_score), "det_source": face.det_source,
                "confidence": probe_conf,
            },
            "stage2": self.reranker.describe() if self.reranker is not None else "none",
            "stage2_name": stage2_name, "stage2_note": self.stage2_note,
            "results": [{
                "rank": r.rank, "identity": r.identity, "image_id": r.image_id,
                "file": Path(r.path).name, "score": _clean(r.score),
                "stage1": _clean(r.stage_scores.get("stage1", float("nan"))),
                "stage2": _clean(r.stage_scores[stage2_name])
                if stage2_name in r.stage_scores else None,
                "stage_scores": {n: _clean(v) for n, v in r.stage_scores.items()},
                "thumbnail": f"/api/image/{r.image_id}",
                "confidence": r.confidence, "confidences": r.confidences,
                "match_probability": r.probability,
            } for r in results],
            "match_probability": self._describe_probability(results),
            "top1_verdict_far_1e-3": verdict,
            "explanation": explanation, "explanation_note": explain_note,
            "explanation_vit": explanation_vit,
            "timings_ms": {"decode": round(1e3 * (t1 - t0), 1),
                           "extract": round(1e3 * (t2 - t1), 1),
                           "search": round(1e3 * (t3 - t2), 1),
                           "explain": round(1e3 * (t4 - t3), 1)},
        }

    def _explain(self, probe: FeatureSet, image: np.ndarray, landmarks5: np.ndarray,
                 top: Any, name: str, det_source: str = "",
                 det_score: float = 0.0) -> tuple[str | None, str | None]:
        """Flow explanation PNG of the top-1 match as a data URL, or (None, why not)."""
        try:
            from facerank.explain.flow import render_pair
            from facerank.rerank.emd.reranker import Stage2EMD
        except ImportError as e:
            return None, f"explanations are unavailable in this install ({e})"
        reranker = self.reranker if isinstance(self.reranker, Stage2EMD) else Stage2EMD()
        note = None if reranker is self.reranker else (
            f"explained with the default {reranker.describe()} (Stage 2 is off)")
        try:
            cand = self.gallery.features(grids=True).take([top.row])
            # render_pair writes a file: a private temp folder, deleted right after reading
            with tempfile.TemporaryDirectory(prefix="facerank-explain-") as tmp:
                bb = self.extractor.backbone  # chips the grids were computed on
                path, _ = render_pair(probe, cand, Path(tmp) / "flow.png", reranker,
                                      query_chip=bb.align_points(image, landmarks5),
                                      labels=(probe_label("probe", det_source, det_score),
                                              f"#1 {top.identity}"), backbone=bb)
                png = _trim_white(Path(path).read_bytes())
        except (FacerankError, OSError, ValueError) as e:
            return None, f"could not render the explanation ({e})"
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii"), note

    def _explain_vit(self, probe: FeatureSet, image: np.ndarray, landmarks5: np.ndarray,
                     top: Any) -> str | None:
        """Face-ViT relevance heatmaps of the top-1 match as a data URL, beside the flows;
        None when no checkpoint for this backbone ships (the page then shows the flows only).
        """
        try:
            from facerank.explain.vit_heatmap import render_vit_pair
            from facerank.rerank.vit.reranker import Stage2ViT, default_checkpoint

            if self._vit is None:
                model_id = self.extractor.model_id
                self._vit = Stage2ViT.load(default_checkpoint(model_id), backbone=model_id)
            cand = self.gallery.features(grids=True).take([top.row])
            with tempfile.TemporaryDirectory(prefix="facerank-explain-") as tmp:
                bb = self.extractor.backbone
                path, _ = render_vit_pair(probe, cand, Path(tmp) / "vit.png", self._vit,
                                          chip_a=bb.align_points(image, landmarks5),
                                          labels=("probe", f"#1 {top.identity}"), backbone=bb)
                png = _trim_white(Path(path).read_bytes())
        except (ImportError, FacerankError, OSError, ValueError):
            return None
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _trim_white(png: bytes, pad: int = 8) -> bytes:
    """Crop the white margin a matplotlib figure leaves around its panels."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    ink = np.asarray(img).min(axis=2) < 250
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return png
    box = (max(0, int(cols[0]) - pad), max(0, int(rows[0]) - pad),
           min(img.width, int(cols[-1]) + 1 + pad), min(img.height, int(rows[-1]) + 1 + pad))
    buf = io.BytesIO()
    img.crop(box).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()

