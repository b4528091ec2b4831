"""Face-ViT Stage 2 on the CPU: the torch model vs the onnxruntime runtimes, speed and accuracy.

    python -m benchmarks.vit_runtime latency [--threads 1 2] [--probes 60]
    python -m benchmarks.vit_runtime accuracy [--protocols lfw-1680 ...] [--limit N]

`latency` times one probe against its 100 Stage-1 candidates (k = 100, no gate), as
`benchmarks.device_latency stage2_one_probe` does on its kit (which needs no LFW cache, for a
lent machine): EMD (l2, APC), the Face-ViT through torch
(`runtime="torch"`, the reference) and through onnxruntime (`onnx`: float32, `onnx-int8`),
alternately per probe, for each thread count asked (torch and onnxruntime threads; EMD runs
one probe's 100 pairs on one worker either way). Faces: 200 seeded LFW dlib features with
grids from the evaluator's cache (FACERANK_CACHE), each in turn the probe against all 200.
Writes benchmarks/results/vit_cpu_runtime.json: p50 / p95 ms, EMD / ViT ratios, the load
average before and after, and the largest score difference to the torch model.

`accuracy` runs the LFW protocols (dlib, as `facerank eval PROTOCOL --stage2 vit`: the bundled
H2L with its own gate) with runtime torch and onnx-int8 on the same queries and writes
benchmarks/results/vit_cpu_runtime_accuracy.json: P@1 (identification), pair accuracy and
TAR@FAR (pairs), TPIR (open set) for both, and the largest difference between the two
runtimes' ViT scores of the 6,000 LFW pairs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from benchmarks.device_latency import _pct

RUNTIMES = ("torch", "onnx", "onnx-int8")


def _faces(n: int = 200, seed: int = 0, backbone: str = "dlib"):  # noqa: ANN202 - a FeatureSet
    from facerank.eval import protocols as P

    data = P.EvalData.load(P.lfw_extractor(backbone=backbone))
    pick = np.sort(np.random.default_rng(seed).choice(len(data.features), n, replace=False))
    return data.features.take(pick)


def latency(threads: list[int], probes: int, warm: int = 3,
            checkpoints: tuple[str, ...] = (), backbone: str = "dlib") -> dict:
    """One probe's Stage 2 (100 candidates): EMD and the Face-ViT runtimes, alternately; each
    of `checkpoints` (other Face-ViT checkpoints) runs beside them as `vit_<stem>`, onnx-int8.
    backbone: whose features and bundled Face-ViT (`vit-h2l-<backbone>.pt` for SFace)."""
    import torch

    from facerank.ranking import cosine_topk
    from facerank.rerank.base import make_stage2

    fs = _faces(backbone=backbone)
    on = {} if backbone == "dlib" else {"backbone": backbone}
    emd = make_stage2("emd", gate="none", **on)
    out: dict = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        vits = {r: make_stage2("vit", gate="none", runtime=r, threads=n_threads, **on)
                for r in RUNTIMES}
        fns = {"emd": emd.emd_scores, **{f"vit_{r}": v.vit_scores for r, v in vits.items()}}
        for c in checkpoints:
            fns[f"vit_{Path(c).stem}"] = make_stage2("vit", checkpoint=c, gate="none",
                                                     runtime="onnx-int8", threads=n_threads,
                                                     **on).vit_scores
        t: dict[str, list[float]] = {n: [] for n in fns}
        diff = dict.fromkeys(RUNTIMES, 0.0)
        load0 = os.getloadavg()
        for i in range(probes + warm):
            probe = fs.take(np.array([i % len(fs)]))
            cand = cosine_topk(probe.embeddings, fs.embeddings, k=100).indices
            got = {}
            for name, fn in fns.items():
                t0 = time.perf_counter()
                got[name] = fn(probe, fs, cand)
                if i >= warm:
                    t[name].append(1000 * (time.perf_counter() - t0))
            for r in RUNTIMES:
                diff[r] = max(diff[r], float(np.abs(got[f"vit_{r}"] - got["vit_torch"]).max()))
        res = {n: _pct(v) for n, v in t.items()}
        emd50 = res["emd"]["p50_ms"]
        res["emd_over_vit_p50"] = {n.removeprefix("vit_"): emd50 / v["p50_ms"]
                                   for n, v in res.items() if n.startswith("vit_")}
        res["torch_over_runtime_p50"] = {r: res["vit_torch"]["p50_ms"] / res[f"vit_{r}"]["p50_ms"]
                                         for r in RUNTIMES}
        res["max_abs_score_diff_to_torch"] = diff
        res["loadavg_before"], res["loadavg_after"] = load0, os.getloadavg()
        out[f"{n_threads}_threads"] = res
        print(n_threads, "threads", {n: round(v["p50_ms"], 2) for n, v in res.items()
                                     if isinstance(v, dict) and "p50_ms" in v},
              res["emd_over_vit_p50"], flush=True)
    return out


def accuracy(protocols: list[str], limit: int | None) -> dict:
    """The protocols with runtime torch and onnx-int8 (gate: the checkpoint's, as shipped)."""
    from facerank.eval import protocols as P
    from facerank.eval.readers.lfw import load_pairs
    from facerank.rerank.base import make_stage2

    data = P.EvalData.load(P.lfw_extractor(backbone="dlib"))
    vits = {r: make_stage2("vit", runtime=r) for r in ("torch", "onnx-int8")}
    out: dict = {"describe": {r: v.describe() for r, v in vits.items()}}
    for name in protocols:
        row: dict = {}
        for r, v in vits.items():
            t0 = time.perf_counter()
            if name in P.IDENTIFICATION:
                res = P.run_identification(data, name, v, limit=limit, progress=False)
                row[r] = {"stage1": res.stage1, "stage2": res.stage2,
                          "n_queries": res.settings["n_queries"]}
            elif name == "lfw-pairs":
                row[r] = P.run_pairs(data, v)
            else:
                row[r] = P.run_openset(data, v, progress=False)
            row[r]["seconds"] = time.perf_counter() - t0
        out[name] = row
        print(name, {r: row[r].get("stage2") for r in vits}, flush=True)
    pairs = load_pairs(data.lfw)
    a, b = data.features.take(pairs.a), data.features.take(pairs.b)
    sc = {r: v.vit_pair_scores(a, b, symmetric=False) for r, v in vits.items()}
    out["pairs_vit_score_max_abs_diff"] = float(np.abs(sc["torch"] - sc["onnx-int8"]).max())
    out["pairs_vit_score_mean_abs_diff"] = float(np.abs(sc["torch"] - sc["onnx-int8"]).mean())
    out["n_pairs"] = len(pairs.a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["latency", "accuracy"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--probes", type=int, default=60)
    ap.add_argument("--checkpoint", nargs="*", default=[],
                    help="other Face-ViT checkpoints timed beside the bundled one (onnx-int8)")
    ap.add_argument("--protocols", nargs="+", default=["lfw-1680", "lfw-crop", "lfw-mask",
                                                        "lfw-sunglasses", "lfw-lowres",
                                                        "lfw-pairs", "lfw-openset"])
    ap.add_argument("--limit", type=int, default=None, help="seeded subset of N queries")
    ap.add_argument("--backbone", default="dlib", choices=["dlib", "sface"],
                    help="latency: whose features, EMD grids and bundled Face-ViT")
    ap.add_argument("--name", default=None, help="result file name (without .json)")
    args = ap.parse_args()
    if args.mode == "latency":
        times = latency(args.threads, args.probes, checkpoints=tuple(args.checkpoint),
                        backbone=args.backbone)
        payload = {"threads": times, "probes": args.probes, "k": 100,
                   "faces": f"200 seeded LFW faces ({args.backbone} features with grids)"}
        name = args.name or "vit_cpu_runtime"
    else:
        payload = accuracy(args.protocols, args.limit)
        payload["limit"] = args.limit
        name = args.name or "vit_cpu_runtime_accuracy"
    print("wrote", write_result(name, payload))


if __name__ == "__main__":
    main()
