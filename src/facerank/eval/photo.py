"""Photo-level occlusion protocols: occlude the 250x250 photo, then detect, align and embed it.

    lfw-mask-photo        the 9,164 LFW-1680 photos with the seeded face mask of `lfw-mask`
    lfw-sunglasses-photo  ... with the seeded sunglasses of `lfw-sunglasses`

`photo_queries` also makes the harder variants of `eval.photo_variants` (hands, scarves, caps,
shaded masks, low light, low resolution and their combinations) by name.

The chip-level protocols draw the occluder on the aligned chip after the clean face was found,
so they never test the detector. Here the same generators (`eval.occlusion`, same seed and image
id, so the same colour, shape and pattern draws) paint on the photo itself, placed by the 68
landmarks of the *clean* photo in image coordinates under the fixed evaluation set-up
(`protocols.lfw_extractor`: HOG, centre face, central box), so every detector sees identical
photos. The query then goes through the extractor under test as a user's photo would. Gallery
rule as `lfw-mask`: all 13,233 clean images minus the query's own original.

`detected` (in the settings) is the share of queries where the detector found a face rather than
falling back to the central box; `found` additionally asks that the kept face's box centre lies in
the clean photo's face box (the right person on photos with several faces).
"""

from __future__ import annotations

import hashlib

import numpy as np

from facerank._util.progress import progress_bar
from facerank.errors import InputError
from facerank.face.features import FeatureExtractor, FeatureSet
from facerank.face.imageio import load_image

PHOTO_PROTOCOLS = {"lfw-mask-photo": "mask", "lfw-sunglasses-photo": "sunglasses"}


def occlude_photo(kind: str, image: np.ndarray, landmarks68: np.ndarray, seed: int,
                  image_id: str) -> np.ndarray:
    """The chip-level occluder `kind` drawn on a whole photo (H, W, 3) uint8 from its 68
    landmarks (68, 2) in image pixels, with the stream of (seed, kind, image_id)."""
    from facerank.eval.occlusion import OCCLUSIONS, occlusion_rng

    if kind not in OCCLUSIONS:  # the harder photo variants (`eval.photo_variants`)
        from facerank.eval.photo_variants import photo_variant_image

        return photo_variant_image(kind, image, landmarks68, seed, image_id)
    return OCCLUSIONS[kind](image, landmarks68, occlusion_rng(seed, kind, image_id))


def photo_queries(data, kind: str, query_index: np.ndarray, seed: int,  # noqa: ANN001
                  landmarks68: np.ndarray, boxes: np.ndarray,
                  extractor: FeatureExtractor | None = None,
                  progress: bool = True) -> FeatureSet:
    """Features of occluded photos of `query_index` through `extractor` (default: the one of
    `data`, an `EvalData`); landmarks68 (N_lfw, 68, 2) / boxes (N_lfw, 4) of the clean photos
    place the occluder and define `found`. Cached per (kind, seed, queries, landmarks,
    extractor configuration). The extractor needs a no-face fallback: every query is ranked."""
    from facerank.eval.occlusion import OCCLUSIONS, VERSION
    from facerank.eval.photo_variants import VARIANTS_VERSION

    version = VERSION if kind in OCCLUSIONS else f"{VERSION}.{VARIANTS_VERSION}"
    fx = extractor or data.extractor
    if fx.detector.fallback == "none":
        raise InputError("photo-level protocols rank every query: use a detector with a "
                         "no-face fallback (center), as the LFW set-up does")
    cache = None
    if fx.cache_dir is not None:
        h = hashlib.sha1(query_index.astype(np.int64).tobytes())
        h.update(np.ascontiguousarray(landmarks68[query_index], dtype=np.float64).tobytes())
        cache = fx.cache_dir.parent.parent / "protocols" / fx.config_digest / (
            f"photo-{kind}-v{version}-seed{seed}-n{len(query_index)}-{h.hexdigest()[:12]}.npz")
        if cache.is_file():
            return FeatureSet.load(cache)
    lfw = data.lfw
    rel = [str(p.relative_to(lfw.root)) for p in lfw.paths]
    items = []
    batch = fx.batch_size
    with progress_bar(progress, f"{kind} photos", len(query_index)) as advance:
        for s in range(0, len(query_index), batch):
            idx = query_index[s: s + batch]
            aligned = []
            for i in idx:
                img = occlude_photo(kind, load_image(lfw.paths[i]), landmarks68[i], seed, rel[i])
                name = f"{lfw.paths[i]}#{kind}-photo-seed{seed}"
                aligned.append((name, fx.align(img, name)))
            desc, grids = fx.embed_chips(np.stack([a.chip for _, a in aligned]))
            for j, (name, a) in enumerate(aligned):
                items.append(fx._features(a, desc[j], {k: v[j] for k, v in grids.items()},
                                          name))
            advance(len(idx))
    out = FeatureSet.stack(items, grid_names=fx.grid_names)
    if cache is not None:
        out.save(cache)
    return out


def detection_stats(queries: FeatureSet, clean_boxes: np.ndarray) -> dict:
    """Share of queries with a real detection, and with the kept box centred in the clean box."""
    detected = np.array([not s.startswith("fallback") for s in queries.det_sources])
    centre = (queries.boxes[:, :2] + queries.boxes[:, 2:]) / 2  # (Q, 2)
    inside = ((centre >= clean_boxes[:, :2]) & (centre <= clean_boxes[:, 2:])).all(axis=1)
    sources: dict[str, int] = {}
    for s in queries.det_sources:
        sources[s] = sources.get(s, 0) + 1
    return {"detected": float(detected.mean()) if len(detected) else 0.0,
            "found": float((detected & inside).mean()) if len(detected) else 0.0,
            "sources": sources}
