"""LFW protocols with a calibrator, identity-disjoint (used by `facerank eval --calibrate`
and `benchmarks/calibrate.py`).

Pairs: per fold, anchors (and IDA-L's training faces) from the people absent from the fold.
Identification / open set: anchors from one identity half, queries and gallery restricted to
the other half's people; both directions are run and reported (and their mean).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from facerank.calibrate.asnorm import DEFAULT_TOP_N, ASNorm
from facerank.calibrate.base import Calibrator
from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU, IDAR
from facerank.errors import InputError
from facerank.eval.protocols import IDENTIFICATION, EvalData, setup_identification
from facerank.eval.readers.lfw import load_pairs
from facerank.eval.studies.calibration_protocols import (
    Factory,
    anchors_from_rows,
    calibrated_topk,
    check_disjoint,
    openset,
    pair_scores,
    pick_per_identity,
    retrieval,
    verification,
)
from facerank.face.features import FeatureSet
from facerank.train.split import identity_fold

PAIR_VARIANT_SEED = 1  # the training harness's cached variants of all LFW images


def lfw_factory(data: EvalData, name: str, k: int = DEFAULT_K, tau: float = DEFAULT_TAU,
                top_n: int = DEFAULT_TOP_N, per_identity: int | None = 1, seed: int = 0,
                epochs: int = 300, max_anchors: int | None = None) -> Factory:
    """rows (LFW images allowed as anchors) -> a calibrator built from them.

    IDA-R / AS-norm: anchors = `per_identity` seeded image(s) per person (at most
    `max_anchors`, seeded). IDA-L: the same anchors, the regressor trained on all `rows`.
    """
    if name not in ("none", "asnorm", "ida-r", "ida-l"):
        raise InputError(f"unknown calibration {name!r}; choose none, asnorm, ida-r or ida-l")
    labels = data.lfw.labels
    names = np.asarray(data.lfw.names)

    def make(rows: np.ndarray) -> Calibrator | None:
        if name == "none":
            return None
        a_rows = pick_per_identity(rows, labels, per_identity, seed)
        if max_anchors is not None and len(a_rows) > max_anchors:
            a_rows = np.sort(np.random.default_rng(seed).choice(a_rows, max_anchors, False))
        anchors = anchors_from_rows(data, a_rows)
        if name == "ida-r":
            return IDAR(anchors, k=k, tau=tau)
        if name == "asnorm":
            return ASNorm(anchors, top_n=top_n)
        from facerank.calibrate.train import fit_idal

        emb = data.features.embeddings
        return fit_idal(anchors, emb[rows], names[labels[rows]], k, tau, epochs=epochs,
                        seed=seed)[0]

    return make


def cached_occlusion(data: EvalData, kind: str, index: np.ndarray, seed: int
                     ) -> FeatureSet | None:
    """The evaluator's occluded features of `index` if already cached, else None (building
    them costs minutes of extraction)."""
    import hashlib

    from facerank.eval.occlusion import VERSION
    from facerank.eval.protocols import occluded_queries

    fx = data.extractor
    if fx.cache_dir is None:
        return None
    digest = hashlib.sha1(index.astype(np.int64).tobytes()).hexdigest()[:12]
    path = fx.cache_dir.parent.parent / "protocols" / fx.config_digest / (
        f"{kind}-v{VERSION}-seed{seed}-n{len(index)}-{digest}.npz")
    return occluded_queries(data, kind, index, seed, False) if path.is_file() else None


def pairs_variant_embeddings(data: EvalData, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """((P, D) embeddings of each pair's second image with a `kind` occlusion, (P,) bool:
    which pairs have one), from the cached all-image variants (seed 1) or else the lfw-crop /
    lfw-mask query set (seed 0, people with >= 2 images); None if neither is cached."""
    pairs = load_pairs(data.lfw)
    every = np.arange(len(data.lfw), dtype=np.int64)
    occ = cached_occlusion(data, kind, every, PAIR_VARIANT_SEED)
    if occ is not None:
        return occ.embeddings[pairs.b], np.ones(len(pairs.b), dtype=bool)
    multi = data.lfw.people_with_at_least(2)
    occ = cached_occlusion(data, kind, multi, 0)
    if occ is None:
        return None
    emb = np.zeros((len(pairs.b), occ.embeddings.shape[1]), dtype=np.float32)
    pos = np.searchsorted(multi, pairs.b)
    has = (pos < len(multi)) & (multi[np.minimum(pos, len(multi) - 1)] == pairs.b)
    emb[has] = occ.embeddings[pos[has]]
    return emb, has


def calibrated_pairs(data: EvalData, factory: Factory, b_emb: np.ndarray | None = None) -> dict:
    pairs = load_pairs(data.lfw)
    return verification(pair_scores(data, pairs, factory, b_emb), pairs)


def _restrict(st, people: np.ndarray):  # noqa: ANN001, ANN202
    """(q_rows, g_rows, exclude) of an identification setup restricted to `people`."""
    q_rows = np.flatnonzero(np.isin(st.query_labels, people))
    g_mask = np.isin(st.gallery_labels, people)
    g_rows = np.flatnonzero(g_mask)
    pos = np.cumsum(g_mask) - 1
    ex = st.exclude[q_rows]
    ok = (ex >= 0) & g_mask[np.where(ex >= 0, ex, 0)]
    return q_rows, g_rows, np.where(ok, pos[np.where(ex >= 0, ex, 0)], -1)


def halves(data: EvalData, split_seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, anchor rows, test people)] for both directions of the identity split."""
    labels = data.lfw.labels
    fold = identity_fold(labels, split_seed)
    out = []
    for anchor_fold in (True, False):
        rows = np.flatnonzero(fold == anchor_fold)
        test_people = np.unique(labels[fold != anchor_fold])
        check_disjoint(labels[rows], test_people)
        out.append((f"anchors half {'A' if anchor_fold else 'B'}", rows, test_people))
    return out


class HalfSetup(NamedTuple):
    """An identification protocol restricted to one identity half's people."""

    queries: FeatureSet  # (Q,) the half's queries
    gallery: FeatureSet  # (G,) the half's gallery images
    query_labels: np.ndarray  # (Q,)
    gallery_labels: np.ndarray  # (G,)
    exclude: np.ndarray  # (Q,) gallery row of the query itself, -1 if none
    depth: int  # ranking length that makes MAP@R exact (the largest R)


def half_setup(data: EvalData, protocol: str, test_people: np.ndarray, seed: int = 0,
               variant_seed: int | None = None) -> HalfSetup:
    """`protocol`'s queries and gallery restricted to `test_people`.

    variant_seed: occluded protocols take their queries from the cached all-image variants
    of that seed (`facerank.train.data`) instead of building the protocol's own set.
    """
    if protocol not in IDENTIFICATION:
        raise InputError(f"unknown identification protocol {protocol!r}")
    if variant_seed is not None and protocol != "lfw-1680":
        from dataclasses import replace

        from facerank.eval.protocols import OCCLUSION_OF, occluded_queries

        st = setup_identification(data, "lfw-1680", seed, progress=False)
        every = np.arange(len(data.lfw), dtype=np.int64)
        occ = occluded_queries(data, OCCLUSION_OF[protocol], every, variant_seed, False)
        st = replace(st, protocol=protocol, queries=occ.take(st.query_index),
                     gallery=data.features, gallery_labels=data.lfw.labels,
                     exclude=st.query_index.copy())
    else:
        st = setup_identification(data, protocol, seed, progress=False)
    q_rows, g_rows, exclude = _restrict(st, test_people)
    ql, gl = st.query_labels[q_rows], st.gallery_labels[g_rows]
    depth = int((gl[None, :] == ql[:, None]).sum(axis=1).max())
    return HalfSetup(st.queries.take(q_rows), st.gallery.take(g_rows), ql, gl, exclude, depth)


def calibrated_identification(data: EvalData, protocol: str, cals: dict[str, Calibrator | None],
                       test_people: np.ndarray, seed: int = 0,
                       variant_seed: int | None = None) -> dict[str, dict]:
    """{method: P@1, MAP@R, ...} on `protocol` restricted to `test_people` (calibrated
    Stage 1: the whole restricted gallery re-scored); variant_seed as in `half_setup`."""
    hs = half_setup(data, protocol, test_people, seed, variant_seed)
    q, g = hs.queries.embeddings, hs.gallery.embeddings
    out = {}
    for name, cal in cals.items():
        ranking = calibrated_topk(cal, q, g, hs.depth, hs.exclude)
        m = retrieval(ranking, hs.query_labels, hs.gallery_labels, hs.exclude)
        out[name] = {k: m[k] for k in ("p_at_1", "map_at_r") if k in m} | {
            "n_queries": len(q), "n_gallery": len(g)}
    return out


def calibrated_openset(data: EvalData, cals: dict[str, Calibrator | None], test_people: np.ndarray,
                seed: int = 0) -> dict[str, dict]:
    return {name: openset(data, cal, test_people, seed) for name, cal in cals.items()}


def eval_protocol(data: EvalData, protocol: str, name: str, seed: int = 0,
                  calibrate_with: Path | None = None) -> tuple[dict, str]:
    """`facerank eval PROTOCOL --calibrate NAME`: cosine and calibrated, identity-disjoint
    (pairs: anchors per fold; identification / open set: both identity halves).
    calibrate_with: the user's anchors / IDA-L checkpoint for every fold and half instead."""
    methods = {"cosine": lfw_factory(data, "none"), name: lfw_factory(data, name, seed=seed)}
    anchors_note = ("pairs: per fold, LFW people absent from the fold; otherwise one identity "
                    "half, the other half evaluated (both shown)")
    if calibrate_with is not None:
        from facerank.calibrate.factory import build

        fixed = build(name, calibrate_with, data.extractor.model_id)
        methods[name] = lambda rows: fixed
        anchors_note = f"{calibrate_with} for every fold and half (not checked for overlap)"
    payload: dict = {"protocol": protocol, "calibrate": name, "anchors": anchors_note}
    lines = []
    if protocol == "lfw-pairs":
        for m, f in methods.items():
            payload[m] = v = calibrated_pairs(data, f)
            lines.append(f"| {m} | {100 * v['accuracy']:.2f} ± {100 * v['accuracy_std']:.2f} | "
                         f"{100 * v['tar_at_far_1e-3']:.2f} | {100 * v['tar_at_far_1e-2']:.2f} "
                         f"| {v['auc']:.4f} |")
        head = "| method | accuracy % | TAR@FAR=1e-3 | TAR@FAR=1e-2 | AUC |\n|---|---|---|---|---|"
        return payload, head + "\n" + "\n".join(lines)
    for half, rows, people in halves(data):
        cals = {m: f(rows) for m, f in methods.items()}
        if protocol == "lfw-openset":
            res = calibrated_openset(data, cals, people, seed)
            for m, v in res.items():
                lines.append(f"| {half} | {m} | {100 * v['tpir_at_fpir_1e-2']:.2f} | "
                             f"{100 * v['tpir_at_fpir_1e-1']:.2f} |")
        else:
            res = calibrated_identification(data, protocol, cals, people, seed)
            for m, v in res.items():
                lines.append(f"| {half} | {m} | {100 * v['p_at_1']:.2f} | "
                             f"{100 * v['map_at_r']:.2f} |")
        payload[half] = res
    head = ("| half | method | TPIR@FPIR=1% | TPIR@FPIR=10% |\n|---|---|---|---|"
            if protocol == "lfw-openset" else
            "| half | method | P@1 % | MAP@R % |\n|---|---|---|---|")
    return payload, head + "\n" + "\n".join(lines)
