"""`facerank eval PROTOCOL`: run an LFW protocol, or a benchmark on disk (`bin:`, `ijb:`,
`tinyface:`), and write JSON + markdown reports."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from facerank.cli.options import (
    Backbone,
    Calibrate,
    CalibrateWith,
    Gate,
    Ray,
    RayBatch,
    RayConcurrency,
    ray_extractor,
)
from facerank.errors import InputError


def register(app: typer.Typer) -> None:
    """Add the `eval` command to the main app."""
    app.command(name="eval")(eval_command)


def eval_command(
    protocol: Annotated[str, typer.Argument(
        help="lfw-1680, lfw-crop, lfw-mask, lfw-sunglasses, lfw-lowres, lfw-pairs, lfw-openset "
        "or all (those seven); photo protocols (the occluder drawn on the photo, then detect, "
        "align and embed; not in all): lfw-mask-photo, lfw-sunglasses-photo; or a benchmark "
        "on disk: bin:FILE.bin (insightface verification set), ijb:FOLDER (IJB-B/C), "
        "tinyface:FOLDER.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("eval-out"),
    stage2: Annotated[str, typer.Option(
        help="Stage-2 method (none, emd, vit, vit-fast, vit+emd).")] = "none",
    grid: Annotated[str, typer.Option(help="EMD patch grid: l2, l1, l2p4 (l2 pooled 4x4)...")]
    = "l2",
    weighting: Annotated[str, typer.Option(help="uniform, apc, cc, sc or lmk.")] = "apc",
    alpha: Annotated[float | None, typer.Option(
        help="Final = alpha*Stage-2 + (1-alpha)*cosine; default: the method's own (EMD 0.7, "
        "a Face-ViT the alpha fitted with its checkpoint).")] = None,
    k: Annotated[int, typer.Option(help="Stage-2 re-ranks the top k of Stage 1.")] = 100,
    gate: Gate = "auto",
    seed: Annotated[int, typer.Option(help="Seed of occlusions and splits.")] = 0,
    keep_original: Annotated[bool, typer.Option(
        help="Occluded protocols: keep the query's own original in the gallery (papers' code).")]
    = False,
    limit: Annotated[int | None, typer.Option(help="Use a seeded subset of N queries.")] = None,
    calibrate: Calibrate = "none",
    calibrate_with: CalibrateWith = None,
    pool: Annotated[str, typer.Option(
        help="ijb: template pooling, mean or url (URL-confidence-weighted mean).")] = "mean",
    detector: Annotated[str, typer.Option(
        help="Query chain of lfw-1680 and the photo protocols: lfw (the fixed set-up: HOG, "
        "centre face, central box, as the bundled gate and the caches), or yunet, hog, "
        "mmod in that set-up. The gallery always keeps the fixed set-up.")] = "lfw",
    align5: Annotated[str, typer.Option(
        help="yunet only: chip from dlib's 5-point predictor (dlib) or YuNet's points "
        "(points).")] = "dlib",
    backbone: Backbone = "dlib",
    ray: Ray = None,
    ray_batch_size: RayBatch = 32,
    ray_concurrency: RayConcurrency = None,
) -> None:
    """Evaluate Stage 1 (and a Stage-2 re-ranker) on an LFW protocol or a benchmark on disk."""
    from rich.console import Console

    from facerank.eval import protocols as P
    from facerank.eval.report import (
        identification_table,
        openset_table,
        verification_table,
        write_report,
    )
    from facerank.rerank.base import make_stage2

    console = Console()
    from facerank.eval.external import split_target

    if calibrate == "auto":
        raise InputError("--calibrate auto picks per gallery (searches); eval needs a named "
                         "calibrator: none, asnorm, ida-r or ida-l")
    target = split_target(protocol)
    if target is not None:
        _eval_external(console, *target, out_dir=out_dir, stage2=stage2, grid=grid,
                       weighting=weighting, alpha=alpha, k=k, gate=gate, calibrate=calibrate,
                       calibrate_with=calibrate_with, pool=pool, backbone=backbone)
        return
    names = list(P.PROTOCOLS) if protocol == "all" else [protocol]
    for n in names:
        if n not in P.PROTOCOLS + P.PHOTO:
            raise InputError(f"unknown protocol {n!r}; choose from "
                             f"{', '.join(P.PROTOCOLS + P.PHOTO)} or all")
    if calibrate != "none" and stage2 != "none":
        raise InputError("--calibrate evaluates calibrated Stage 1 only; pass --stage2 none")
    if calibrate_with is not None and calibrate == "none":
        raise InputError("--calibrate-with needs --calibrate asnorm, ida-r or ida-l")
    if detector not in ("lfw", "yunet", "hog", "mmod"):
        raise InputError(f"--detector {detector!r}: use lfw, yunet, hog or mmod")
    options = {"grid": grid, "weighting": weighting, "alpha": alpha, "k": k, "gate": gate}
    if backbone != "dlib":  # Stage 2 on that backbone's grids, with its own gate
        options["backbone"] = backbone
    reranker = make_stage2(stage2, **{n: v for n, v in options.items() if v is not None}
                           ) if stage2 != "none" else None
    command = "facerank " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    start = time.perf_counter()
    from facerank.cli.options import LANDMARKS68_NOTE

    typer.echo(LANDMARKS68_NOTE.format(why="the LFW evaluation set-up (occlusion generators, "
                                       "lmk weighting)"))
    fx = P.lfw_extractor(backbone=backbone)
    data = P.EvalData.load(fx, extract=ray_extractor(ray, fx, ray_batch_size, ray_concurrency))
    qx = P.chain_extractor(detector, align5, backbone=backbone) if detector != "lfw" else None
    console.print(f"LFW features ready: {len(data.features)} images in {data.seconds:.1f} s")
    method2 = reranker.describe() if reranker else ""
    gate = getattr(reranker, "gate", None)
    gate_note = None
    if gate is not None and "LFW" in str(gate.meta.get("trained_on", "")):
        gate_note = ("the Stage-2 quality gate was fitted on these LFW queries (all people), so "
                     "gated numbers here are optimistic; for identity-disjoint ones run "
                     "`python -m benchmarks.stage2 gated`, or pass --gate none")
        console.print(f"note: {gate_note}", markup=False, highlight=False)
    for n in names:
        t0 = time.perf_counter()
        if calibrate != "none":  # identity-disjoint anchors: facerank.eval.studies.calibration
            from facerank.eval.studies.calibration import eval_protocol

            payload, md = eval_protocol(data, n, calibrate, seed, calibrate_with)
            payload.update(command=command, seconds_total=time.perf_counter() - t0)
            paths = write_report(out_dir, f"{n}_calibrate-{calibrate}", payload,
                                 f"{md}\n\n`{command}`")
            console.print(md)
            console.print(f"wrote {paths[0]} and {paths[1]}")
            continue
        if n in P.IDENTIFICATION + P.PHOTO:
            res = P.run_identification(data, n, reranker, seed, keep_original, limit,
                                       query_extractor=qx)
            rows = [(n, "Stage 1 (cosine)", res.stage1)]
            if res.stage2:
                rows.append((n, method2, res.stage2))
            md = identification_table(rows)
            if "detected" in res.settings:
                md += (f"\n\ndetector {res.settings['detector']}: a face found in "
                       f"{100 * res.settings['detected']:.2f} % of queries, centred on the "
                       f"clean face in {100 * res.settings['found']:.2f} %")
            payload = {"settings": res.settings, "stage1": res.stage1, "stage2": res.stage2,
                       "seconds": res.seconds}
        elif n == "lfw-pairs":
            payload = P.run_pairs(data, reranker)
            rows_v = [("Stage 1 (cosine)", payload["stage1"])]
            if "stage2" in payload:  # a pair has no ranked list, so no gate: every pair blends
                label = method2.replace(", gated", "") + (" (the gate needs a ranked list; "
                                                          "not applied to pairs)" if gate else "")
                rows_v.append((label, payload["stage2"]))
            md = verification_table(rows_v)
        else:
            payload = P.run_openset(data, reranker, seed)
            rows_o = [("Stage 1 (cosine)", payload["stage1"])]
            if "stage2" in payload:
                rows_o.append((method2, payload["stage2"]))
            md = openset_table(rows_o)
        payload["command"] = command
        if gate is not None:
            payload["gate"] = {"meta": gate.meta, "threshold": gate.threshold, "note": gate_note}
        payload["seconds_total"] = time.perf_counter() - t0
        gated = "-gated" if gate is not None else ""
        a_used = _alpha_tag(getattr(reranker, "alpha", alpha))
        tag = n if reranker is None else f"{n}_{stage2}-{grid}-{weighting}-a{a_used}-k{k}{gated}"
        tag = tag if backbone == "dlib" else f"{backbone}_{tag}"
        if detector != "lfw":
            tag += f"_{qx.detector.config_id}"
        json_path, md_path = write_report(out_dir, tag, payload, f"{md}\n\n`{command}`")
        console.print(md)
        console.print(f"wrote {json_path} and {md_path}")
    console.print(f"total {time.perf_counter() - start:.1f} s")


def _alpha_tag(alpha: float | None) -> str:
    """The alpha in a report's file name ("default" for a method without one alpha)."""
    return "default" if alpha is None else f"{alpha:g}"


def _eval_external(console, kind: str, path: Path, *, out_dir: Path, stage2: str,  # noqa: ANN001
                   grid: str, weighting: str, alpha: float | None, k: int, gate: str,
                   calibrate: str, calibrate_with: Path | None, pool: str, backbone: str) -> None:
    """`facerank eval bin:FILE | ijb:FOLDER | tinyface:FOLDER` (facerank.eval.external)."""
    from facerank.eval import external as X
    from facerank.eval.report import verification_table, write_report

    command = "facerank " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if kind != "bin" and (stage2 != "none" or calibrate != "none"):
        raise InputError(f"{kind}: benchmarks report Stage 1 (pooled templates / plain "
                         "search); --stage2 and --calibrate apply to bin: sets")
    if pool not in ("mean", "url"):
        raise InputError(f"--pool {pool!r}: use mean or url")
    t0 = time.perf_counter()
    stem = path.stem if kind == "bin" else path.name
    tag = f"{kind}-{stem}" if backbone == "dlib" else f"{backbone}_{kind}-{stem}"
    if kind == "bin":
        from facerank.calibrate.factory import build
        from facerank.eval.readers.insightface_bin import read_bin
        from facerank.rerank.base import make_stage2

        if calibrate != "none" and stage2 != "none":
            raise InputError("--calibrate evaluates calibrated Stage 1 only; pass --stage2 none")
        vb = read_bin(path)
        fx = X.bin_extractor(backbone)
        cals = {}
        if calibrate != "none":
            cals[calibrate] = build(calibrate, calibrate_with, fx.model_id)
            tag += f"_calibrate-{calibrate}"
        reranker = None
        if stage2 != "none":
            options = {"grid": grid, "weighting": weighting, "alpha": alpha, "k": k,
                       "gate": gate, "backbone": backbone if backbone != "dlib" else None}
            reranker = make_stage2(stage2, **{n: v for n, v in options.items() if v is not None})
            tag += f"_{stage2}-{grid}-{weighting}"
        console.print(f"{path}: {len(vb)} pairs, {len(vb.images)} images")
        feats, rows = X.embed_bin(vb, fx)
        payload = X.run_bin(vb, feats, rows, reranker, cals)
        table = [("Stage 1 (cosine)", payload["stage1"])]
        if reranker is not None:  # a pair has no ranked list, so no gate: every pair blends
            note = (" (the gate needs a ranked list; not applied to pairs)"
                    if getattr(reranker, "gate", None) is not None else "")
            table.append((reranker.describe().replace(", gated", "") + note, payload["stage2"]))
        table += [(f"calibrated: {c}", payload[c]) for c in cals]
        md = verification_table(table)
        if cals and calibrate_with is None:
            md += ("\n\nthe bundled calibration anchors are LFW faces; on sets that share "
                   "LFW's people (lfw, calfw, cplfw) they are not identity-disjoint")
    elif kind == "ijb":
        from facerank.eval.readers.ijb import load_ijb

        ijb = load_ijb(path)
        fx = X.bin_extractor(backbone)  # the landmark file gives the points; no detection
        feats = X.embed_ijb(ijb, fx)
        weights = X.url_weights(feats, fx) if pool == "url" else None
        payload = X.run_ijb(ijb, feats, weights)
        o = payload["1:1"]
        md = ("| set | pooling | TAR@FAR=1e-4 | TAR@FAR=1e-5 | AUC |\n|---|---|---|---|---|\n"
              f"| {ijb.name} | {pool} | {100 * o['tar_at_far_1e-4']:.2f} | "
              f"{100 * o['tar_at_far_1e-5']:.2f} | {o['auc']:.4f} |")
        if "1:N" in payload:
            md += ("\n\n| gallery | TPIR@FPIR=1% | TPIR@FPIR=10% | rank-1 | rank-5 |\n"
                   "|---|---|---|---|---|\n" + "\n".join(
                       f"| {g} | {100 * v['tpir_at_fpir_1e-2']:.2f} | "
                       f"{100 * v['tpir_at_fpir_1e-1']:.2f} | {100 * v['rank1']:.2f} | "
                       f"{100 * v['rank5']:.2f} |" for g, v in payload["1:N"].items()))
        tag += f"_pool-{pool}"
    else:
        from facerank.eval.readers.tinyface import load_tinyface

        tfd = load_tinyface(path)
        payload = X.run_tinyface(tfd, X.tinyface_extractor(backbone))
        r = payload["stage1"]
        md = ("| method | rank-1 | rank-5 | rank-20 |\n|---|---|---|---|\n"
              f"| Stage 1 (cosine) | {100 * r['rank1']:.2f} | {100 * r['rank5']:.2f} | "
              f"{100 * r['rank20']:.2f} |")
    payload["command"] = command
    payload["backbone"] = backbone
    payload["seconds_total"] = time.perf_counter() - t0
    json_path, md_path = write_report(out_dir, tag, payload, f"{md}\n\n`{command}`")
    console.print(md)
    console.print(f"wrote {json_path} and {md_path}")
