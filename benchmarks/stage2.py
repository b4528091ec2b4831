"""Stage 1 vs Stage 2 (DeepFace-EMD) on the four LFW identification protocols.

    python -m benchmarks.stage2 sweep --limit 2000      # every grid x weighting, alpha sweep
    python -m benchmarks.stage2 sweep --limit 2000 --keep-original --protocols lfw-crop
    python -m benchmarks.stage2 gated --save-gate       # gated l2/APC on all 9,164 queries

`sweep` scores every (grid, weighting) on the same seeded query subset and reports P@1 / RP /
MAP@R at alpha in {0, 0.3, 0.5, 0.7, 1}. `gated` evaluates the quality gate identity-disjoint:
people are split in two seeded halves; a gate fitted on one half's queries (clean lfw-1680
queries = easy, the three occluded sets = hard) decides for the other half's queries, and the
other way round, so no query is scored by a gate that saw its identity; its threshold lets 1 %
of the clean training queries through (`--clean-budget`). A harder check leaves one occlusion
type out of the gate's training altogether. `--save-gate` also
fits the gate on all queries and writes the bundled default. EMD scores are cached under
`.cache/stage2/`, so re-running with other alphas is cheap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from facerank._util.paths import cache_root
from facerank.eval.protocols import (
    IDENTIFICATION,
    EvalData,
    IdentificationSetup,
    _retrieval,
    lfw_extractor,
    setup_identification,
)
from facerank.eval.report import identification_table
from facerank.ranking import Ranking, cosine_topk
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.emd.weights import WEIGHTINGS
from facerank.rerank.gate import QualityGate, bundled_gate_path
from facerank.train.split import identity_fold

ALPHAS = (0.0, 0.3, 0.5, 0.7, 1.0)
console = Console()


def prepare(data: EvalData, protocol: str, limit: int | None, seed: int, k: int,
            keep_original: bool = False):
    """Queries, Stage-1 ranking (long enough for exact MAP@R) and relevant counts R."""
    st = setup_identification(data, protocol, seed=seed, limit=limit,
                              keep_original=keep_original, progress=True)
    rel = st.gallery_labels[None, :] == st.query_labels[:, None]
    r = rel.sum(axis=1) - (st.gallery_labels[st.exclude] == st.query_labels)
    ranking = cosine_topk(st.queries.embeddings, st.gallery.embeddings,
                          int(max(r.max(), k)), st.exclude)
    return st, ranking, r


def emd_cached(reranker: Stage2EMD, st, ranking, tag: str) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """EMD of each query's top k (cached per protocol/grid/weighting/query set)."""
    bb = "" if reranker.backbone == "dlib" else f"{reranker.backbone}-"
    path = cache_root() / "stage2" / f"{bb}{tag}-{reranker.grid}-{reranker.weighting}.npy"
    if path.is_file():
        return np.load(path), float("nan")
    t0 = time.perf_counter()
    emd = reranker.emd_scores(st.queries, st.gallery, ranking.indices[:, : reranker.k],
                              progress=True)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emd)
    return emd, seconds


def _fc(data: EvalData):  # noqa: ANN202 - the last linear layer for CC (dlib only)
    fc = getattr(data.extractor.backbone, "fc_weight", None)
    return fc.detach() if fc is not None else None


def sweep(args: argparse.Namespace) -> None:
    data = EvalData.load(lfw_extractor(backbone=args.backbone))
    fc = _fc(data)
    rows, out = [], {"settings": vars(args), "results": []}
    for protocol in args.protocols:
        st, ranking, r = prepare(data, protocol, args.limit, args.seed, args.k,
                                 args.keep_original)
        keep = "-keep" if args.keep_original else ""
        tag = f"{protocol}{keep}-s{args.seed}-n{len(st.query_index)}-k{args.k}"
        m1 = _retrieval(ranking, st.query_labels, st.gallery_labels, r)
        rows.append((protocol, "Stage 1 (cosine)", m1))
        out["results"].append({"protocol": protocol, "method": "stage1", **m1})
        for grid in args.grids:
            for weighting in args.weightings:
                if weighting == "cc" and fc is None:
                    continue  # no global-pool + fc head to project patches through
                rr = Stage2EMD(grid=grid, weighting=weighting, k=args.k, fc_weight=fc,
                               backbone=args.backbone)
                emd, seconds = emd_cached(rr, st, ranking, tag)
                for alpha in ALPHAS:
                    rr.alpha = alpha
                    m = _retrieval(rr.blend(ranking, emd), st.query_labels,
                                   st.gallery_labels, r)
                    out["results"].append({"protocol": protocol, "grid": grid,
                                           "weighting": weighting, "alpha": alpha,
                                           "emd_seconds": seconds, **m})
                    if alpha == args.alpha:
                        rows.append((protocol, f"{grid} {weighting} α={alpha:g}", m))
        console.print(identification_table([row for row in rows if row[0] == protocol]))
    keep = "_keep_original" if args.keep_original else ""
    bb = "" if args.backbone == "dlib" else f"_{args.backbone}"
    path = write_result(f"stage2_sweep{bb}{keep}_n{args.limit or 'all'}", out)
    console.print(identification_table(rows))
    console.print(f"wrote {path}")


class Prepared(NamedTuple):
    """One protocol's queries, Stage-1 ranking, EMD of the top k and gate inputs."""

    st: IdentificationSetup
    ranking: Ranking
    r: np.ndarray  # (Q,) relevant count per query
    emd: np.ndarray  # (Q, k)
    fold: np.ndarray  # (Q,) bool: the query's person is in the first half
    feats: np.ndarray  # (Q, F) gate features
    seconds: float


def fit_gate(prepared: dict[str, Prepared], protocols: list[str], test_fold: bool | None,
             budget: float, meta: dict | None = None) -> QualityGate:
    """A gate fitted on the queries of `protocols` outside `test_fold` (None: all of them);
    lfw-1680 queries are the easy class, occluded ones the hard class."""
    rows = {n: prepared[n].fold != test_fold if test_fold is not None
            else np.ones(len(prepared[n].fold), bool) for n in protocols}
    x = np.concatenate([prepared[n].feats[rows[n]] for n in protocols])
    y = np.concatenate([np.full(rows[n].sum(), n != "lfw-1680") for n in protocols])
    return QualityGate.fit(x, y, clean_budget=budget, meta=meta)


def cross_fitted(p: Prepared, gates: dict[bool, QualityGate], args: argparse.Namespace
                 ) -> Ranking:
    """Each query blended under the gate fitted on the other half of the people."""
    merged_idx, merged_scores = p.ranking.indices.copy(), p.ranking.scores.copy()
    for test_fold, gate in gates.items():
        g = Stage2EMD(grid=args.grid, weighting=args.weighting, alpha=args.alpha, k=args.k,
                      gate=gate, backbone=args.backbone).blend(p.ranking, p.emd, p.st.queries)
        sel = p.fold == test_fold
        merged_idx[sel], merged_scores[sel] = g.indices[sel], g.scores[sel]
    return Ranking(merged_idx, merged_scores)


def prepare_all(data: EvalData, args: argparse.Namespace) -> dict[str, Prepared]:
    """Every identification protocol's queries, Stage-1 ranking, cached EMD of the top k
    (args: grid, weighting, alpha, k, limit, seed, backbone) and gate inputs."""
    fc = _fc(data)
    first_half = identity_fold(data.lfw.labels, args.seed)  # (N,) the people's split
    prepared: dict[str, Prepared] = {}
    for protocol in IDENTIFICATION:
        st, ranking, r = prepare(data, protocol, args.limit, args.seed, args.k)
        tag = f"{protocol}-s{args.seed}-n{len(st.query_index)}-k{args.k}"
        rr = Stage2EMD(grid=args.grid, weighting=args.weighting, alpha=args.alpha, k=args.k,
                       fc_weight=fc, backbone=args.backbone)
        emd, seconds = emd_cached(rr, st, ranking, tag)
        fold = first_half[st.query_index]
        cos = ranking.stage_scores["stage1"][:, : args.k]  # the columns the gate sees in use
        prepared[protocol] = Prepared(st, ranking, r, emd, fold,
                                      rr.gate_features(st.queries, cos, emd), seconds)
    return prepared


def gated(args: argparse.Namespace) -> None:
    data = EvalData.load(lfw_extractor(backbone=args.backbone))
    prepared = prepare_all(data, args)
    everything = list(prepared)
    gates = {f: fit_gate(prepared, everything, f, args.clean_budget,
                         meta={"trained_on": "half of LFW people"}) for f in (False, True)}
    rows, out = [], {"settings": vars(args), "results": []}
    for protocol, p in prepared.items():
        labels = (p.st.query_labels, p.st.gallery_labels, p.r)
        m1 = _retrieval(p.ranking, *labels)
        plain = Stage2EMD(grid=args.grid, weighting=args.weighting, alpha=args.alpha, k=args.k,
                          backbone=args.backbone)
        m_plain = _retrieval(plain.blend(p.ranking, p.emd), *labels)
        m_gate = _retrieval(cross_fitted(p, gates, args), *labels)
        used = np.where(p.fold, gates[True].use_stage2(p.feats), gates[False].use_stage2(p.feats))
        name = f"{args.grid} {args.weighting} α={args.alpha:g}"
        rows += [(protocol, "Stage 1 (cosine)", m1), (protocol, f"Stage 2 {name}", m_plain),
                 (protocol, f"Stage 2 {name}, gated", m_gate)]
        out["results"].append({"protocol": protocol, "stage1": m1, "stage2": m_plain,
                               "stage2_gated": m_gate, "gate_used_fraction": float(used.mean()),
                               "emd_seconds": p.seconds, "n_queries": len(p.st.query_index)})
        console.print(f"{protocol}: gate sent {100 * used.mean():.1f} % of queries to Stage 2")
    # Harder check: the gate never sees the occlusion it is tested on (nor those identities).
    loo_rows = []
    for held_out in [n for n in prepared if n != "lfw-1680"]:
        train = [n for n in prepared if n != held_out]
        loo_gates = {f: fit_gate(prepared, train, f, args.clean_budget) for f in (False, True)}
        for protocol in ("lfw-1680", held_out):
            p = prepared[protocol]
            m = _retrieval(cross_fitted(p, loo_gates, args), p.st.query_labels,
                           p.st.gallery_labels, p.r)
            loo_rows.append((protocol, f"gate trained without {held_out}", m))
            out["results"].append({"protocol": protocol, "gate_without": held_out,
                                   "stage2_gated": m})
    bb = "" if args.backbone == "dlib" else f"_{args.backbone}"
    path = write_result(f"stage2_gated{bb}_n{args.limit or 'all'}", out)
    console.print(identification_table(rows))
    console.print(identification_table(loo_rows))
    console.print(f"wrote {path}")
    if args.save_gate:
        gate = fit_gate(prepared, everything, None, args.clean_budget, meta={
            "trained_on": "all LFW identification queries: lfw-1680 (easy) vs lfw-crop, "
                          "lfw-mask, lfw-sunglasses (hard), seed 0",
            "backbone": data.extractor.model_id, "grid": args.grid,
            "weighting": args.weighting, "k": args.k})
        saved = gate.save(bundled_gate_path(args.grid, args.weighting, args.backbone))
        console.print(f"wrote {saved}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--protocols", nargs="+", default=list(IDENTIFICATION))
    s.add_argument("--grids", nargs="+", default=["l2", "l1"])
    s.add_argument("--weightings", nargs="+", default=list(WEIGHTINGS))
    s.add_argument("--alpha", type=float, default=0.7, help="alpha shown in the table")
    s.add_argument("--keep-original", action="store_true",
                   help="occluded protocols: the papers' variant that keeps the query's original")
    g = sub.add_parser("gated")
    g.add_argument("--grid", default="l2")
    g.add_argument("--weighting", default="apc")
    g.add_argument("--alpha", type=float, default=0.7)
    g.add_argument("--save-gate", action="store_true")
    g.add_argument("--clean-budget", type=float, default=0.01,
                   help="share of clean training queries the gate may send to Stage 2")
    for p in (s, g):
        p.add_argument("--limit", type=int, default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--k", type=int, default=100)
        p.add_argument("--backbone", default="dlib", help="dlib or sface")
    args = ap.parse_args()
    {"sweep": sweep, "gated": gated}[args.cmd](args)


if __name__ == "__main__":
    Path(cache_root()).mkdir(parents=True, exist_ok=True)
    main()
