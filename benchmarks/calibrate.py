"""Score calibration on LFW: cosine vs AS-norm vs IDA-R vs IDA-L, identity-disjoint.

    python -m benchmarks.calibrate accuracy     # pairs (clean, cropped / masked second image),
                                                # open set, lfw-1680 and lfw-crop P@1, MAP@R
    python -m benchmarks.calibrate ablation     # k, anchor-set size, tau on LFW pairs
    python -m benchmarks.calibrate speed        # per-pair cost; calibrated gallery search
    python -m benchmarks.calibrate thresholds   # the FAR 1e-3 thresholds `compare` ships
    python -m benchmarks.calibrate stage2       # gated EMD Stage 2 after calibrated Stage 1

Anchors never share a person with the faces they calibrate: pairs use, per fold, the LFW
people absent from that fold; identification and open set use one identity half as anchors
and evaluate the other (both directions). IDA's tau / k and AS-norm's cohort size are chosen
on the anchor-side people only (`facerank.eval.studies.calibration_select`), IDA-L is
trained on them.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from facerank.eval.protocols import EvalData
from facerank.eval.readers.lfw import load_pairs
from facerank.eval.studies.calibration import (
    calibrated_identification,
    calibrated_openset,
    halves,
    lfw_factory,
    pairs_variant_embeddings,
)
from facerank.eval.studies.calibration_protocols import (
    check_disjoint,
    pairs_fold_anchor_rows,
    verification,
)
from facerank.eval.studies.calibration_select import choose

METHODS = ("cosine", "asnorm", "ida-r", "ida-l")
console = Console()


def _factories(data: EvalData, params: dict, epochs: int) -> dict:
    k, tau, top_n = params["k"], params["tau"], params["top_n"]
    return {"cosine": lfw_factory(data, "none"),
            "asnorm": lfw_factory(data, "asnorm", top_n=top_n),
            "ida-r": lfw_factory(data, "ida-r", k=k, tau=tau),
            "ida-l": lfw_factory(data, "ida-l", k=k, tau=tau, epochs=epochs)}


def pairs_accuracy(data: EvalData, epochs: int, kinds: tuple[str, ...]) -> dict:
    """Per fold: choose params on the fold's anchor people, build the four calibrators."""
    pairs = load_pairs(data.lfw)
    emb = data.features.embeddings
    labels = data.lfw.labels
    variants = {"clean": emb[pairs.b]}
    subsets = {"clean": np.ones(len(pairs.b), dtype=bool)}
    for kind in kinds:
        got = pairs_variant_embeddings(data, kind)
        if got is None:
            console.print(f"no cached {kind} variants: pairs with a {kind} image skipped")
            continue
        variants[kind], subsets[kind] = got
        subsets[f"clean, same pairs as {kind}"] = got[1]
    scores = {v: {m: np.empty(len(pairs.a)) for m in METHODS} for v in variants}
    chosen = {}
    for f in np.unique(pairs.fold):
        t0 = time.perf_counter()
        m = pairs.fold == f
        rows = pairs_fold_anchor_rows(data, pairs, int(f), per_identity=None)
        check_disjoint(labels[rows], np.union1d(labels[pairs.a[m]], labels[pairs.b[m]]))
        params = choose(data, rows)
        chosen[int(f)] = {k: params[k] for k in ("k", "tau", "top_n")}
        for name, make in _factories(data, params, epochs).items():
            cal = make(rows)
            for v, b in variants.items():
                a_, b_ = emb[pairs.a[m]], b[m]
                scores[v][name][m] = (np.einsum("pd,pd->p", a_, b_) if cal is None
                                      else cal.score_pairs(a_, b_))
        console.print(f"fold {f}: {chosen[int(f)]} ({time.perf_counter() - t0:.0f} s)")
    out = {}
    for v, m in subsets.items():
        by = scores[v.split(", same pairs as")[0]]
        sub = SimpleNamespace(same=pairs.same[m], fold=pairs.fold[m])
        out[v] = {n: verification(s[m], sub) | {"n_pairs": int(m.sum())} for n, s in by.items()}
    return {"results": out, "chosen_per_fold": chosen,
            "second_image_variants": "crop / mask: facerank.eval.occlusion via occluded_queries: "
                                     "the all-image variants (seed 1) when cached, else the "
                                     "lfw-crop / lfw-mask query set (seed 0), which covers the "
                                     "pairs whose second image is of a person with >= 2 images"}


def halves_accuracy(data: EvalData, epochs: int, protocols: tuple[str, ...]) -> dict:
    out = {}
    for half, rows, people in halves(data):
        t0 = time.perf_counter()
        params = choose(data, rows)
        cals = {n: make(rows) for n, make in _factories(data, params, epochs).items()}
        res = {"chosen": {k: params[k] for k in ("k", "tau", "top_n")}}
        for protocol in protocols:
            if protocol == "lfw-openset":
                res[protocol] = calibrated_openset(data, cals, people)
            else:
                res[protocol] = calibrated_identification(data, protocol, cals, people)
        out[half] = res
        console.print(f"{half}: {res['chosen']} ({time.perf_counter() - t0:.0f} s)")
    return out


def accuracy(args: argparse.Namespace) -> None:
    data = EvalData.load()
    kinds = ("crop", "mask")
    protocols = ("lfw-openset", "lfw-1680", "lfw-crop")
    if args.pairs_only:  # keep the identity-halves results of the previous run
        import json

        from benchmarks.common import RESULTS

        halves_res = json.loads((RESULTS / "calibrate_accuracy.json").read_text())["halves"]
    payload = {"command": f"python -m benchmarks.calibrate accuracy --epochs {args.epochs}",
               "pairs": pairs_accuracy(data, args.epochs, kinds),
               "halves": halves_res if args.pairs_only else
               halves_accuracy(data, args.epochs, protocols)}
    if args.pairs_only:
        payload["command"] += " --pairs-only"
        payload["halves_note"] = ("halves kept from the previous full run (the IDA score's "
                                  "constant log(k/2)/tau shift, added after it, changes no "
                                  "ranking or within-half threshold)")
    path = write_result("calibrate_accuracy", payload)
    for v, by in payload["pairs"]["results"].items():
        for n, r in by.items():
            console.print(f"pairs {v:5s} {n:7s} acc {100 * r['accuracy']:.2f} ± "
                          f"{100 * r['accuracy_std']:.2f}  TAR@1e-3 "
                          f"{100 * r['tar_at_far_1e-3']:.2f}  TAR@1e-2 "
                          f"{100 * r['tar_at_far_1e-2']:.2f}  AUC {r['auc']:.4f}")
    for half, res in payload["halves"].items():
        for n in METHODS:
            line = f"{half} {n:7s}"
            for p in protocols:
                o = res[p][n]
                line += (f"  TPIR@1% {100 * o['tpir_at_fpir_1e-2']:.2f} TPIR@10% "
                         f"{100 * o['tpir_at_fpir_1e-1']:.2f}" if p == "lfw-openset" else
                         f"  {p} P@1 {100 * o['p_at_1']:.2f} MAP@R {100 * o['map_at_r']:.2f}")
            console.print(line)
    console.print(f"wrote {path}")


def ablation(args: argparse.Namespace) -> None:
    """IDA-R on LFW pairs (per-fold anchors) sweeping one of k, anchor-set size, tau; the
    others at the bundled defaults k=10, tau=30 (inside the plateau the per-fold choices of
    `accuracy` fall in)."""
    from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU
    from facerank.eval.studies.calibration_protocols import pair_scores

    data = EvalData.load()
    pairs = load_pairs(data.lfw)
    k0, tau0 = DEFAULT_K, DEFAULT_TAU
    out: dict = {"command": "python -m benchmarks.calibrate ablation", "k0": k0, "tau0": tau0,
                 "cosine": verification(pair_scores(data, pairs, lfw_factory(data, "none")),
                                        pairs)}

    def run(**kw: object) -> dict:
        opts = {"k": k0, "tau": tau0, **kw}
        r = verification(pair_scores(data, pairs, lfw_factory(data, "ida-r", **opts)), pairs)
        console.print(f"{kw}: acc {100 * r['accuracy']:.2f} TAR@1e-3 "
                      f"{100 * r['tar_at_far_1e-3']:.2f} TAR@1e-2 {100 * r['tar_at_far_1e-2']:.2f}")
        return r

    out["k"] = {k: run(k=k) for k in (1, 5, 10, 20, 50)}
    out["tau"] = {t: run(tau=t) for t in (1, 3, 10, 20, 30, 50, 100, 200, 500, 1000)}
    out["anchors"] = {f"one per person, at most {n}": run(max_anchors=n)
                      for n in (100, 300, 1000, 3000)}
    out["anchors"]["one per person (all, ~5k)"] = run()
    out["anchors"]["every image (~11k)"] = run(per_identity=None)
    console.print(f"wrote {write_result('calibrate_ablation', out)}")


def thresholds(args: argparse.Namespace) -> None:
    """Thresholds at FAR 1e-3 for the bundled calibrators, on identity half B (never seen by
    the bundled anchors / IDA-L): every image pair of 4,000 seeded half-B faces."""
    import json
    from pathlib import Path

    from facerank.calibrate.base import make_calibrator
    from facerank.eval.studies.calibration_protocols import calibrated_matrix
    from facerank.eval.studies.calibration_select import _tar_at_far
    from facerank.train.split import identity_fold

    data = EvalData.load()
    fold = identity_fold(data.lfw.labels, 0)
    rows = np.flatnonzero(~fold)
    rows = np.sort(np.random.default_rng(0).choice(rows, min(4000, len(rows)), replace=False))
    x, y = data.features.embeddings[rows], data.lfw.labels[rows]
    iu = np.triu_indices(len(x), 1)
    same = (y[:, None] == y[None, :])[iu]
    out = {}
    for name in METHODS:
        cal = make_calibrator("none" if name == "cosine" else name)
        s = calibrated_matrix(cal, x, x)[iu]
        neg = np.sort(s[~same])[::-1]
        thr = float(neg[int(1e-3 * len(neg)) - 1])
        out[name] = {"threshold": thr, "far": 1e-3, "tar": _tar_at_far(s, same),
                     "describe": cal.describe() if cal else "cosine",
                     "measured_on": f"all {len(neg)} impostor / {int(same.sum())} genuine pairs "
                                    f"of {len(x)} seeded images of LFW identity half B",
                     "command": "python -m benchmarks.calibrate thresholds"}
        console.print(f"{name}: threshold {thr:.4f}, TAR {100 * out[name]['tar']:.2f} %")
    dest = Path(__file__).resolve().parents[1] / "src/facerank/calibrate/defaults/thresholds.json"
    dest.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {dest} and {write_result('calibrate_thresholds', out)}")


def speed(args: argparse.Namespace) -> None:
    """Per-pair cost of the four scores (bundled anchors / checkpoint), interleaved repeats,
    and StoredGallery.search p50 on an LFW gallery with and without calibration."""
    from pathlib import Path

    from facerank.calibrate.base import make_calibrator
    from facerank.eval.protocols import lfw_extractor
    from facerank.gallery import StoredGallery

    data = EvalData.load()
    pairs = load_pairs(data.lfw)
    emb = data.features.embeddings
    a, b = emb[pairs.a], emb[pairs.b]
    cals = {n: make_calibrator("none" if n == "cosine" else n) for n in METHODS}
    times: dict[str, list[float]] = {n: [] for n in METHODS}
    for _ in range(args.repeats):
        for n, cal in cals.items():
            t0 = time.perf_counter()
            _ = np.einsum("pd,pd->p", a, b) if cal is None else cal.score_pairs(a, b)
            times[n].append(time.perf_counter() - t0)
    per_pair = {n: 1e6 * min(t) / len(a) for n, t in times.items()}
    out: dict = {"command": f"python -m benchmarks.calibrate speed --repeats {args.repeats}",
                 "pairs": len(a), "per_pair_us_fastest": per_pair,
                 "per_pair_us_all_runs": {n: [1e6 * x / len(a) for x in t]
                                          for n, t in times.items()},
                 "calibrators": {n: c.describe() if c else "cosine" for n, c in cals.items()}}
    for n, us in per_pair.items():
        console.print(f"{n:7s} {us:8.3f} us/pair ({us / per_pair['cosine']:.0f}x cosine)")
    folder = Path(args.gallery)
    if not folder.exists():
        console.print(f"building the LFW gallery in {folder} (cached features)")
        g = StoredGallery.create(folder, extractor=lfw_extractor(), load_grids=False)
        g.add_folder(data.lfw.root / "images")
    g = StoredGallery.open(folder, extractor=lfw_extractor(), load_grids=False)
    feats = g.features(grids=False)
    rows = np.random.default_rng(0).choice(len(feats), args.probes, replace=False)
    probes = [feats.take([int(r)]) for r in rows]
    variants = {"uncalibrated": None, **{n: c for n, c in cals.items() if c is not None}}
    for c in variants.values():  # index, gallery terms (stored once), warm-up
        g.search(probes[0], k=10, calibrate=c)
    ms: dict[str, list[float]] = {n: [] for n in variants}
    for p in probes:  # interleaved: every probe through every variant
        for n, c in variants.items():
            t0 = time.perf_counter()
            g.search(p, k=10, calibrate=c)
            ms[n].append(1e3 * (time.perf_counter() - t0))
    out["gallery"] = {"images": len(feats), "probes": args.probes, "k": 10,
                      "p50_ms": {n: float(np.median(v)) for n, v in ms.items()},
                      "p95_ms": {n: float(np.percentile(v, 95)) for n, v in ms.items()}}
    for n in variants:
        console.print(f"search {n:12s} p50 {out['gallery']['p50_ms'][n]:.3f} ms  p95 "
                      f"{out['gallery']['p95_ms'][n]:.3f} ms")
    console.print(f"wrote {write_result('calibrate_speed', out)}")


def stage2(args: argparse.Namespace) -> None:
    """Gated EMD Stage 2 after calibrated Stage 1 (lfw-1680, lfw-crop; both identity halves).

    Per evaluated half: the calibrators come from the other half (k, tau, N chosen there, as
    in `accuracy`), and so does the Stage-2 gate (`benchmarks.stage2`'s cross-fitted gate,
    fitted on the other half's queries of all four protocols). Each calibrated ranking then
    goes through the product's Stage 2 unchanged (`Stage2EMD.blend`: l2, APC, alpha 0.7,
    k 100): the gate reads the cosines of the calibrated top k, and a query it sends on has
    its top k re-ordered by alpha * EMD + (1 - alpha) * cosine.
    """
    from benchmarks.stage2 import emd_cached, fit_gate, prepare_all
    from facerank.eval.studies.calibration import half_setup
    from facerank.eval.studies.calibration_protocols import calibrated_topk, retrieval
    from facerank.rerank.emd.reranker import Stage2EMD

    data = EvalData.load()
    s2 = SimpleNamespace(grid="l2", weighting="apc", alpha=0.7, k=100, limit=None, seed=0,
                         backbone="dlib")
    prepared = prepare_all(data, s2)  # all 9,164 queries x 4 protocols: the gates' inputs
    out: dict = {"command": f"python -m benchmarks.calibrate stage2 --epochs {args.epochs}",
                 "stage2": vars(s2) | {"clean_budget": 0.01}, "halves": {}}
    for half, rows, people in halves(data):
        anchor_fold = half.endswith("A")  # identity_fold's True half is "A"
        gate = fit_gate(prepared, list(prepared), not anchor_fold, 0.01)  # anchor side only
        params = choose(data, rows)
        cals = {n: make(rows) for n, make in _factories(data, params, args.epochs).items()}
        res: dict = {"chosen": {k: params[k] for k in ("k", "tau", "top_n")}}
        rr = Stage2EMD(grid=s2.grid, weighting=s2.weighting, alpha=s2.alpha, k=s2.k, gate=gate)
        key = "-".join(f"{k}{v:g}" for k, v in res["chosen"].items())
        for protocol in ("lfw-1680", "lfw-crop"):
            hs = half_setup(data, protocol, people)
            q, g = hs.queries.embeddings, hs.gallery.embeddings
            for name, cal in cals.items():
                ranking = calibrated_topk(cal, q, g, max(hs.depth, s2.k), hs.exclude)
                emd, _ = emd_cached(rr, hs, ranking,  # cached under <cache>/stage2/calib-...
                                    f"calib-{protocol}-{half[-1]}-{name}-{key}-k{s2.k}")
                gated = rr.blend(ranking, emd, hs.queries)
                labels = (hs.query_labels, hs.gallery_labels, hs.exclude)
                m1, m2 = retrieval(ranking, *labels), retrieval(gated, *labels)
                res.setdefault(protocol, {})[name] = {
                    "stage1": {k: m1[k] for k in ("p_at_1", "map_at_r")},
                    "gated_stage2": {k: m2[k] for k in ("p_at_1", "map_at_r")},
                    "gate_used": float((gated.stage_scores["alpha"] > 0).mean()),
                    "n_queries": len(q)}
                console.print(f"{half} {protocol} {name:7s} P@1 {100 * m1['p_at_1']:.2f} -> "
                              f"{100 * m2['p_at_1']:.2f}  MAP@R {100 * m1['map_at_r']:.2f} -> "
                              f"{100 * m2['map_at_r']:.2f}  (gate sent "
                              f"{100 * res[protocol][name]['gate_used']:.1f} %)")
        out["halves"][half] = res
    console.print(f"wrote {write_result('calibrate_stage2', out)}")


def report(args: argparse.Namespace) -> None:
    """Markdown tables of the result files (what docs/results.md quotes)."""
    import json

    from benchmarks.common import RESULTS

    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    acc = json.loads((RESULTS / "calibrate_accuracy.json").read_text())
    print("| second image | method | pairs | accuracy % | TAR@FAR=1e-3 | TAR@FAR=1e-2 | AUC |")
    print("|---|---|---|---|---|---|---|")
    for v, by in acc["pairs"]["results"].items():
        for n, r in by.items():
            print(f"| {v} | {n} | {r['n_pairs']} | {pct(r['accuracy'])} ± "
                  f"{pct(r['accuracy_std'])} | {pct(r['tar_at_far_1e-3'])} | "
                  f"{pct(r['tar_at_far_1e-2'])} | {r['auc']:.4f} |")
    print("\nchosen per fold:", acc["pairs"]["chosen_per_fold"], "\n")
    print("| evaluated half | method | open set TPIR@FPIR=1% | TPIR@FPIR=10% | lfw-1680 P@1 | "
          "MAP@R | lfw-crop P@1 | MAP@R |")
    print("|---|---|---|---|---|---|---|---|")
    mean: dict = {}
    for half, res in acc["halves"].items():
        evaluated = "B" if half.endswith("A") else "A"
        for n in METHODS:
            vals = [res["lfw-openset"][n]["tpir_at_fpir_1e-2"],
                    res["lfw-openset"][n]["tpir_at_fpir_1e-1"],
                    res["lfw-1680"][n]["p_at_1"], res["lfw-1680"][n]["map_at_r"],
                    res["lfw-crop"][n]["p_at_1"], res["lfw-crop"][n]["map_at_r"]]
            mean.setdefault(n, []).append(vals)
            print(f"| {evaluated} ({half}, {res['chosen']}) | {n} | "
                  + " | ".join(pct(x) for x in vals) + " |")
    for n, v in mean.items():
        print(f"| mean of both | {n} | " + " | ".join(pct(x) for x in np.mean(v, axis=0)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("accuracy", "ablation", "speed", "thresholds", "stage2",
                                     "report"))
    ap.add_argument("--epochs", type=int, default=60,
                    help="IDA-L training epochs (per fold / half; the bundled one: 300)")
    ap.add_argument("--pairs-only", action="store_true",
                    help="accuracy: re-run pairs only, keep the halves of the last result")
    ap.add_argument("--repeats", type=int, default=7, help="speed: interleaved repeats")
    ap.add_argument("--probes", type=int, default=200, help="speed: gallery search probes")
    ap.add_argument("--gallery", default="/tmp/facerank-lfw-gallery",
                    help="speed: LFW gallery folder (built from cached features if missing)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # small MLPs: threads only contend on a shared 2-core machine
    {"accuracy": accuracy, "ablation": ablation, "thresholds": thresholds, "report": report,
     "speed": speed, "stage2": stage2}[args.what](args)


if __name__ == "__main__":
    main()
