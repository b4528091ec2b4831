"""Benchmarks the user holds on disk: insightface `.bin` verification sets, IJB-B/C and
TinyFace (readers in `facerank.eval.readers`), scored with the same metrics as the LFW
protocols (`facerank.eval.metrics`, `protocols.verification_metrics`).

    bin:PATH        10-fold accuracy, TAR@FAR 1e-3 / 1e-2, AUC; pre-aligned 112x112 crops
                    (read as `--aligned arcface112`: SFace uses them as they are, dlib cuts its
                    chip from the template's points)
    ijb:FOLDER      1:1 TAR@FAR 1e-4 / 1e-5 on template pairs; 1:N TPIR@FPIR 1e-2 / 1e-1 and
                    rank-1/5 per gallery when the 1:N csvs are present; faces aligned from the
                    landmark file's 5 points; templates pooled (`pool_templates`)
    tinyface:FOLDER rank-1/5/20 of Probe against Gallery_Match + Gallery_Distractor
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from facerank.calibrate.base import Calibrator
from facerank.errors import DataError, InputError
from facerank.eval import metrics
from facerank.eval.protocols import verification_metrics
from facerank.eval.readers.ijb import IJB, TemplateList
from facerank.eval.readers.insightface_bin import VerificationBin
from facerank.face.features import FeatureExtractor, FeatureSet
from facerank.rerank.base import Reranker

KINDS = ("bin", "ijb", "tinyface")


def split_target(target: str) -> tuple[str, Path] | None:
    """("bin" | "ijb" | "tinyface", path) of "KIND:PATH", None for an LFW protocol name."""
    kind, sep, rest = target.partition(":")
    if not sep or kind not in KINDS:
        return None
    if not rest:
        raise InputError(f"{target!r}: give a path after '{kind}:'")
    return kind, Path(rest).expanduser()


def bin_extractor(backbone: str = "dlib", cache: bool | Path = True) -> FeatureExtractor:
    """The extractor for `.bin` crops: ArcFace-112 template points, no detection."""
    from facerank.face.detect import FaceDetector

    return FeatureExtractor(backbone=backbone, detector=FaceDetector(policy="center",
                                                                     fallback="center"),
                            cache=cache, aligned="arcface112")


def embed_bin(vb: VerificationBin, fx: FeatureExtractor, progress: bool = True
              ) -> tuple[FeatureSet, np.ndarray]:
    """Features of the distinct images of a `.bin` and, per image (2P,), its feature row.

    An image that is not a decodable square crop stops the run with one line naming it."""
    digests = np.array([hashlib.sha1(b).hexdigest() for b in vb.images])
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    names = [f"{vb.path.name}#{i}" for i in first]
    feats = fx.extract_blobs([vb.images[i] for i in first], names, progress=progress,
                             raise_errors=True, description=f"{vb.path.name} crops")
    return feats, inverse.astype(np.int64)


def run_bin(vb: VerificationBin, feats: FeatureSet, rows: np.ndarray,
            stage2: Reranker | None = None,
            calibrators: dict[str, Calibrator | None] | None = None) -> dict[str, Any]:
    """Verification metrics of a `.bin`'s pairs: Stage 1 cosine, optional Stage 2 pair scores
    and optional calibrators ({label: calibrator}); feats/rows from `embed_bin`."""
    ra, rb = rows[vb.a], rows[vb.b]
    emb = feats.embeddings
    a, b = emb[ra], emb[rb]
    out: dict[str, Any] = {"stage1": verification_metrics(np.einsum("pd,pd->p", a, b), vb)}
    if stage2 is not None:
        out["stage2"] = verification_metrics(stage2.score_pairs(feats.take(ra), feats.take(rb)),
                                             vb)
    for label, cal in (calibrators or {}).items():
        if cal is not None:
            out[label] = verification_metrics(cal.score_pairs(a, b), vb)
    out["settings"] = {"protocol": f"bin:{vb.path}", "n_pairs": len(vb),
                       "n_images": len(vb.images), "n_distinct_images": len(feats),
                       "stage2": stage2.describe() if stage2 else "none"}
    return out


def lfw_bin_images(data, pairs, which: np.ndarray | None = None,  # noqa: ANN001
                   quality: int = 95) -> tuple[list[bytes], np.ndarray]:
    """(2P encoded 112x112 ArcFace crops, (P,) same) of LFW pairs, for writing a `.bin`.

    data: `protocols.EvalData` of a backbone whose `landmarks5` are ArcFace points (sface);
    pairs: `readers.lfw.Pairs`; which: pair indices (default all). Crops are cut with
    `align.arcface.arcface_chip` from each photo's detected points and JPEG-encoded
    (`quality`), as insightface's .bin files hold them.
    """
    import cv2

    from facerank.face.align.arcface import arcface_chip
    from facerank.face.imageio import load_image

    if data.extractor.backbone.name != "sface":
        raise InputError("lfw_bin_images needs features whose points are ArcFace's (sface)")
    idx = np.arange(len(pairs.a)) if which is None else np.asarray(which)
    cache: dict[int, bytes] = {}
    out: list[bytes] = []
    for i in idx:
        for row in (int(pairs.a[i]), int(pairs.b[i])):
            if row not in cache:
                chip = arcface_chip(load_image(data.lfw.paths[row]), data.features.landmarks5[row])
                ok, buf = cv2.imencode(".jpg", chip[:, :, ::-1],
                                       [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise DataError(f"{data.lfw.paths[row]}: could not encode its crop")
                cache[row] = buf.tobytes()
            out.append(cache[row])
    return out, np.asarray(pairs.same)[idx]


# ---- templates --------------------------------------------------------------------------------


def pool_templates(embeddings: np.ndarray, templates: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Template features: the (weighted) mean of each template's L2-normalised embeddings,
    normalised again.

    embeddings (N, D), templates (N,) int ids, weights (N,) >= 0 (e.g. URL confidences) or
    None for a plain mean. Returns (template ids (T,) sorted, features (T, D) float32).
    """
    emb = np.asarray(embeddings, np.float64)
    t = np.asarray(templates)
    if emb.ndim != 2 or len(t) != len(emb):
        raise InputError(f"pool_templates: {len(t)} template ids for embeddings of shape "
                         f"{emb.shape}")
    w = np.ones(len(emb)) if weights is None else np.clip(np.asarray(weights, np.float64), 0, None)
    if len(w) != len(emb):
        raise InputError(f"pool_templates: {len(w)} weights for {len(emb)} embeddings")
    ids, inv = np.unique(t, return_inverse=True)
    acc = np.zeros((len(ids), emb.shape[1]))
    np.add.at(acc, inv, emb * w[:, None])
    norms = np.linalg.norm(acc, axis=1, keepdims=True)
    empty = norms[:, 0] == 0  # all weights zero: fall back to the plain mean
    if empty.any():
        plain = np.zeros_like(acc)
        np.add.at(plain, inv, emb)
        acc[empty] = plain[empty]
        norms = np.linalg.norm(acc, axis=1, keepdims=True)
    return ids, (acc / np.maximum(norms, 1e-12)).astype(np.float32)


def url_weights(feats: FeatureSet, fx: FeatureExtractor) -> np.ndarray:
    """(N,) URL face confidences of features made by `fx`, for confidence-weighted pooling."""
    from facerank.uncertainty.confidence import confidences, default_head

    found = default_head(fx.model_id)
    if found is None:
        raise InputError(f"no URL confidence head for backbone {fx.backbone.name} (or "
                         "FACERANK_URL=off); pool with the plain mean (--pool mean)")
    return np.asarray(confidences(feats, found[0]).face, np.float64)


def cmc(scores: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray,
        ranks: tuple[int, ...] = (1, 5, 20)) -> dict[str, float]:
    """Rank-k identification rates of closed-set probes.

    scores (Q, G), probe_labels (Q,), gallery_labels (G,) (-1 or any label no probe has =
    distractor). A probe's rank is 1 + the number of gallery items scoring strictly above its
    best mate (ties favour the mate); every probe must have a mate.
    """
    s = np.asarray(scores, np.float64)
    mate = gallery_labels[None, :] == probe_labels[:, None]  # (Q, G)
    if not mate.any(axis=1).all():
        raise InputError("cmc: every probe needs a mate in the gallery")
    best = np.where(mate, s, -np.inf).max(axis=1)  # (Q,)
    rank = 1 + (s > best[:, None]).sum(axis=1)  # (Q,)
    return {f"rank{k}": float((rank <= k).mean()) for k in ranks}


def _chunked_cmc(q: np.ndarray, q_lab: np.ndarray, g: np.ndarray, g_lab: np.ndarray,
                 ranks: tuple[int, ...], chunk: int = 512) -> dict[str, float]:
    hits = {k: 0.0 for k in ranks}
    for s in range(0, len(q), chunk):
        part = cmc(q[s : s + chunk] @ g.T, q_lab[s : s + chunk], g_lab, ranks)
        n = len(q[s : s + chunk])
        for k in ranks:
            hits[k] += part[f"rank{k}"] * n
    return {f"rank{k}": hits[k] / len(q) for k in ranks}


def embed_ijb(ijb: IJB, fx: FeatureExtractor, progress: bool = True) -> FeatureSet:
    """Features of every IJB face, aligned from its 5 landmark-file points."""
    return fx.extract_paths(ijb.images, progress=progress, raise_errors=True,
                            description=f"{ijb.name} faces", points5=ijb.points5)


def run_ijb(ijb: IJB, feats: FeatureSet, weights: np.ndarray | None = None) -> dict[str, Any]:
    """1:1 TAR@FAR 1e-4 / 1e-5 (+ AUC) and, when present, 1:N TPIR@FPIR 1e-2 / 1e-1 and
    rank-1/5 per gallery (probes whose subject is not in that gallery are non-mated)."""
    ids, tf = pool_templates(feats.embeddings, ijb.templates, weights)
    t1, t2 = np.searchsorted(ids, ijb.pair_t1), np.searchsorted(ids, ijb.pair_t2)
    scores = np.einsum("pd,pd->p", tf[t1], tf[t2])
    tar = metrics.tar_at_far(scores, ijb.pair_same, [1e-4, 1e-5])
    out: dict[str, Any] = {
        "1:1": {"tar_at_far_1e-4": float(tar["tar"][0]), "tar_at_far_1e-5": float(tar["tar"][1]),
                "achieved_far": tar["achieved_far"],
                "auc": float(metrics.roc_auc(scores, ijb.pair_same)),
                "n_pairs": len(scores), "n_genuine": int(ijb.pair_same.sum())},
        "settings": {"protocol": f"ijb:{ijb.root}", "set": ijb.name, "n_faces": len(feats),
                     "n_templates": len(ids),
                     "pooling": "mean" if weights is None else "URL-confidence-weighted mean"},
    }
    if ijb.probes is not None:
        out["1:N"] = {g: _one_to_n(ids, tf, gal, ijb.probes) for g, gal in ijb.galleries.items()}
        out["1:N"]["mean"] = {k: float(np.mean([v[k] for v in out["1:N"].values()]))
                              for k in next(iter(out["1:N"].values()))
                              if not k.startswith("n_")}
    return out


def _one_to_n(ids: np.ndarray, tf: np.ndarray, gal: TemplateList, probes: TemplateList
              ) -> dict[str, float]:
    g = tf[np.searchsorted(ids, gal.templates)]
    q = tf[np.searchsorted(ids, probes.templates)]
    mated = np.isin(probes.subjects, gal.subjects)
    if not mated.any() or mated.all():
        raise DataError(f"{probes.path}: against {gal.path.name} the probes must include both "
                        "mated and non-mated subjects")
    res = metrics.tpir_at_fpir(q[mated] @ g.T, probes.subjects[mated], q[~mated] @ g.T,
                               gal.subjects, [0.01, 0.1])
    ranks = _chunked_cmc(q[mated], probes.subjects[mated], g, gal.subjects, (1, 5))
    return {"tpir_at_fpir_1e-2": float(res["tpir"][0]), "tpir_at_fpir_1e-1": float(res["tpir"][1]),
            **ranks, "n_gallery": len(g), "n_mated": int(mated.sum()),
            "n_nonmated": int((~mated).sum())}


def tinyface_extractor(backbone: str = "dlib", cache: bool | Path = True) -> FeatureExtractor:
    """TinyFace crops are whole low-resolution faces: detect, else take the whole image."""
    from facerank.face.detect import FaceDetector

    return FeatureExtractor(backbone=backbone, cache=cache,
                            detector=FaceDetector(policy="largest", fallback="whole"))


def run_tinyface(tf, fx: FeatureExtractor, progress: bool = True) -> dict[str, Any]:  # noqa: ANN001
    """Rank-1/5/20 of TinyFace probes against matches + distractors (`readers.tinyface`)."""
    t0 = time.perf_counter()
    q = fx.extract_paths(tf.probes, progress=progress, raise_errors=True,
                         description="TinyFace probes")
    g = fx.extract_paths(tf.gallery, progress=progress, raise_errors=True,
                         description="TinyFace gallery")
    ranks = _chunked_cmc(q.embeddings, tf.probe_labels, g.embeddings, tf.gallery_labels,
                         (1, 5, 20))
    return {"stage1": ranks,
            "settings": {"protocol": f"tinyface:{tf.root}", "n_probes": len(q),
                         "n_gallery": len(g), "n_distractors": int((tf.gallery_labels < 0).sum()),
                         "detected": float(np.mean([not s.startswith("fallback")
                                                    for s in q.det_sources + g.det_sources]))},
            "seconds": time.perf_counter() - t0}
