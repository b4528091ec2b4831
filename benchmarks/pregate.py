"""Fit and check the pre-gate of a shipped Stage-2 gate (`facerank.rerank.gate.PreGate`).

    python -m benchmarks.pregate [--backbone dlib] [--limit 500] [--margin 1.0] [--save]

The pre-gate decides from Stage-1 scores and the query's own statistics (no optimal transport)
which queries the full gate might send to Stage 2; only those get EMD scores. It is fitted to
the shipped gate's own decisions on the LFW identification protocols (`benchmarks.stage2`
machinery and EMD caches, `--limit` seeded queries per protocol). Checked identity-disjoint:
a pre-gate fitted on one half of the people filters the other half's queries; the JSON gives,
per protocol, the share of queries that skip OT, the gate's sends the pre-gate lost, and P@1
of the gated EMD with and without the pre-gate. `--save` fits on all queries and writes
`<gate>.pre.json` beside the bundled gate (tied to that gate by its digest).
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from benchmarks.stage2 import prepare_all
from facerank.eval.protocols import EvalData, _retrieval, lfw_extractor
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.gate import PreGate, QualityGate, bundled_gate_path, pre_gate_path

console = Console()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="dlib")
    ap.add_argument("--grid", default="l2")
    ap.add_argument("--weighting", default="apc")
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=1.0,
                    help="logit margin below the lowest sent training query")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    gate_path = bundled_gate_path(args.grid, args.weighting, args.backbone)
    gate = QualityGate.load(gate_path)
    data = EvalData.load(lfw_extractor(backbone=args.backbone))
    prepared = prepare_all(data, args)
    rr = Stage2EMD(grid=args.grid, weighting=args.weighting, alpha=args.alpha, k=args.k,
                   gate=gate, backbone=args.backbone, pre_gate=False)
    pre_x, sent = {}, {}
    for name, p in prepared.items():
        cos = p.ranking.stage_scores["stage1"][:, : args.k]
        pre_x[name] = rr.pre_gate_features(p.st.queries, cos)
        # a gate fitted with extra inputs (`facerank train gate`) reads them after the 15
        sent[name] = gate.use_stage2(gate.inputs(p.feats, cos, p.st.queries.det_scores))
    folds = {n: p.fold for n, p in prepared.items()}
    pres = {}
    for test_fold in (False, True):
        x = np.concatenate([pre_x[n][folds[n] != test_fold] for n in prepared])
        y = np.concatenate([sent[n][folds[n] != test_fold] for n in prepared])
        pres[test_fold] = PreGate.fit(x, y, gate, args.margin)
    out = {"settings": vars(args), "gate": str(gate_path), "results": []}
    for name, p in prepared.items():
        maybe = np.where(folds[name], pres[True].maybe_stage2(pre_x[name]),
                         pres[False].maybe_stage2(pre_x[name]))
        labels = (p.st.query_labels, p.st.gallery_labels, p.r)
        full = _retrieval(rr.blend(p.ranking, p.emd, p.st.queries), *labels)
        emd = np.where(maybe[:, None], p.emd, np.nan).astype(np.float32)
        cascade = _retrieval(rr.blend(p.ranking, emd, p.st.queries, maybe), *labels)
        s1 = _retrieval(p.ranking, *labels)
        row = {"protocol": name, "queries": len(maybe), "gate_sent": int(sent[name].sum()),
               "pre_gate_passed": int(maybe.sum()),
               "lost_sends": int((sent[name] & ~maybe).sum()),
               "ot_skipped_share": float(1 - maybe.mean()), "p1_stage1": s1["p_at_1"],
               "p1_gated": full["p_at_1"], "p1_pre_gated": cascade["p_at_1"]}
        out["results"].append(row)
        console.print(row)
    if args.save:
        x = np.concatenate(list(pre_x.values()))
        y = np.concatenate(list(sent.values()))
        pre = PreGate.fit(x, y, gate, args.margin, meta={
            "fitted_on": f"the gate's decisions on {args.limit} seeded queries of each LFW "
                         "identification protocol", "backbone": args.backbone})
        path = pre.save(pre_gate_path(gate_path))
        console.print(f"wrote {path}; OT skipped on {pre.meta['kept_share_fit']:.1%} of the "
                      "fitting queries")
    bb = "" if args.backbone == "dlib" else f"_{args.backbone}"
    console.print(f"wrote {write_result(f'pregate{bb}_n{args.limit}', out)}")


if __name__ == "__main__":
    main()
