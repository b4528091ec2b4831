"""The papers' LFW protocols (DESIGN.md §4), seeded, each taking any Stage-2 re-ranker.

    lfw-1680        9,164 images of the 1,680 people with >= 2 images; each queries the rest
    lfw-crop        those 9,164 as 70 % random crops resized back; gallery = 13,233 clean images
    lfw-mask        ... with a synthetic face mask        (gallery minus the query's own original;
    lfw-sunglasses  ... with synthetic sunglasses          `keep_original=True`: papers' variant)
    lfw-lowres      ... down-scaled to 24 px and back (seeded filter; for URL)
    lfw-pairs       pairs.txt verification, 10 folds
    lfw-openset     one image per person for a seeded half of the 1,680 enrolled; mated probes =
                    their other images, non-mated = the other half's images

Features of the clean images come from the extractor's cache; occluded query sets are cached
per (occlusion, seed, extractor configuration) under `<cache>/protocols/`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facerank._util.progress import progress_bar
from facerank.errors import DataError, InputError
from facerank.eval import metrics
from facerank.eval.readers.lfw import LFW, load_lfw, load_pairs
from facerank.face.features import FeatureExtractor, FeatureSet, file_digest
from facerank.face.imageio import load_image
from facerank.ranking import Ranking, cosine_topk
from facerank.rerank.base import Reranker

IDENTIFICATION = ("lfw-1680", "lfw-crop", "lfw-mask", "lfw-sunglasses", "lfw-lowres")
PROTOCOLS = (*IDENTIFICATION, "lfw-pairs", "lfw-openset")
OCCLUSION_OF = {"lfw-crop": "crop", "lfw-mask": "mask", "lfw-sunglasses": "sunglasses",
                "lfw-lowres": "lowres24"}
# occluders drawn on the photo, then detect + align + embed (facerank.eval.photo); not in `all`
PHOTO = ("lfw-mask-photo", "lfw-sunglasses-photo")


def lfw_extractor(cache: bool | Path = True, backbone: str = "dlib") -> FeatureExtractor:
    """The evaluation set-up: HOG, the face nearest the centre, central box if none found."""
    from facerank.face.detect import FaceDetector

    return FeatureExtractor(detector=FaceDetector(policy="center", fallback="center",
                                                  landmarks68=True),
                            cache=cache, backbone=backbone)


def chain_extractor(detector: str = "lfw", align5: str = "dlib",
                    cache: bool | Path = True, backbone: str = "dlib") -> FeatureExtractor:
    """`lfw_extractor()` for "lfw"; else that set-up (centre face, central box) with another
    detector ("yunet", "hog", "mmod"), to see how a detector chain changes the LFW numbers."""
    from facerank.face.detect import FaceDetector

    if detector == "lfw":
        return lfw_extractor(cache, backbone)
    return FeatureExtractor(detector=FaceDetector(detector, policy="center",  # type: ignore[arg-type]
                                                  fallback="center", align5=align5,  # type: ignore[arg-type]
                                                  landmarks68=True),
                            cache=cache, backbone=backbone)


def _is_lfw_setup(fx: FeatureExtractor) -> bool:
    d = fx.detector
    return (d.method, d.policy, d.fallback, d.upsample, d.retry_upsample) == (
        "hog", "center", "center", 0, True)


@dataclass
class EvalData:
    """LFW with features for all images (row i of `features` is `lfw.paths[i]`)."""

    lfw: LFW
    extractor: FeatureExtractor
    features: FeatureSet
    seconds: float = 0.0

    @classmethod
    def load(cls, extractor: FeatureExtractor | None = None, root: Path | None = None,
             progress: bool = True, extract: Any = None) -> EvalData:
        """extract: run the extraction elsewhere (`facerank.scale.ray.RayExtract`), given
        an extractor with the same settings; the packed cache is shared either way."""
        start = time.perf_counter()
        lfw = load_lfw(root)
        fx = extractor or lfw_extractor()
        packed = _packed_cache(fx, lfw)
        if packed is not None and packed.is_file():
            return cls(lfw, fx, FeatureSet.load(packed), time.perf_counter() - start)
        feats = (extract.extract_paths(lfw.paths) if extract is not None else
                 fx.extract_paths(lfw.paths, progress=progress, description="LFW features"))
        if feats.failures:
            path, msg = feats.failures[0]
            raise DataError(f"{len(feats.failures)} LFW image(s) could not be read; first: {msg}")
        if packed is not None:
            feats.save(packed)
        return cls(lfw, fx, feats, time.perf_counter() - start)


def _packed_cache(fx: FeatureExtractor, lfw: LFW) -> Path | None:
    """One file holding the features of all LFW images, keyed by every file's content hash."""
    if fx.cache_dir is None:
        return None
    h = hashlib.sha1(fx.config_digest.encode())
    for p in lfw.paths:
        h.update(file_digest(p.read_bytes()).encode())
    return fx.cache_dir.parent.parent / "protocols" / fx.config_digest / (
        f"lfw-all-{h.hexdigest()[:16]}.npz")


def occluded_queries(data: EvalData, kind: str, query_index: np.ndarray, seed: int,
                     progress: bool = True) -> FeatureSet:
    """Features of occluded chips of `query_index` images (cached per kind/seed/config)."""
    from facerank.eval.occlusion import VERSION, occlude

    fx = data.extractor
    cache = _occluded_cache(fx, kind, query_index, seed, VERSION)
    if cache is not None and cache.is_file():
        return FeatureSet.load(cache)
    feats = data.features
    rel = [str(p.relative_to(data.lfw.root)) for p in data.lfw.paths]
    items_desc: list[np.ndarray] = []
    items_grids: dict[str, list[np.ndarray]] = {g: [] for g in fx.grid_names}
    chip_l68: list[np.ndarray] = []
    batch = 256
    with progress_bar(progress, f"{kind} queries", len(query_index)) as advance:
        for s in range(0, len(query_index), batch):
            idx = query_index[s : s + batch]
            chips = np.stack([fx.backbone.align_points(load_image(data.lfw.paths[i]),
                                                       feats.landmarks5[i]) for i in idx])
            occluded = occlude(kind, chips, feats.chip_landmarks68[idx], seed,
                               ids=[rel[i] for i in idx])
            desc, grids = fx.embed_chips(occluded)
            items_desc.append(desc)
            for g in fx.grid_names:
                items_grids[g].append(grids[g].astype(np.float16))
            chip_l68.append(fx.detector.chip_landmarks68(occluded,
                                                         box=fx.backbone.geometry.face_box))
            advance(len(idx))
    n = len(query_index)
    out = FeatureSet(
        paths=[f"{data.lfw.paths[i]}#{kind}-seed{seed}" for i in query_index],
        descriptors=np.concatenate(items_desc),
        grids={g: np.concatenate(v) for g, v in items_grids.items()},
        landmarks5=feats.landmarks5[query_index], landmarks68=feats.landmarks68[query_index],
        chip_landmarks68=np.concatenate(chip_l68),
        boxes=feats.boxes[query_index], det_scores=np.zeros(n), det_sources=[kind] * n,
    )
    if cache is not None:
        out.save(cache)
    return out


def _occluded_cache(fx: FeatureExtractor, kind: str, query_index: np.ndarray, seed: int,
                    version: int) -> Path | None:
    if fx.cache_dir is None:
        return None
    digest = hashlib.sha1(query_index.astype(np.int64).tobytes()).hexdigest()[:12]
    return fx.cache_dir.parent.parent / "protocols" / fx.config_digest / (
        f"{kind}-v{version}-seed{seed}-n{len(query_index)}-{digest}.npz")


# ---- identification ------------------------------------------------------------------------


@dataclass
class IdentificationResult:
    protocol: str
    stage1: dict
    stage2: dict | None
    ranking: Ranking
    settings: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def identification(
    queries: FeatureSet,
    query_labels: np.ndarray,
    gallery: FeatureSet,
    gallery_labels: np.ndarray,
    exclude: np.ndarray | None,
    stage2: Reranker | None = None,
    progress: bool = True,
) -> tuple[dict, dict | None, Ranking]:
    """Stage-1 (and Stage-2) retrieval metrics of Q queries against a gallery.

    exclude (Q,): gallery index not to return for each query (its own image), -1 for none.
    The ranking is long enough (max R) for exact MAP@R; Stage 2 re-orders its first k.
    """
    rel = gallery_labels[None, :] == query_labels[:, None]  # (Q, G) bool
    r = rel.sum(axis=1)
    if exclude is not None:
        has = exclude >= 0
        r = r - (has & (gallery_labels[np.where(has, exclude, 0)] == query_labels))
    k_eval = int(max(r.max(initial=1), stage2.k if stage2 else 1))
    t0 = time.perf_counter()
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, k_eval, exclude)
    t1 = time.perf_counter()
    m1 = _retrieval(ranking, query_labels, gallery_labels, r)
    m1["seconds"] = t1 - t0
    if stage2 is None:
        return m1, None, ranking
    ranking2 = stage2.rerank(queries, gallery, ranking, progress=progress)
    m2 = _retrieval(ranking2, query_labels, gallery_labels, r)
    m2["seconds"] = time.perf_counter() - t1
    return m1, m2, ranking2


def _retrieval(ranking: Ranking, q_labels: np.ndarray, g_labels: np.ndarray,
               r: np.ndarray) -> dict:
    match = g_labels[ranking.indices] == q_labels[:, None]
    m = metrics.retrieval_metrics_from_ranked(match, r)
    return {k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in m.items()}


@dataclass
class IdentificationSetup:
    """Queries, gallery and labels of one identification protocol."""

    protocol: str
    queries: FeatureSet
    query_labels: np.ndarray  # (Q,)
    gallery: FeatureSet
    gallery_labels: np.ndarray  # (G,)
    exclude: np.ndarray  # (Q,) gallery index hidden from each query, -1 for none
    query_index: np.ndarray  # (Q,) LFW image index of each query
    settings: dict
    seconds: float


def setup_identification(data: EvalData, protocol: str, seed: int = 0,
                         keep_original: bool = False, limit: int | None = None,
                         progress: bool = True,
                         query_extractor: FeatureExtractor | None = None) -> IdentificationSetup:
    """Build the queries/gallery of lfw-1680 / lfw-crop / lfw-mask / lfw-sunglasses (and the
    photo-level lfw-mask-photo / lfw-sunglasses-photo).

    query_extractor: lfw-1680 and the photo protocols only — the queries go through this chain
    (another detector) while the gallery keeps `data`'s features (the fixed set-up), so one
    detector's effect is measured against the same enrolled features.
    """
    if protocol not in IDENTIFICATION + PHOTO:
        raise InputError(f"unknown identification protocol {protocol!r}; choose from "
                         f"{', '.join(IDENTIFICATION + PHOTO)}")
    lfw, feats = data.lfw, data.features
    all_queries = lfw.people_with_at_least(2)
    pick = np.arange(len(all_queries))
    if limit is not None:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(pick, min(limit, len(pick)), replace=False))
    query_index = all_queries[pick]
    t0 = time.perf_counter()
    extra: dict = {}
    qx = query_extractor or data.extractor
    if query_extractor is not None and protocol not in ("lfw-1680", *PHOTO):
        raise InputError(f"{protocol} occludes chips after the fixed set-up's detection; another "
                         "query detector applies to lfw-1680 and the photo protocols only")
    if protocol in PHOTO:
        from facerank.eval.photo import PHOTO_PROTOCOLS, detection_stats, photo_queries

        # occluders are placed by the fixed set-up's clean landmarks, whatever the detector
        clean = data if _is_lfw_setup(data.extractor) else EvalData.load(
            lfw_extractor(data.extractor.cache_dir is not None), progress=progress)
        # only the queries asked for: a --limit subsample makes slow detectors (MMOD) affordable
        queries = photo_queries(data, PHOTO_PROTOCOLS[protocol], query_index, seed,
                                clean.features.landmarks68, clean.features.boxes, qx,
                                progress=progress)
        gallery_index = np.arange(len(lfw))
        gallery = feats
        exclude = np.full(len(query_index), -1) if keep_original else query_index.copy()
        extra = {"detector": qx.detector.config_id,
                 **detection_stats(queries, clean.features.boxes[query_index])}
    elif protocol == "lfw-1680":
        gallery_index = all_queries
        if query_extractor is None:
            queries = feats.take(query_index)
        else:
            from facerank.eval.photo import detection_stats

            queries = query_extractor.extract_paths([lfw.paths[i] for i in query_index],
                                                    progress=progress, raise_errors=True)
            extra = {"detector": qx.detector.config_id,
                     **detection_stats(queries, feats.boxes[query_index])}
        gallery = feats.take(gallery_index)
        exclude = np.searchsorted(gallery_index, query_index)  # leave-one-out
    else:
        # the full occluded set is built (and cached) once; a limit takes a subset of it, or,
        # while the full set is not cached, builds only its own queries (each image's
        # occlusion is seeded by its id, so both give the same features)
        from facerank.eval.occlusion import VERSION

        kind = OCCLUSION_OF[protocol]
        full_cache = _occluded_cache(data.extractor, kind, all_queries, seed, VERSION)
        if limit is None or (full_cache is not None and full_cache.is_file()):
            queries = occluded_queries(data, kind, all_queries, seed, progress).take(pick)
        else:
            queries = occluded_queries(data, kind, query_index, seed, progress)
        gallery_index = np.arange(len(lfw))
        gallery = feats
        exclude = np.full(len(query_index), -1) if keep_original else query_index.copy()
    settings = {"protocol": protocol, "seed": seed, "keep_original": keep_original,
                "n_queries": len(query_index), "n_gallery": len(gallery_index), **extra}
    return IdentificationSetup(protocol, queries, lfw.labels[query_index], gallery,
                               lfw.labels[gallery_index], exclude, query_index, settings,
                               time.perf_counter() - t0)


def run_identification(data: EvalData, protocol: str, stage2: Reranker | None = None,
                       seed: int = 0, keep_original: bool = False, limit: int | None = None,
                       progress: bool = True,
                       query_extractor: FeatureExtractor | None = None) -> IdentificationResult:
    """One identification protocol, Stage 1 and optional Stage 2 (`setup_identification`)."""
    st = setup_identification(data, protocol, seed, keep_original, limit, progress,
                              query_extractor)
    t1 = time.perf_counter()
    m1, m2, ranking = identification(st.queries, st.query_labels, st.gallery,
                                     st.gallery_labels, st.exclude, stage2, progress)
    settings = {**st.settings, "stage2": stage2.describe() if stage2 else "none"}
    return IdentificationResult(protocol, m1, m2, ranking, settings,
                                {"queries": st.seconds, "search": time.perf_counter() - t1})


# ---- verification and open set --------------------------------------------------------------


def run_pairs(data: EvalData, stage2: Reranker | None = None) -> dict:
    """pairs.txt: 10-fold accuracy, TAR@FAR 1e-3 / 1e-2 and ROC AUC for Stage 1 (and 2)."""
    pairs = load_pairs(data.lfw)
    emb = data.features.embeddings
    out = {"stage1": verification_metrics(np.einsum("pd,pd->p", emb[pairs.a], emb[pairs.b]), pairs)}
    if stage2 is not None:
        scores = stage2.score_pairs(data.features.take(pairs.a),
                                    data.features.take(pairs.b))
        out["stage2"] = verification_metrics(scores, pairs)
    out["settings"] = {"protocol": "lfw-pairs", "n_pairs": len(pairs.a),
                       "stage2": stage2.describe() if stage2 else "none"}
    return out


def verification_metrics(scores: np.ndarray, pairs) -> dict:  # noqa: ANN001
    """10-fold accuracy (± std), TAR@FAR 1e-3 / 1e-2 and ROC AUC of pair scores."""
    acc = metrics.verification_accuracy_10fold(scores, pairs.same, pairs.fold)
    tar = metrics.tar_at_far(scores, pairs.same, [1e-3, 1e-2])
    return {"accuracy": float(acc["mean"]), "accuracy_std": float(acc["std"]),
            "tar_at_far_1e-3": float(tar["tar"][0]), "tar_at_far_1e-2": float(tar["tar"][1]),
            "auc": float(metrics.roc_auc(scores, pairs.same))}


def openset_split(labels: np.ndarray, candidates: np.ndarray, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The open-set protocol's images among `candidates` (image indices whose people have
    >= 2 images): a seeded half of the people is enrolled with one image each.
    Returns (gallery_index, mated probes, non-mated probes)."""
    people = np.unique(labels[candidates])
    rng = np.random.default_rng(seed)
    enrolled = rng.permutation(people)[: len(people) // 2]
    is_enrolled = np.isin(labels[candidates], enrolled)
    gallery_index = np.array([rng.choice(candidates[labels[candidates] == p])
                              for p in enrolled])
    mated = np.setdiff1d(candidates[is_enrolled], gallery_index)
    return gallery_index, mated, candidates[~is_enrolled]


def run_openset(data: EvalData, stage2: Reranker | None = None, seed: int = 0,
                progress: bool = True) -> dict:
    """Open-set identification: TPIR at FPIR 1 % and 10 %, Stage 1 (and Stage 2)."""
    lfw = data.lfw
    gallery_index, mated, nonmated = openset_split(lfw.labels, lfw.people_with_at_least(2), seed)
    gallery = data.features.take(gallery_index)
    g_labels = lfw.labels[gallery_index]
    out: dict = {"settings": {"protocol": "lfw-openset", "seed": seed,
                              "n_gallery": len(gallery_index), "n_mated": len(mated),
                              "n_nonmated": len(nonmated),
                              "stage2": stage2.describe() if stage2 else "none"}}
    for stage in ("stage1", "stage2") if stage2 else ("stage1",):
        mats = []
        for probes in (mated, nonmated):
            q = data.features.take(probes)
            # full ranking: Stage 2 re-scores its top k, the rest keep their cosine
            ranking = cosine_topk(q.embeddings, gallery.embeddings, len(gallery_index))
            if stage == "stage2":
                ranking = stage2.rerank(q, gallery, ranking, progress=progress)
            mat = np.empty((len(probes), len(gallery_index)), dtype=np.float64)
            np.put_along_axis(mat, ranking.indices, ranking.scores.astype(np.float64), axis=1)
            mats.append(mat)
        res = metrics.tpir_at_fpir(mats[0], lfw.labels[mated], mats[1], g_labels, [0.01, 0.1])
        out[stage] = {"tpir_at_fpir_1e-2": float(res["tpir"][0]),
                      "tpir_at_fpir_1e-1": float(res["tpir"][1]), "rank1": float(res["rank1"])}
    return out
