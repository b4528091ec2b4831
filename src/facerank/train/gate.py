"""Fit a Stage-2 gate that learns when EMD helps a query, and abstains when it never does.

The bundled dlib gate (`benchmarks.stage2 gated`) separates clean from occluded queries and lets
1 % of clean ones through. That is the wrong question for a backbone whose Stage 1 already
handles most occlusions: on SFace, EMD hurt more masked queries than it fixed. This gate is
fitted on what Stage 2 does to each query instead.

    groups   the LFW identification protocols (lfw-1680, lfw-crop, lfw-mask, lfw-sunglasses:
             evaluation set-up) and the photo variants (`eval.photo_variants`, clean included)
             through the product's query chain (YuNet, largest face)
    label    helps = EMD's blend puts a right person first where Stage 1 did not; hurts = the
             other way round. The logistic regression is fitted on the queries where the two
             disagree, to give P(helps | they disagree) from `FEATURES` + `EXTRA_FEATURES`
             (the Stage-1 margin top1 - top2 and the detector score).
    threshold  chosen on the fitting half only: the one with the largest summed P@1 gain over
             the groups such that no group loses any P@1 there. If no threshold gains, the gate
             sends nothing (threshold 1.0): it abstains.

Fitted on identity half A (`train.split.identity_fold` True); every number reported for half B
comes from people the gate never saw.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from facerank._util.paths import cache_root
from facerank.errors import InputError
from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import IDENTIFICATION, EvalData, lfw_extractor, setup_identification
from facerank.face.features import FeatureSet
from facerank.ranking import cosine_topk
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.gate import EXTRA_FEATURES, FEATURES, QualityGate, extra_features
from facerank.train.data import TRAIN_VARIANT_SEED, photo_variant, query_extractor, variant_queries
from facerank.train.split import describe_split, identity_fold

ABSTAIN = 1.0  # a gate threshold no probability exceeds: nothing is sent
GATE_FEATURES = FEATURES + EXTRA_FEATURES


@dataclass
class GateGroup:
    """One protocol or variant: per query, its identity half, whether Stage 1 and the ungated
    EMD blend put a right person first, and the gate's inputs."""

    name: str
    fold: np.ndarray  # (Q,) bool, identity_fold of the query's person
    person: np.ndarray  # (Q,) the query's identity label
    s1_ok: np.ndarray  # (Q,) bool
    s2_ok: np.ndarray  # (Q,) bool
    x: np.ndarray  # (Q, F) GATE_FEATURES

    @staticmethod
    def concat(parts: list[GateGroup]) -> GateGroup:
        """One group from parts of the same name (queries in order)."""
        return GateGroup(parts[0].name, *(np.concatenate([getattr(p, f) for p in parts])
                                          for f in ("fold", "person", "s1_ok", "s2_ok", "x")))

    def take(self, mask: np.ndarray) -> GateGroup:
        return GateGroup(self.name, self.fold[mask], self.person[mask], self.s1_ok[mask],
                         self.s2_ok[mask], self.x[mask])

    def p_at_1(self, sent: np.ndarray | None = None) -> tuple[float, float]:
        """(Stage 1, gated EMD) P@1 in %; sent (Q,) bool: the queries blended (None: all)."""
        sent = np.ones(len(self.fold), bool) if sent is None else sent
        gated = np.where(sent, self.s2_ok, self.s1_ok)
        return float(100 * self.s1_ok.mean()), float(100 * gated.mean())


def _emd_cached(rr: Stage2EMD, queries: FeatureSet, gallery: FeatureSet, cand: np.ndarray,
                tag: str, progress: bool) -> np.ndarray:
    """EMD of each query's candidates cand (Q, k), cached by the query descriptors and cand."""
    h = hashlib.sha1(np.ascontiguousarray(queries.descriptors, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(cand, dtype=np.int64).tobytes())
    path = cache_root() / "stage2" / (f"gate-{rr.backbone}-{tag}-{rr.grid}-{rr.weighting}-"
                                      f"{h.hexdigest()[:16]}.npy")
    if path.is_file():
        return np.load(path)
    emd = rr.emd_scores(queries, gallery, cand, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emd)
    return emd


def score_group(name: str, queries: FeatureSet, q_labels: np.ndarray, gallery: FeatureSet,
                g_labels: np.ndarray, exclude: np.ndarray, fold: np.ndarray, rr: Stage2EMD,
                progress: bool = False) -> GateGroup:
    """Stage 1 (top rr.k, `exclude` (Q,) hidden per query), EMD of those candidates, the
    ungated blend at rr.alpha, and the gate inputs of the Q queries."""
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, rr.k, exclude)
    cand = ranking.indices[:, : rr.k]
    emd = _emd_cached(rr, queries, gallery, cand, name, progress)
    plain = Stage2EMD(grid=rr.grid, weighting=rr.weighting, alpha=rr.alpha, k=rr.k,
                      backbone=rr.backbone)
    blended = plain.blend(ranking, emd)
    cos = ranking.stage_scores.get("stage1", ranking.scores)[:, : rr.k]
    x = np.concatenate([plain.gate_features(queries, cos, emd),
                        extra_features(EXTRA_FEATURES, cos, queries.det_scores)], axis=1)
    return GateGroup(name, np.asarray(fold, bool), np.asarray(q_labels),
                     g_labels[ranking.indices[:, 0]] == q_labels,
                     g_labels[blended.indices[:, 0]] == q_labels, x)


def gate_groups(backbone: str = "sface", n: int = 300, seed: int = 0, protocol_limit: int = 500,
                variants: tuple[str, ...] = ("clean", *PHOTO_VARIANTS), detector: str = "yunet",
                split_seed: int = 0, grid: str = "l2", weighting: str = "apc",
                alpha: float = 0.7, k: int = 100, progress: bool = True
                ) -> tuple[list[GateGroup], str]:
    """(groups, backbone model id): every protocol (`protocol_limit` seeded queries, both
    halves) and photo variant (`n` seeded queries from each identity half, through
    `detector`), scored by `score_group`."""
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=progress)
    labels = data.lfw.labels
    half = identity_fold(labels, split_seed)
    rr = Stage2EMD(grid=grid, weighting=weighting, alpha=alpha, k=k, backbone=backbone)
    groups = []
    for protocol in IDENTIFICATION:
        st = setup_identification(data, protocol, seed=seed, limit=protocol_limit,
                                  progress=progress)
        groups.append(score_group(protocol, st.queries, st.query_labels, st.gallery,
                                  st.gallery_labels, st.exclude, half[st.query_index], rr,
                                  progress))
    fx = query_extractor(detector, backbone)
    halves = [variant_queries(labels, n, seed, split_seed, train_fold=f) for f in (True, False)]
    for name in variants:
        parts = []
        for rows in halves:  # one cached query set per half (as benchmarks.photo_variants)
            q = photo_variant(name, rows, TRAIN_VARIANT_SEED, data=data, progress=progress,
                              queries=fx)
            parts.append(score_group(f"photo-{name}", q, labels[rows], data.features, labels,
                                     rows, half[rows], rr, progress))
        groups.append(GateGroup.concat(parts))
    return groups, data.extractor.model_id


def choose_threshold(p: list[np.ndarray], groups: list[GateGroup], max_loss: float = 0.0,
                     z: float = 2.0) -> tuple[float, float]:
    """(threshold, summed P@1 gain in points) over `groups` with gate probabilities p[i] (Q_i,):
    the threshold with the largest summed gain such that no group's gated P@1 is more than
    `max_loss` points under its Stage 1 and the queries fixed minus those broken among the
    sent ones reach `z` times the square root of their sum (a sign test: a gain that a coin
    could have made is not a gain); `ABSTAIN` when no threshold qualifies."""
    cands = np.unique(np.concatenate(p))
    best, best_gain = ABSTAIN, 0.0
    helps = [g.s2_ok & ~g.s1_ok for g in groups]
    hurts = [g.s1_ok & ~g.s2_ok for g in groups]
    for t in cands[:-1]:  # p > t; the largest value would send nothing
        sent = [pi > t for pi in p]
        fixed = np.array([(h & s).sum() for h, s in zip(helps, sent, strict=True)])
        broke = np.array([(h & s).sum() for h, s in zip(hurts, sent, strict=True)])
        gains = 100.0 * (fixed - broke) / np.array([len(g.fold) for g in groups])
        net, total = int(fixed.sum() - broke.sum()), int(fixed.sum() + broke.sum())
        if (gains.min() >= -max_loss and net > 0 and net >= z * np.sqrt(total)
                and gains.sum() > best_gain + 1e-9):
            best, best_gain = float(t), float(gains.sum())
    return best, best_gain


def _fit_logistic(groups: list[GateGroup], l2: float, meta: dict | None = None
                  ) -> QualityGate:
    """Logistic P(EMD helps | EMD and Stage 1 disagree) on the queries of `groups`."""
    x = np.concatenate([g.x for g in groups])
    s1 = np.concatenate([g.s1_ok for g in groups])
    s2 = np.concatenate([g.s2_ok for g in groups])
    disagree = s1 != s2
    helps = (s2 & ~s1)[disagree]
    if helps.sum() < 2 or (~helps).sum() < 2:
        raise InputError(f"gate fitting needs queries EMD fixed and queries it broke; got "
                         f"{int(helps.sum())} and {int((~helps).sum())}")
    info = {"features": list(GATE_FEATURES), "label": "EMD's blend right where Stage 1 was "
            "wrong (fitted on the queries where the two disagree)",
            "fit_queries": int(len(x)), "fit_helps": int(helps.sum()),
            "fit_hurts": int((~helps).sum()), **(meta or {})}
    return QualityGate.fit(x[disagree], helps, l2=l2, clean_budget=0.5, meta=info)


def fit_benefit_gate(groups: list[GateGroup], l2: float = 1e-2, max_loss: float = 0.0,
                     meta: dict | None = None, inner_seed: int = 1) -> QualityGate:
    """A `QualityGate` on GATE_FEATURES fitted on `groups` (the fitting half's queries):
    logistic P(EMD helps | EMD and Stage 1 disagree) on all of them; its threshold is chosen by
    `choose_threshold` on out-of-fold probabilities (the fitting half's people split in two
    by `identity_fold(person, inner_seed)`, each half scored by a regression fitted on the
    other), so a threshold that only fits noise of the fitting queries is not picked."""
    gate = _fit_logistic(groups, l2, meta)
    inner = [identity_fold(g.person, inner_seed) for g in groups]
    oof = [np.zeros(len(g.fold)) for g in groups]
    for side in (False, True):
        try:
            part = _fit_logistic([g.take(f != side) for g, f in zip(groups, inner, strict=True)],
                                 l2)
        except InputError:  # too few disagreements in one inner half: nothing to choose from
            oof = None
            break
        for o, g, f in zip(oof, groups, inner, strict=True):
            o[f == side] = part.probability(g.x[f == side])
    threshold, gain = (ABSTAIN, 0.0) if oof is None else choose_threshold(oof, groups,
                                                                          max_loss)
    gate = replace(gate, threshold=threshold)
    gate.meta.update(threshold_rule=f"largest summed P@1 gain over the groups, with no group "
                     f"losing more than {max_loss:g} points, on out-of-fold probabilities of "
                     f"the fitting half (inner identity split seed {inner_seed}); {ABSTAIN} = "
                     "abstain", fit_gain_points=gain, abstains=threshold >= ABSTAIN)
    gate.meta.pop("clean_budget", None)
    return gate


def report(gate: QualityGate, groups: list[GateGroup]) -> list[dict]:
    """Per group: queries, share sent, Stage-1 / ungated EMD / gated EMD P@1 (%)."""
    rows = []
    for g in groups:
        sent = gate.use_stage2(g.x)
        s1, plain = g.p_at_1()
        rows.append({"group": g.name, "queries": len(g.fold), "sent": float(sent.mean()),
                     "p1_stage1": s1, "p1_emd": plain, "p1_gated": g.p_at_1(sent)[1],
                     "change": g.p_at_1(sent)[1] - s1})
    return rows


def train_gate(backbone: str = "sface", n: int = 300, seed: int = 0, protocol_limit: int = 500,
               max_loss: float = 0.0, fit_fold: bool = True, progress: bool = True,
               **group_options: object) -> tuple[QualityGate, dict]:
    """Fit on identity half `fit_fold` (A = True), report on both halves; returns the gate
    (meta: command, seed, split, data, fitting-half gain, held-out table) and the report."""
    t0 = time.perf_counter()
    groups, model_id = gate_groups(backbone, n, seed, protocol_limit, progress=progress,
                         **group_options)  # type: ignore[arg-type]
    fit = [g.take(g.fold == fit_fold) for g in groups]
    held = [g.take(g.fold != fit_fold) for g in groups]
    data_desc = {"protocols": list(IDENTIFICATION), "protocol_queries": protocol_limit,
                 "protocol_seed": seed, "photo_variants": [g.name for g in groups
                                                           if g.name.startswith("photo-")],
                 "photo_queries_per_half": n, "photo_query_seed": seed,
                 "variant_seed": TRAIN_VARIANT_SEED,
                 "photo_query_chain": "YuNet, largest face (central box when none found)",
                 "gallery": "all 13,233 clean LFW images (evaluation set-up) minus the "
                            "query's original"}
    gate = fit_benefit_gate(fit, max_loss=max_loss, meta={
        "backbone": model_id, "grid": "l2", "weighting": "apc",
        "k": 100, "alpha": 0.7, "command": "facerank " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]), "seed": seed,
        "split": describe_split(fit_fold), "data": data_desc})
    out = {"fit_half": report(gate, fit), "held_out_half": report(gate, held),
           "seconds": round(time.perf_counter() - t0, 1)}
    gate.meta["held_out"] = [{k: (round(v, 3) if isinstance(v, float) else v)
                              for k, v in r.items()} for r in out["held_out_half"]]
    return gate, out
