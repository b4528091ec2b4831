"""Fit a Stage-2 gate that learns when Stage 2 (EMD, or a Face-ViT checkpoint) helps a query,
and abstains when it never does.

The bundled dlib gate (`benchmarks.stage2 gated`) separates clean from occluded queries and lets
1 % of clean ones through. That is the wrong question for a backbone whose Stage 1 already
handles most occlusions: on SFace, EMD hurt more masked queries than it fixed. This gate is
fitted on what Stage 2 does to each query instead.

    groups   the LFW identification protocols (lfw-1680, lfw-crop, lfw-mask, lfw-sunglasses:
             evaluation set-up) and the photo variants (`eval.photo_variants`, clean included)
             through the product's query chain (YuNet, largest face)
    label    helps = Stage 2's blend (EMD's, or the Face-ViT's) puts a right person first where
             Stage 1 did not; hurts = the other way round. The logistic regression is fitted
             on the queries where the two disagree, to give P(helps | they disagree) from
             `FEATURES` + `EXTRA_FEATURES` (the Stage-1 margin top1 - top2 and the detector
             score; for a Face-ViT, its scores take EMD's place in the list features).
    threshold  chosen on the fitting half only: the one with the largest summed P@1 gain over
             the groups such that no group loses any P@1 there. If no threshold gains, the gate
             sends nothing (threshold 1.0): it abstains.

Fitted on identity half A (`train.split.identity_fold` True); every number reported for half B
comes from people the gate never saw. A Face-ViT's gate is fitted only on the part of half A
(`train.split.sub_fold`) that the Face-ViT was not trained on (`facerank train vit --subfold`);
a Face-ViT trained on the whole fitting half is refused.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from facerank._util.paths import cache_root
from facerank.errors import InputError
from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import IDENTIFICATION, EvalData, lfw_extractor, setup_identification
from facerank.face.features import FeatureSet
from facerank.ranking import cosine_topk
from facerank.rerank.base import GatedBlendReranker
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.gate import (
    EXTRA_FEATURES,
    FEATURES,
    PRE_FEATURES,
    PreGate,
    QualityGate,
    extra_features,
)
from facerank.train.data import TRAIN_VARIANT_SEED, photo_variant, query_extractor, variant_queries
from facerank.train.split import describe_split, identity_fold, sub_fold

ABSTAIN = 1.0  # a gate threshold no probability exceeds: nothing is sent
GATE_FEATURES = FEATURES + EXTRA_FEATURES


@dataclass
class GateGroup:
    """One protocol or variant: per query, its identity half, whether Stage 1 and the ungated
    Stage-2 blend put a right person first, and the gate's inputs."""

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
        """(Stage 1, gated Stage 2) P@1 in %; sent (Q,) bool: the queries blended (None: all)."""
        sent = np.ones(len(self.fold), bool) if sent is None else sent
        gated = np.where(sent, self.s2_ok, self.s1_ok)
        return float(100 * self.s1_ok.mean()), float(100 * gated.mean())


def stage2_key(rr: GatedBlendReranker) -> str:
    """A file-name key naming what `rr` scores with: EMD's backbone, grid and weighting, or a
    Face-ViT's weights (a digest of its state_dict) and runtime."""
    if isinstance(rr, Stage2EMD):
        return f"{rr.backbone}-{rr.grid}-{rr.weighting}"
    h = hashlib.sha1()
    model: torch.nn.Module = rr.model  # type: ignore[attr-defined]
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"vit-{h.hexdigest()[:16]}-{getattr(rr, 'runtime', 'torch')}"


def _stage2_cached(rr: GatedBlendReranker, queries: FeatureSet, gallery: FeatureSet,
                   cand: np.ndarray, tag: str, progress: bool) -> np.ndarray:
    """Stage-2 scores of each query's candidates cand (Q, k), cached by the re-ranker
    (`stage2_key`), the query descriptors and cand."""
    h = hashlib.sha1(np.ascontiguousarray(queries.descriptors, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(cand, dtype=np.int64).tobytes())
    if isinstance(rr, Stage2EMD):  # the name earlier EMD runs were cached under
        name = f"gate-{rr.backbone}-{tag}-{rr.grid}-{rr.weighting}-{h.hexdigest()[:16]}.npy"
    else:
        name = f"gate-{stage2_key(rr)}-{tag}-{h.hexdigest()[:16]}.npy"
    path = cache_root() / "stage2" / name
    if path.is_file():
        return np.load(path)
    scores = rr.topk_scores(queries, gallery, cand, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    return scores


def score_group(name: str, queries: FeatureSet, q_labels: np.ndarray, gallery: FeatureSet,
                g_labels: np.ndarray, exclude: np.ndarray, fold: np.ndarray,
                rr: GatedBlendReranker, progress: bool = False) -> GateGroup:
    """Stage 1 (top rr.k, `exclude` (Q,) hidden per query), the Stage-2 scores of those
    candidates by `rr` (EMD or Face-ViT, ungated), its blend at rr.alpha, and the gate inputs
    of the Q queries."""
    if rr.gate is not None:
        raise InputError("a gate is fitted on the ungated Stage 2; pass one without a gate")
    ranking = cosine_topk(queries.embeddings, gallery.embeddings, rr.k, exclude)
    cand = ranking.indices[:, : rr.k]
    scores = _stage2_cached(rr, queries, gallery, cand, name, progress)
    blended = rr.blend(ranking, scores)
    cos = ranking.stage_scores.get("stage1", ranking.scores)[:, : rr.k]
    x = np.concatenate([rr.gate_features(queries, cos, scores),
                        extra_features(EXTRA_FEATURES, cos, queries.det_scores)], axis=1)
    return GateGroup(name, np.asarray(fold, bool), np.asarray(q_labels),
                     g_labels[ranking.indices[:, 0]] == q_labels,
                     g_labels[blended.indices[:, 0]] == q_labels, x)


def gate_groups(backbone: str = "sface", n: int = 300, seed: int = 0, protocol_limit: int = 500,
                variants: tuple[str, ...] = ("clean", *PHOTO_VARIANTS), detector: str = "yunet",
                split_seed: int = 0, grid: str = "l2", weighting: str = "apc",
                alpha: float | None = None, k: int = 100, progress: bool = True,
                checkpoint: str | Path | None = None,
                protocols: tuple[str, ...] = IDENTIFICATION
                ) -> tuple[list[GateGroup], EvalData, GatedBlendReranker]:
    """(groups, the evaluation data, the ungated Stage 2): every protocol (`protocol_limit`
    seeded queries, both halves) and photo variant (`n` seeded queries from each identity
    half, through `detector`), scored by `score_group`. The Stage 2 is EMD (grid, weighting,
    alpha 0.7 unless given), or the Face-ViT `checkpoint` (its gated alpha unless given: the
    one it fitted on occluded queries, which is what a gate sends)."""
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=progress)
    labels = data.lfw.labels
    half = identity_fold(labels, split_seed)
    rr = _ungated_stage2(data.extractor.model_id, backbone, grid, weighting, alpha, k,
                         checkpoint)
    groups = []
    for protocol in protocols:
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
    return groups, data, rr


def _ungated_stage2(model_id: str, backbone: str, grid: str, weighting: str,
                    alpha: float | None, k: int, checkpoint: str | Path | None
                    ) -> GatedBlendReranker:
    if checkpoint is None:
        return Stage2EMD(grid=grid, weighting=weighting, alpha=0.7 if alpha is None else alpha,
                         k=k, backbone=backbone)
    from facerank._util.checkpoint import read_config
    from facerank.rerank.vit.reranker import Stage2ViT

    config = read_config(checkpoint)
    fitted = config.get("alpha_gated", config.get("alpha", 0.5))
    return Stage2ViT.load(checkpoint, backbone=model_id, k=k, gate=None,  # refuses another
                          alpha=float(fitted if alpha is None else alpha))  # backbone


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
    """Logistic P(Stage 2 helps | it and Stage 1 disagree) on the queries of `groups`."""
    x = np.concatenate([g.x for g in groups])
    s1 = np.concatenate([g.s1_ok for g in groups])
    s2 = np.concatenate([g.s2_ok for g in groups])
    disagree = s1 != s2
    helps = (s2 & ~s1)[disagree]
    if helps.sum() < 2 or (~helps).sum() < 2:
        raise InputError(f"gate fitting needs queries Stage 2 fixed and queries it broke; got "
                         f"{int(helps.sum())} and {int((~helps).sum())}")
    info = {"features": list(GATE_FEATURES), "label": "Stage 2's blend right where Stage 1 was "
            "wrong (fitted on the queries where the two disagree)",
            "fit_queries": int(len(x)), "fit_helps": int(helps.sum()),
            "fit_hurts": int((~helps).sum()), **(meta or {})}
    return QualityGate.fit(x[disagree], helps, l2=l2, clean_budget=0.5, meta=info)


def fit_benefit_gate(groups: list[GateGroup], l2: float = 1e-2, max_loss: float = 0.0,
                     meta: dict | None = None, inner_seed: int = 1) -> QualityGate:
    """A `QualityGate` on GATE_FEATURES fitted on `groups` (the fitting half's queries):
    logistic P(Stage 2 helps | it and Stage 1 disagree) on all of them; its threshold is chosen by
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


PRE_COLUMNS = [FEATURES.index(f) for f in PRE_FEATURES]  # of GateGroup.x: known before Stage 2


def fit_pre_gate(gate: QualityGate, groups: list[GateGroup], margin: float = 1.0
                 ) -> PreGate | None:
    """The gate's cheap first step (`rerank.gate.PreGate`) fitted on `groups` (the fitting
    half): it passes every query the gate sends there, so Stage 2 scores only the queries it
    passes; None when the gate sends none or all of them (nothing to skip)."""
    x = np.concatenate([g.x for g in groups])
    sent = gate.use_stage2(x)
    if not sent.any() or sent.all():
        return None
    return PreGate.fit(x[:, PRE_COLUMNS], sent, gate, margin,
                       meta={"fitted_on": "the gate's own fitting queries"})


def report(gate: QualityGate, groups: list[GateGroup], pre: PreGate | None = None
           ) -> list[dict]:
    """Per group: queries, share sent, Stage-1 / ungated Stage 2 / gated Stage 2 P@1 (%).
    With a pre-gate, "gated" is the product's cascade (pre-gate, then gate) and "pre_passed"
    the share of queries Stage 2 had to score."""
    rows = []
    for g in groups:
        sent = gate.use_stage2(g.x)
        passed = (np.ones(len(sent), bool) if pre is None
                  else pre.maybe_stage2(g.x[:, PRE_COLUMNS]))
        s1, plain = g.p_at_1()
        gated = g.p_at_1(sent & passed)[1]
        rows.append({"group": g.name, "queries": len(g.fold), "sent": float((sent & passed).mean()),
                     "pre_passed": float(passed.mean()), "p1_stage1": s1, "p1_stage2": plain,
                     "p1_gate_alone": g.p_at_1(sent)[1], "p1_gated": gated,
                     "change": gated - s1})
    return rows


def _describe_stage2(rr: GatedBlendReranker, checkpoint: object) -> dict:
    """What the gate's meta records about the Stage 2 it was fitted for."""
    if isinstance(rr, Stage2EMD):
        return {"stage2": "emd", "grid": rr.grid, "weighting": rr.weighting}
    path = Path(str(checkpoint))
    return {"stage2": "vit", "checkpoint": path.name,
            "checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _unseen_part(checkpoint: object, fit_fold: bool) -> bool | None:
    """For a Face-ViT `checkpoint`: the part (`sub_fold`) of the fitting half whose people it
    never saw, where its gate is fitted; refused in one line unless it was trained on the
    other part of that very half (a gate fitted on a model's own training people sees it at
    its best and sends too much; a model trained on the report half would make the report
    its training score). None for EMD."""
    if checkpoint is None:
        return None
    from facerank._util.checkpoint import read_config

    split = read_config(Path(str(checkpoint))).get("split", {})
    if split.get("train_fold") != fit_fold or split.get("subfold") is None:
        raise InputError(f"{checkpoint}: its gate is fitted on identity half "
                         f"{'A' if fit_fold else 'B'} on people the Face-ViT never saw; "
                         f"train it with `facerank train vit --train-fold {int(fit_fold)} "
                         "--subfold 1` (it trains on one part of that half)")
    return not bool(split["subfold"])


def train_gate(backbone: str = "sface", n: int = 300, seed: int = 0, protocol_limit: int = 500,
               max_loss: float = 0.0, fit_fold: bool = True, progress: bool = True,
               **group_options: object) -> tuple[QualityGate, dict, PreGate | None]:
    """Fit on identity half `fit_fold` (A = True), report on both halves; returns the gate
    (meta: command, seed, split, data, fitting-half gain, held-out table), the report, and
    its pre-gate (`fit_pre_gate`; the report's "gated" columns run the two in cascade)."""
    t0 = time.perf_counter()
    checkpoint = group_options.get("checkpoint")
    unseen = _unseen_part(checkpoint, fit_fold)  # refused before any scoring
    groups, data, rr = gate_groups(backbone, n, seed, protocol_limit, progress=progress,
                                   **group_options)  # type: ignore[arg-type]
    model_id, labels = data.extractor.model_id, data.lfw.labels
    if unseen is None:
        fit = [g.take(g.fold == fit_fold) for g in groups]
    else:  # only the people of the part the Face-ViT never saw
        people = np.unique(labels[sub_fold(labels, fit_fold) == unseen])
        fit = [g.take((g.fold == fit_fold) & np.isin(g.person, people)) for g in groups]
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
        "backbone": model_id, **_describe_stage2(rr, checkpoint),
        "k": rr.k, "alpha": rr.alpha, "command": "facerank " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]), "seed": seed,
        "split": describe_split(fit_fold, subfold=unseen), "data": data_desc})
    pre = fit_pre_gate(gate, fit)
    out = {"fit_half": report(gate, fit, pre), "held_out_half": report(gate, held, pre),
           "seconds": round(time.perf_counter() - t0, 1)}
    gate.meta["held_out"] = [{k: (round(v, 3) if isinstance(v, float) else v)
                              for k, v in r.items()} for r in out["held_out_half"]]
    return gate, out, pre
