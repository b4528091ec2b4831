"""What every Stage-2 re-ranker provides, and the registry the CLI and web page read.

A re-ranker takes the Stage-1 `Ranking` of some queries against a gallery (both as
`FeatureSet`s, so it can use grids, landmarks or descriptors) and returns a new `Ranking`
whose first k columns are re-ordered, with its own score kept under `stage_scores[name]`.
New methods (a transformer verifier, a calibrated score) register a factory under a name and
become available to `facerank search --stage2 NAME`, `facerank eval --stage2 NAME` and the web
page without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facerank._util.registry import Registry
from facerank.errors import InputError
from facerank.face.features import FeatureSet
from facerank.ranking import Ranking

if TYPE_CHECKING:
    from facerank.rerank.gate import PreGate, QualityGate


__all__ = ["GatedBlendReranker", "Reranker", "gated_blend", "make_stage2", "register_stage2",
           "rerank_depth", "reorder_sent", "stage2_names"]


class Reranker(Protocol):
    """Stage 2: re-order the top-k of a Stage-1 ranking."""

    name: str
    k: int

    def rerank(self, queries: FeatureSet, gallery: FeatureSet, ranking: Ranking,
               progress: bool = False) -> Ranking:
        """queries: Q faces; ranking: (Q, K) Stage-1 result with K >= k."""
        ...

    def score_pairs(self, a: FeatureSet, b: FeatureSet) -> np.ndarray:
        """Final Stage-2 score of P pairs (a[i], b[i]) -> (P,), for verification."""
        ...

    def describe(self) -> str:
        """One line naming the method and its settings (for reports and the UI)."""
        ...


def rerank_depth(queries: FeatureSet, ranking: Ranking, k: int) -> int:
    """Columns a Stage 2 re-orders: min(k, ranking.k), 0 when there is nothing to re-order;
    an InputError when the ranking and the queries disagree."""
    if ranking.num_queries != len(queries):
        raise InputError(f"ranking has {ranking.num_queries} rows but {len(queries)} queries "
                         "were given")
    return 0 if ranking.num_queries == 0 else min(k, ranking.k)


def reorder_sent(ranking: Ranking, blended: np.ndarray, sent: np.ndarray, name: str,
                 stage2: np.ndarray) -> Ranking:
    """Re-order the first k columns of the rows sent to Stage 2 (sent (Q,) bool) by
    `blended` (Q, k); the other rows keep their incoming order and scores.

    Why not re-sort every row by its blend: a row the gate keeps has alpha = 0, i.e. blend =
    cosine, and re-sorting it by cosine would undo an upstream calibrated order
    (`StoredGallery.search(calibrate=...)`); keeping the incoming order is the same thing for an
    uncalibrated ranking and the right thing for a calibrated one.
    """
    k = blended.shape[1]
    final = np.where(sent[:, None], blended, ranking.scores[:, :k]).astype(np.float32)
    order = np.argsort(-final, axis=1, kind="stable")
    order[~sent] = np.arange(k)
    rows = np.arange(ranking.num_queries)[:, None]
    return ranking.reorder(order, final[rows, order], name, stage2)


def gated_blend(ranking: Ranking, stage2: np.ndarray, name: str, alpha: float,
                gate: QualityGate | None,
                gate_inputs: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
                candidates: np.ndarray | None = None) -> Ranking:
    """Re-order the first k columns by alpha * stage2 + (1 - alpha) * Stage-1 cosine.

    stage2 (Q, k): the re-ranker's score of the first k candidates, kept as
    `stage_scores[name]`. With a gate, queries it does not flag as hard keep alpha = 0 (their
    Stage-1 order); `gate_inputs(rows (R,), cos (R, k)) -> (R, F)` gives the features of those
    query rows (None: no query features, which a gated blend cannot do without). candidates
    (Q,) bool: only these rows may be sent (a pre-gate dropped the others, whose stage2 rows
    may be NaN: never computed). The alpha each query was blended with is kept as
    `stage_scores["alpha"]`.
    """
    k = stage2.shape[1]
    cos = ranking.stage_scores.get("stage1", ranking.scores)[:, :k]
    used_alpha = np.full((ranking.num_queries, 1), alpha, dtype=np.float32)
    if candidates is not None:
        used_alpha[~candidates] = 0.0
    if gate is not None and k >= 2:
        if gate_inputs is None:
            raise InputError("a gated Stage 2 needs the query features to blend")
        rows = (np.arange(ranking.num_queries) if candidates is None
                else np.flatnonzero(candidates))
        send = np.zeros(ranking.num_queries, dtype=bool)
        if len(rows):
            send[rows] = gate.use_stage2(gate_inputs(rows, cos[rows]))
        used_alpha[~send] = 0.0
    # rows kept in Stage 1 may hold NaN Stage-2 scores (never computed): blend them as cosine
    blended = np.where(used_alpha > 0, used_alpha * stage2, 0.0) + (1 - used_alpha) * cos
    out = reorder_sent(ranking, blended, used_alpha[:, 0] > 0, name, stage2)
    used = np.full(ranking.indices.shape, np.nan, dtype=np.float32)  # (Q, K)
    used[:, :k] = used_alpha  # 0: the gate kept Stage 1
    out.stage_scores["alpha"] = used
    return out


class GatedBlendReranker:
    """What EMD and Face-ViT share: score each query's top k (`topk_scores`), then
    `gated_blend` those scores with the Stage-1 cosine under an optional quality gate fed by
    `gate_features`. Subclasses set name, alpha, gate, k and the two methods."""

    name: str
    alpha: float
    gate: QualityGate | None
    k: int
    grid_name: str  # the feature grid the method reads (its gate's query statistics too)
    pre_gate: PreGate | None = None  # the gate's cheap first step, when one ships for it

    def _set_blend(self, alpha: float, k: int, gate: QualityGate | str | None,
                   pre_gate: bool = True) -> None:
        """Check and keep alpha (in [0, 1]), k (>= 1) and the gate (a JSON path is loaded);
        pre_gate: use the pre-gate stored for that very gate, if there is one."""
        from facerank.rerank.gate import PreGate, QualityGate

        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {alpha}")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        self.alpha, self.k = float(alpha), int(k)
        self.gate = QualityGate.load(gate) if isinstance(gate, str) else gate
        self.pre_gate = (PreGate.for_gate(self.gate) if pre_gate and self.gate is not None
                         else None)

    def _query_stats(self, queries: FeatureSet) -> np.ndarray:
        """(Q, 5) `gate.query_features` of the queries' descriptors and this method's grid."""
        from facerank.rerank.gate import query_features

        if self.grid_name not in queries.grids:
            raise InputError(f"query features have no grid {self.grid_name!r}")
        return query_features(queries.descriptors, queries.grids[self.grid_name])

    def pre_gate_features(self, queries: FeatureSet, cos: np.ndarray) -> np.ndarray | None:
        """(Q, 10) the pre-gate's inputs: Stage-1 cos (Q, k) and the query statistics."""
        from facerank.rerank.gate import pre_gate_features

        return pre_gate_features(cos, self._query_stats(queries))

    def maybe_sent(self, queries: FeatureSet, ranking: Ranking, k: int) -> np.ndarray | None:
        """(Q,) bool: the queries the gate may send to Stage 2, decided before any Stage-2
        score by the pre-gate (None: no pre-gate, every query needs its scores)."""
        if self.pre_gate is None or self.gate is None or self.alpha == 0 or k < 2:
            return None
        digest = getattr(self.gate, "digest", None)  # the gate may have been replaced since
        if digest is None or digest() != self.pre_gate.for_gate:
            return None
        cos = ranking.stage_scores.get("stage1", ranking.scores)[:, :k]
        feats = self.pre_gate_features(queries, cos)
        return None if feats is None else self.pre_gate.maybe_stage2(feats)

    def topk_scores(self, queries: FeatureSet, gallery: FeatureSet, cand: np.ndarray,
                    progress: bool = False) -> np.ndarray:
        """(Q, k) Stage-2 score of each query with its candidates cand (Q, k)."""
        raise NotImplementedError

    def gate_features(self, queries: FeatureSet, cos: np.ndarray,
                      scores: np.ndarray) -> np.ndarray:
        """(Q, F) the gate's inputs: Stage-1 cos (Q, k) and this method's scores (Q, k) of the
        same candidates (in EMD's place in `gate.gate_features`), the query statistics, and the
        extra columns the gate reads."""
        from facerank.rerank.gate import gate_features, gate_inputs

        base = gate_features(cos, scores, self._query_stats(queries))
        return gate_inputs(self.gate, base, cos, queries.det_scores)

    def blend(self, ranking: Ranking, scores: np.ndarray,
              queries: FeatureSet | None = None,
              candidates: np.ndarray | None = None) -> Ranking:
        """Re-order the first k columns by alpha * scores + (1 - alpha) * Stage-1 cosine;
        with a gate (which needs the query features), queries it does not flag as hard keep
        their incoming order. candidates (Q,) bool: only these may be sent (see `maybe_sent`)."""
        def inputs(rows: np.ndarray, cos: np.ndarray) -> np.ndarray:
            sub = queries if len(rows) == len(queries) else queries.take(rows)
            return self.gate_features(sub, cos, scores[rows])

        return gated_blend(ranking, scores, self.name, self.alpha, self.gate,
                           None if queries is None else inputs, candidates)

    def rerank(self, queries: FeatureSet, gallery: FeatureSet, ranking: Ranking,
               progress: bool = False) -> Ranking:
        """Re-order the first k columns of `ranking` by the blended score. With a pre-gate,
        Stage-2 scores are computed only for the queries it passes (the others keep their
        order and get NaN Stage-2 scores)."""
        k = rerank_depth(queries, ranking, self.k)
        if k == 0:
            return ranking
        maybe = self.maybe_sent(queries, ranking, k)
        if maybe is None or maybe.all():
            scores = self.topk_scores(queries, gallery, ranking.indices[:, :k], progress)
            return self.blend(ranking, scores, queries)
        scores = np.full((ranking.num_queries, k), np.nan, dtype=np.float32)
        rows = np.flatnonzero(maybe)
        if len(rows):
            scores[rows] = self.topk_scores(queries.take(rows), gallery,
                                            ranking.indices[rows, :k], progress)
        return self.blend(ranking, scores, queries, maybe)


def register_stage2(name: str) -> Callable[[Callable[..., Reranker]], Callable[..., Reranker]]:
    """Decorator: make a re-ranker factory available under `name`."""
    return _STAGE2.register(name)


def stage2_names() -> list[str]:
    """Registered Stage-2 methods, plus "none"."""
    return _STAGE2.names()


# The Stage 2 each backbone runs by default. On dlib, gated EMD never lost P@1 on any set
# measured; on SFace, gated EMD lost 4.5 P@1 on real masked photos and 0.45 on celebrity
# photos against SFace's own cosine, so SFace's default chain stops at Stage 1 (abstains).
# The gates fitted on where Stage 2 helps SFace (`facerank train gate`, for EMD and for
# SFace's own Face-ViT; what `--stage2 emd` / `vit` use there) never cost more than 0.1 P@1 on
# held-out people but gain only on LFW-crop, and the queries their pre-gates pass would pay
# 23-53 ms of Stage 2 (docs/results.md, "SFace heads"): the default stays Stage 1.
DEFAULT_STAGE2 = {"dlib": "emd", "sface": "none"}


def default_stage2(backbone: str) -> str:
    """The Stage-2 method `--stage2 auto` means for `backbone` ("dlib" -> "emd", "sface" ->
    "none"); unknown backbones get "none" (Stage 1 only)."""
    return DEFAULT_STAGE2.get(backbone, "none")


def make_stage2(name: str, **options: object) -> Reranker | None:
    """Build a registered re-ranker ("none" -> None); unknown options are an InputError.
    "auto" is the default of the backbone given as option `backbone` (dlib if none)."""
    if name == "auto":
        name = default_stage2(str(options.get("backbone") or "dlib"))
        if name == "none":
            return None
    return _STAGE2.make(name, **options)


def _load_builtin() -> None:
    import facerank.rerank.emd.reranker  # noqa: F401 - registers "emd"
    import facerank.rerank.vit.reranker  # noqa: F401 - registers "vit"


_STAGE2: Registry[Reranker] = Registry("Stage-2 method", _load_builtin)
