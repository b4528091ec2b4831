"""Cached features every head trains on: all LFW images clean, plus seeded variants.

Variants are made exactly as the evaluator makes its occluded queries
(`facerank.eval.protocols.occluded_queries`: the dlib chip of the clean detection, edited by
`facerank.eval.occlusion.occlude`, embedded again), but for all 13,233 images, so the
one-image people of the training half are there too, and with a training seed (1) that differs
from the evaluation seed (0): a head never sees the exact occluders it is tested on. Each
variant set is cached under `<cache>/protocols/` like the evaluator's, so ViT, URL and IDA-L
extract once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerank.eval.protocols import EvalData, occluded_queries
from facerank.face.features import FeatureExtractor, FeatureSet
from facerank.train.split import identity_fold

VARIANTS = ("crop", "mask", "sunglasses")
TRAIN_VARIANT_SEED = 1  # the evaluator's occluded queries use seed 0


@dataclass
class TrainingData:
    """Row i of `clean` and of every `variants[kind]` is LFW image i."""

    data: EvalData
    variants: dict[str, FeatureSet]
    labels: np.ndarray  # (N,) identity of each image
    fold: np.ndarray  # (N,) bool, `identity_fold(labels, split_seed)`
    split_seed: int
    variant_seed: int

    @property
    def clean(self) -> FeatureSet:
        return self.data.features

    def rows(self, train_fold: bool) -> tuple[np.ndarray, np.ndarray]:
        """(train_rows, test_rows): images of the training identities, and of the others."""
        return np.flatnonzero(self.fold == train_fold), np.flatnonzero(self.fold != train_fold)

    def describe(self) -> dict:
        return {"variants": sorted(self.variants), "variant_seed": self.variant_seed,
                "split_seed": self.split_seed, "backbone": self.data.extractor.model_id}


def load_training_data(extractor: FeatureExtractor | None = None,
                       kinds: tuple[str, ...] = VARIANTS, split_seed: int = 0,
                       variant_seed: int = TRAIN_VARIANT_SEED, progress: bool = True,
                       data: EvalData | None = None) -> TrainingData:
    """Clean features of all LFW images and the `kinds` variants of each (cached)."""
    data = data or EvalData.load(extractor, progress=progress)
    every = np.arange(len(data.lfw), dtype=np.int64)
    variants = {k: occluded_queries(data, k, every, variant_seed, progress) for k in kinds}
    labels = data.lfw.labels
    return TrainingData(data, variants, labels, identity_fold(labels, split_seed), split_seed,
                        variant_seed)


def variant_queries(labels: np.ndarray, n: int = 1000, seed: int = 0, split_seed: int = 0,
                    train_fold: bool = False) -> np.ndarray:
    """(min(n, M),) sorted LFW rows: a seeded subset of the M images of one identity half
    (`identity_fold(labels, split_seed) == train_fold`) whose person has >= 2 images, so each
    has a mate left in the gallery once its own original is excluded."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rows = np.flatnonzero((identity_fold(labels, split_seed) == train_fold)
                          & (counts[inverse] >= 2))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, min(n, len(rows)), replace=False))


def photo_variant(name: str, rows: np.ndarray, seed: int = TRAIN_VARIANT_SEED,
                  extractor: FeatureExtractor | None = None, data: EvalData | None = None,
                  progress: bool = True, queries: FeatureExtractor | None = None) -> FeatureSet:
    """Features (len(rows) faces, row j = LFW image rows[j]) of the photo variant `name`
    (`facerank.eval.photo_variants.PHOTO_VARIANTS`: shaded masks, hands, scarves, caps, low
    light, low resolution and their combinations; "clean": the unedited photo), drawn on the
    photo before detection and placed by the clean photo's landmarks under the evaluation
    set-up, then detected and embedded by `queries` (default: the extractor of `data`, which is
    `extractor` or the evaluation set-up, dlib; pass `lfw_extractor(backbone="sface")` for
    SFace, or `query_extractor("yunet", "sface")` for the product's detector). Cached in
    FACERANK_CACHE per (variant, seed, rows, extractor)."""
    from facerank.eval.photo import photo_queries
    from facerank.eval.protocols import _is_lfw_setup, lfw_extractor

    data = data or EvalData.load(extractor, progress=progress)
    fx = queries or data.extractor
    rows = np.asarray(rows, dtype=np.int64)
    if name == "clean":
        if fx is data.extractor:
            return data.features.take(rows)
        return fx.extract_paths([data.lfw.paths[i] for i in rows], progress=progress,
                                raise_errors=True)
    clean = data if _is_lfw_setup(data.extractor) else EvalData.load(
        lfw_extractor(data.extractor.cache_dir is not None), progress=progress)
    return photo_queries(data, name, rows, seed, clean.features.landmarks68,
                         clean.features.boxes, fx, progress=progress)


def query_extractor(detector: str = "yunet", backbone: str = "sface",
                    cache: bool = True) -> FeatureExtractor:
    """The product's query chain for LFW photo variants: `detector` (YuNet by default), the
    largest face, and a central box where no face is found (`det_sources` "fallback...") so
    every query still ranks; `found_face(q)` tells the two apart."""
    from facerank.face.features import make_extractor

    return make_extractor(detector=detector, faces="largest", no_face="center",
                          backbone=backbone, cache=cache)


def found_face(q: FeatureSet) -> np.ndarray:
    """(Q,) bool: the detector found a face (not the no-face fallback box)."""
    return np.array([not s.startswith("fallback") for s in q.det_sources], dtype=bool)
