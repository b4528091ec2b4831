"""Face-ViT Stage 2 (H2L, H2, H1) vs Stage 1 and DeepFace-EMD, identity-disjoint, both folds.

Checkpoints live under `<cache>/vit/NAME-fold{0,1}.pt`; they were made with (one torch thread,
OMP_NUM_THREADS=1, as on the busy 2-core machine; width 64 was the default then):

    facerank train vit --variants crop --width 64 --train-fold {1,0} --epochs 5 \
        --out <cache>/vit/h2l-fold{1,0}.pt
    facerank train vit --variants crop,mask --width 64 --train-fold {1,0} --epochs 5 \
        --out <cache>/vit/h2lcm-fold{1,0}.pt
    facerank train vit --variant {h2,h1} --variants crop --width 64 --train-fold 1 --epochs 5 \
        --out <cache>/vit/{h2,h1}-fold1.pt
    facerank train vit --variants crop --width 64 --train-fold 1 --epochs 5 --depth D --heads H \
        --out <cache>/vit/h2l-abl-dDhH-e5-fold1.pt   (D, H) in {(1, 1), (2, 1), (2, 4)}
    facerank train vit --train-fold {1,0} --out <cache>/vit/h2lw16-fold{1,0}.pt   # ships (fold 1)
        (defaults: --variants crop,mask,sunglasses --width 128 --epochs 16)
    facerank train vit --width 128 --epochs 8 --train-fold 1 --out <cache>/vit/h2lw-fold1.pt
    facerank train vit --width 128 --depth 2 --epochs 12 --train-fold 1 \
        --out <cache>/vit/h2lwd2-fold1.pt
    (or `python -m benchmarks.vit train`, which runs the width-64 kinds for both folds)
    facerank train vit --width 64 --train-fold {1,0} --out <cache>/vit/h2lw64-fold{1,0}.pt
    facerank train vit --width 64 --heads 1 --train-fold {1,0} \
        --out <cache>/vit/h2lw64h1-fold{1,0}.pt
    facerank train vit --width 64 --heads 1 --train-fold {1,0} \
        --distil-from <cache>/vit/h2lw16-fold{1,0}.pt --distil-weight 5 \
        --out <cache>/vit/h2lw64h1d5-fold{1,0}.pt
    facerank train vit --width 48 --heads 1 --train-fold {1,0} \
        --distil-from <cache>/vit/h2lw16-fold{1,0}.pt --distil-weight 5 \
        --out <cache>/vit/h2lw48h1d5-fold{1,0}.pt        # fold 1 = the bundled vit-fast

    python -m benchmarks.vit eval --models h2lw16 h2lw64h1d5 --limit 0  # distilled width 64
    python -m benchmarks.vit eval --models h2lw64h1d5 h2lw48h1d5 --limit 0  # and vit-fast

    python -m benchmarks.vit eval --models h2l h2lcm h2lw16 --limit 0  # all queries + pairs
    python -m benchmarks.vit eval [--models h2l h2lcm]  # 1,000 seeded queries per protocol
    python -m benchmarks.vit ablation                   # H2L/H2/H1, depth x heads (fold-1 models)
    python -m benchmarks.vit speed [--checkpoint A.pt B.pt]  # ViT vs EMD, 1,000 x top-100
    python -m benchmarks.vit heatmaps                   # docs/img/vit-heatmap-*.png

Every model trained on identity half f (`facerank.train.split.identity_fold`, seed 0) scores
only the queries (and pairs) of people in the other half, so each query is scored by exactly
one model that never saw its identity; the report gives both halves and their union. EMD
rows use the same queries and Stage-1 rankings (l2, APC, alpha 0.7); its gate is
cross-fitted on the other half's queries as in `benchmarks.stage2 gated`. ViT and EMD scores
are cached under `<cache>/stage2/`.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from benchmarks.stage2 import Prepared, cross_fitted, emd_cached, fit_gate, prepare
from facerank._util.checkpoint import read_config
from facerank._util.paths import cache_root
from facerank.eval import metrics
from facerank.eval.protocols import (
    IDENTIFICATION,
    OCCLUSION_OF,
    EvalData,
    IdentificationSetup,
    _retrieval,
    occluded_queries,
)
from facerank.eval.readers.lfw import load_pairs
from facerank.eval.report import identification_table, verification_table
from facerank.ranking import Ranking, cosine_topk
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.gate import QualityGate
from facerank.rerank.vit.reranker import DEFAULT_CHECKPOINT, Stage2ViT
from facerank.train.split import identity_fold

console = Console()
MODELS = {  # name -> (variant, depth, heads)
    "h2l": ("h2l", 1, 4), "h2": ("h2", 1, 4), "h1": ("h1", 1, 4),
    "h2lcm": ("h2l", 1, 4)}  # h2lcm: H2L trained on crop + mask variants
FOLDS = (True, False)  # train fold of each model


def ckpt_path(name: str, train_fold: bool, tag: str = "") -> Path:
    return cache_root() / "vit" / f"{name}{tag}-fold{int(train_fold)}.pt"


def train(args: argparse.Namespace) -> None:
    from facerank.rerank.vit.train import train_vit
    from facerank.train.data import load_training_data

    td = load_training_data(progress=True)
    out = {"settings": vars(args), "models": {}}
    for name in args.models:
        variant, depth, heads = MODELS[name]
        for fold in FOLDS:
            path = ckpt_path(name, fold)
            if path.is_file() and not args.force:
                console.print(f"{path} exists (use --force to retrain)")
                cfg = read_config(path)
            else:
                console.print(f"training {name} on fold {int(fold)}")
                cmd = (f"facerank train vit --variant {variant} --grid {args.grid} --width "
                       f"{args.width} --depth {depth} --heads {heads} --epochs {args.epochs} "
                       f"--train-fold {int(fold)} --seed {args.seed} --out {path}")
                res = train_vit({"variant": variant, "width": args.width, "depth": depth,
                                 "heads": heads}, args.grid, fold, args.epochs, args.batch,
                                args.lr, args.seed, path, cmd, True, td)
                cfg = res["config"]
            out["models"][f"{name}-fold{int(fold)}"] = {
                "alpha": cfg["alpha"], "measured": cfg["measured"], "command": cfg["command"]}
    if args.bundle:
        src = ckpt_path("h2l", True)
        DEFAULT_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, DEFAULT_CHECKPOINT)
        shutil.copy(src.with_suffix(".json"), DEFAULT_CHECKPOINT.with_suffix(".json"))
        console.print(f"bundled {src} as {DEFAULT_CHECKPOINT}")
    path = write_result("vit_train", out)
    console.print(f"wrote {path}")


def vit_cached(name: str, st, ranking: Ranking, fold: np.ndarray, tag: str, k: int,  # noqa: ANN001
               ckpt_tag: str = "") -> tuple[np.ndarray, float, dict]:
    """(Q, k) ViT scores, each query scored by the model not trained on its identity."""
    path = cache_root() / "stage2" / f"{tag}-vit-{name}{ckpt_tag}.npz"
    scorers = {f: Stage2ViT.load(ckpt_path(name, f, ckpt_tag), k=k) for f in FOLDS}
    if path.is_file():
        z = np.load(path)
        return z["vit"], float(z["seconds"]), scorers
    vit = np.zeros((len(fold), k), dtype=np.float32)
    t0 = time.perf_counter()
    for f, sc in scorers.items():
        sel = np.flatnonzero(fold != f)  # the model of fold f scores the other half
        vit[sel] = sc.vit_scores(st.queries.take(sel), st.gallery, ranking.indices[sel, :k],
                                 progress=True)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, vit=vit, seconds=seconds)
    return vit, seconds, scorers


def prepare_subset(data: EvalData, protocol: str, limit: int | None, seed: int, k: int):  # noqa: ANN201
    """`benchmarks.stage2.prepare` on a seeded subset of the 9,164 queries (the subset
    `setup_identification(limit=...)` takes), building occluded features for that subset only
    (each image's occlusion is seeded by its own id, so they equal the full set's rows)."""
    if limit is None or protocol == "lfw-1680" or _full_set_cached(data, protocol, seed):
        return prepare(data, protocol, limit, seed, k)
    lfw = data.lfw
    all_queries = lfw.people_with_at_least(2)
    pick = np.sort(np.random.default_rng(seed).choice(len(all_queries), limit, replace=False))
    query_index = all_queries[pick]
    queries = occluded_queries(data, OCCLUSION_OF[protocol], query_index, seed, True)
    st = IdentificationSetup(protocol, queries, lfw.labels[query_index], data.features,
                             lfw.labels, query_index.copy(), query_index, {"limit": limit}, 0.0)
    rel = st.gallery_labels[None, :] == st.query_labels[:, None]
    r = rel.sum(axis=1) - (st.gallery_labels[st.exclude] == st.query_labels)
    ranking = cosine_topk(st.queries.embeddings, st.gallery.embeddings, int(max(r.max(), k)),
                          st.exclude)
    return st, ranking, r


def _full_set_cached(data: EvalData, protocol: str, seed: int) -> bool:
    fx = data.extractor
    if fx.cache_dir is None:
        return False
    folder = fx.cache_dir.parent.parent / "protocols" / fx.config_digest
    n = len(data.lfw.people_with_at_least(2))
    return any(folder.glob(f"{OCCLUSION_OF[protocol]}-v*-seed{seed}-n{n}-*.npz"))


def blend(ranking: Ranking, score: np.ndarray, alpha: np.ndarray, name: str) -> Ranking:
    """Re-order the first k columns by alpha (Q, 1) * score + (1 - alpha) * cosine."""
    k = score.shape[1]
    cos = ranking.stage_scores.get("stage1", ranking.scores)[:, :k]
    final = alpha * score + (1 - alpha) * cos
    order = np.argsort(-final, axis=1, kind="stable")
    rows = np.arange(ranking.num_queries)[:, None]
    return ranking.reorder(order, final[rows, order], name, score)


def vit_alpha(scorers: dict, fold: np.ndarray, gated: bool, queries, cos: np.ndarray,  # noqa: ANN001
              vit: np.ndarray) -> np.ndarray:
    """(Q, 1) each query's alpha: its model's fitted alpha, 0 where its model's gate says
    Stage 1 (gated)."""
    alpha = np.zeros((len(fold), 1), dtype=np.float32)
    for f, sc in scorers.items():
        sel = fold != f
        alpha[sel] = sc.meta.get("alpha_gated", sc.alpha) if gated else sc.alpha
        if gated:
            gate = QualityGate(**sc.meta["gate"])
            feats = sc.gate_features(queries.take(np.flatnonzero(sel)), cos[sel], vit[sel])
            alpha[np.flatnonzero(sel)[~gate.use_stage2(feats)]] = 0.0
    return alpha


def evaluate(args: argparse.Namespace) -> None:
    if "lfw-1680" not in args.protocols or len(args.protocols) < 2:
        raise SystemExit("eval needs lfw-1680 and an occluded protocol: the gates are fitted "
                         "on clean (easy) vs occluded (hard) queries of the other half")
    data = EvalData.load()
    first_half = identity_fold(data.lfw.labels, 0)
    k = args.k
    prepared: dict[str, Prepared] = {}
    vits: dict[str, dict] = {}
    for protocol in args.protocols:
        st, ranking, r = prepare_subset(data, protocol, args.limit, 0, k)
        tag = f"{protocol}-s0-n{len(st.query_index)}-k{k}"
        emd_rr = Stage2EMD(grid="l2", weighting="apc", alpha=0.7, k=k)
        emd, seconds = emd_cached(emd_rr, st, ranking, tag)
        fold = first_half[st.query_index]
        cos = ranking.stage_scores["stage1"][:, :k]
        prepared[protocol] = Prepared(st, ranking, r, emd, fold,
                                      emd_rr.gate_features(st.queries, cos, emd), seconds)
        vits[protocol] = {n: vit_cached(n, st, ranking, fold, tag, k) for n in args.models}
    # (Q, 1) each query's alpha under its ViT's gate (0: kept at Stage 1), per protocol / model
    gated = {protocol: {n: vit_alpha(v[2], prepared[protocol].fold, True,
                                     prepared[protocol].st.queries,
                                     prepared[protocol].ranking.stage_scores["stage1"][:, :k],
                                     v[0]) for n, v in vits[protocol].items()}
             for protocol in prepared}
    emd_gates = {f: fit_gate(prepared, list(prepared), f, 0.01) for f in (False, True)}
    mix = {n: cross_fitted_mix(prepared, vits, gated, n) for n in args.models
           if n.startswith("h2l")}
    gate_args = argparse.Namespace(grid="l2", weighting="apc", alpha=0.7, k=k, backbone="dlib")
    rows, out = [], {"settings": vars(args), "results": []}
    for protocol, p in prepared.items():
        labels = (p.st.query_labels, p.st.gallery_labels, p.r)
        cos = p.ranking.stage_scores["stage1"][:, :k]
        methods: dict[str, Ranking] = {"Stage 1 (cosine)": p.ranking}
        methods["EMD l2 APC α=0.7"] = blend(p.ranking, p.emd, np.full((len(p.fold), 1), 0.7),
                                            "emd")
        methods["EMD l2 APC α=0.7, gated"] = cross_fitted(p, emd_gates, gate_args)
        for name in args.models:
            vit, seconds, scorers = vits[protocol][name]
            a = vit_alpha(scorers, p.fold, False, p.st.queries, cos, vit)
            methods[f"{name.upper()} α={_alphas(scorers)}"] = blend(p.ranking, vit, a, "vit")
            if name.startswith("h2l"):
                big = name.upper()
                ag = gated[protocol][name]
                ga = "/".join(f"{scorers[f].meta.get('alpha_gated', 0):g}" for f in FOLDS)
                methods[f"{big} α={ga}, gated"] = blend(p.ranking, vit, ag, "vit")
                # EMD + ViT: the mean of the two Stage-2 blends (no new weight fitted)
                both = 0.5 * (a * vit + (1 - a) * cos) + 0.5 * (0.7 * p.emd + 0.3 * cos)
                methods[f"EMD + {big} (mean of blends)"] = blend(p.ranking, both,
                                                                 np.ones_like(a), "both")
                bg = mixed_blend(0.5, ag, vit, p.emd, cos)
                methods[f"EMD + {big}, {big}'s gate"] = blend(p.ranking, bg, np.ones_like(a),
                                                              "both")
                # the ViT's gate decides; the EMD / ViT weight w cross-fitted on the other half
                w = np.where(p.fold, mix[name][True], mix[name][False])[:, None]
                bw = mixed_blend(w, ag, vit, p.emd, cos)
                methods[f"EMD + {big}, {big}'s gate, w cross-fitted"] = blend(
                    p.ranking, bw, np.ones_like(a), "both")
                out.setdefault("mix_weight", {})[name] = {
                    f"test_fold{int(f)}": mix[name][f] for f in FOLDS}
                # EMD's cross-fitted gate decides; a query it sends gets the mean of blends
                used = np.where(p.fold, emd_gates[True].use_stage2(p.feats),
                                emd_gates[False].use_stage2(p.feats))[:, None]
                methods[f"EMD + {big}, EMD's gate"] = blend(p.ranking, np.where(used, both, cos),
                                                            np.ones_like(a), "both")
                out.setdefault("vit_seconds", {}).setdefault(name, {})[protocol] = seconds
                out.setdefault("gate_used", {}).setdefault(name, {})[protocol] = float(
                    (ag > 0).mean())
                out.setdefault("emd_gate_used", {})[protocol] = float(used.mean())
        for method, ranking in methods.items():
            m_all = _retrieval(ranking, *labels)
            per_fold = {}
            for f in (True, False):  # test people of the model trained on the other half
                sel = p.fold == f
                rk = Ranking(ranking.indices[sel], ranking.scores[sel])
                per_fold[f"test_fold{int(f)}"] = _retrieval(
                    rk, p.st.query_labels[sel], p.st.gallery_labels, p.r[sel])
            rows.append((protocol, method, m_all))
            out["results"].append({"protocol": protocol, "method": method, "all": m_all,
                                   **per_fold})
        console.print(identification_table([x for x in rows if x[0] == protocol]))
    if args.pairs:
        out["pairs"] = pairs_eval(data, first_half, args.models)
    name = "vit_eval" + ("" if args.models == ["h2l"] else "_" + "_".join(args.models))
    if list(args.protocols) != list(IDENTIFICATION):
        name += "_" + "_".join(p.removeprefix("lfw-") for p in args.protocols)
    if args.limit is None:
        name += "_all"  # every query (the 1,000-query runs keep their files)
    path = write_result(name, out)
    console.print(identification_table(rows))
    console.print(f"wrote {path}")


MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def mixed_blend(w: float | np.ndarray, ag: np.ndarray, vit: np.ndarray, emd: np.ndarray,
                cos: np.ndarray) -> np.ndarray:
    """(Q, k) `w * ViT blend + (1 - w) * EMD blend (alpha 0.7)` for the queries the ViT's gate
    sends on (ag (Q, 1) > 0), the cosine for the others."""
    return np.where(ag > 0, w * (ag * vit + (1 - ag) * cos) + (1 - w) * (0.7 * emd + 0.3 * cos),
                    cos)


def cross_fitted_mix(prepared: dict[str, Prepared], vits: dict, gated: dict,
                     name: str) -> dict[bool, float]:
    """{test fold: w}: the ViT share w of `mixed_blend` with the best mean P@1 over all
    protocols on the *other* half's queries, so no query's own identity chooses its weight."""
    p1 = {f: np.zeros(len(MIX_WEIGHTS)) for f in (True, False)}
    for protocol, p in prepared.items():
        vit = vits[protocol][name][0]
        cos = p.ranking.stage_scores["stage1"][:, : vit.shape[1]]
        rows = np.arange(len(p.fold))
        for i, w in enumerate(MIX_WEIGHTS):
            final = mixed_blend(w, gated[protocol][name], vit, p.emd, cos)
            top = p.ranking.indices[rows, np.argmax(final, axis=1)]
            hit = p.st.gallery_labels[top] == p.st.query_labels
            for f in (True, False):
                p1[f][i] += hit[p.fold != f].mean() / len(prepared)  # chosen for test fold f
    return {f: float(MIX_WEIGHTS[int(np.argmax(v))]) for f, v in p1.items()}


def _alphas(scorers: dict) -> str:
    return "/".join(f"{scorers[f].alpha:g}" for f in FOLDS)


def pairs_eval(data: EvalData, first_half: np.ndarray, models: list[str]) -> dict:
    """pairs.txt verification on the pairs whose people are all of one test half."""
    pairs = load_pairs(data.lfw)
    fa, fb = first_half[pairs.a], first_half[pairs.b]
    keep = fa == fb
    a, b, same, folds = pairs.a[keep], pairs.b[keep], pairs.same[keep], pairs.fold[keep]
    test_half = fa[keep]  # the model trained on the other half scores them
    A, B = data.features.take(a), data.features.take(b)
    scores = {"Stage 1 (cosine)": np.einsum("pd,pd->p", A.embeddings, B.embeddings)}
    scores["EMD l2 APC α=0.7"] = Stage2EMD(grid="l2", weighting="apc", alpha=0.7,
                                           gate=None).score_pairs(A, B)
    for name in models:
        s = np.zeros(len(a), dtype=np.float32)
        raw = np.zeros(len(a), dtype=np.float32)
        for f in FOLDS:
            sc = Stage2ViT.load(ckpt_path(name, f))
            sel = np.flatnonzero(test_half != f)
            s[sel] = sc.score_pairs(A.take(sel), B.take(sel))
            raw[sel] = sc.vit_pair_scores(A.take(sel), B.take(sel))
        scores[f"{name.upper()} blend"] = s
        scores[f"{name.upper()} alone"] = raw
    res, table = {}, []
    for method, sc in scores.items():
        acc = metrics.verification_accuracy_10fold(sc, same, folds)
        tar = metrics.tar_at_far(sc, same, [1e-3, 1e-2])
        m = {"accuracy": float(acc["mean"]), "accuracy_std": float(acc["std"]),
             "tar_at_far_1e-3": float(tar["tar"][0]), "tar_at_far_1e-2": float(tar["tar"][1]),
             "auc": float(metrics.roc_auc(sc, same))}
        res[method] = m
        table.append((method, m))
    console.print(f"pairs.txt, test identities only: {len(a)} of {len(pairs.a)} pairs "
                  f"({int(same.sum())} same)")
    console.print(verification_table(table))
    return {"n_pairs": int(len(a)), "n_same": int(same.sum()), "metrics": res}


def speed(args: argparse.Namespace) -> None:
    """EMD (l2 APC, product default) vs Face-ViT checkpoints on the same queries x top-k,
    interleaved (each round runs every scorer once, in turn)."""
    data = EvalData.load()
    st, ranking, _ = prepare(data, "lfw-1680", args.n, 0, args.k)
    cand = ranking.indices[:, : args.k]
    emd_rr = Stage2EMD(grid="l2", weighting="apc", alpha=0.7, k=args.k)
    paths = [Path(c) for c in args.checkpoint] if args.checkpoint else [DEFAULT_CHECKPOINT]
    scorers: dict[str, object] = {"emd": emd_rr}
    for path in paths:
        scorers[path.stem] = Stage2ViT.load(path, k=args.k)
    times: dict[str, list[float]] = {n: [] for n in scorers}
    for _ in range(args.repeats):
        for name, sc in scorers.items():
            t0 = time.perf_counter()
            if name == "emd":
                emd_rr.emd_scores(st.queries, st.gallery, cand)
            else:
                sc.vit_scores(st.queries, st.gallery, cand)  # type: ignore[attr-defined]
            times[name].append(time.perf_counter() - t0)
    pairs = cand.size
    best = {n: min(v) for n, v in times.items()}
    out = {"settings": vars(args), "n_pairs": int(pairs), "seconds": times,
           "us_per_pair_best": {n: 1e6 * s / pairs for n, s in best.items()},
           "time_over_emd": {n: best[n] / best["emd"] for n in scorers if n != "emd"},
           "describe": {n: sc.describe() for n, sc in scorers.items()},  # type: ignore[attr-defined]
           "train_seconds_per_epoch": {
               p.stem: read_config(p)["measured"]["seconds_per_epoch"] for p in paths}}
    console.print(out)
    console.print(f"wrote {write_result('vit_speed', out)}")


def ablation(args: argparse.Namespace) -> None:
    """H2L vs H2 vs H1, and H2L depth x heads: models trained on identity half 1 (the CPU
    budget allowed one half for these), tested on the subset's queries of half-0 people."""
    data = EvalData.load()
    first_half = identity_fold(data.lfw.labels, 0)
    setups = {}
    for protocol in args.protocols:
        st, ranking, r = prepare_subset(data, protocol, args.limit, 0, args.k)
        sel = np.flatnonzero(~first_half[st.query_index])  # test people of a fold-1 model
        setups[protocol] = (st, ranking, r, sel)
    models = {f"{n.upper()} (depth 1, 4 heads, 5 epochs)": ckpt_path(n, True)
              for n in ("h2l", "h2", "h1")}
    for depth in args.depths:
        for heads in args.heads:
            if (depth, heads) == (1, 4) and args.epochs == 5:
                continue  # that cell is the H2L above (same command)
            models[f"H2L depth {depth}, {heads} heads ({args.epochs} epochs)"] = ckpt_path(
                "h2l", True, f"-abl-d{depth}h{heads}-e{args.epochs}")
    for name in args.extra:  # other fold-1 models (wider, longer, more variants)
        cfg = read_config(ckpt_path(name, True)) if ckpt_path(name, True).is_file() else None
        if cfg is not None:
            mc = cfg["model"]
            models[f"{name.upper()} (width {mc['width']}, depth {mc['depth']}, {mc['heads']} "
                   f"heads, {cfg['epochs']} epochs, {'+'.join(cfg['variants_trained'])})"] = (
                ckpt_path(name, True))
    out, rows = {"settings": vars(args), "results": []}, []
    for protocol, (st, ranking, r, sel) in setups.items():
        rk = Ranking(ranking.indices[sel], ranking.scores[sel],
                     {"stage1": ranking.stage_scores["stage1"][sel]})
        labels = (st.query_labels[sel], st.gallery_labels, r[sel])
        m1 = _retrieval(rk, *labels)
        rows.append((protocol, "Stage 1 (cosine)", m1))
        out["results"].append({"protocol": protocol, "method": "stage1", **m1})
    for name, path in models.items():
        if not path.is_file():
            console.print(f"missing {path}: train it first (see the module docstring)")
            continue
        sc = Stage2ViT.load(path, k=args.k)
        cfg = read_config(path)
        row = {"method": name, "checkpoint": path.name, "alpha": sc.alpha,
               "command": cfg["command"], "val_auc": cfg["measured"]["history"][-1]["val_auc"],
               "seconds_per_epoch": cfg["measured"]["seconds_per_epoch"]}
        for protocol, (st, ranking, r, sel) in setups.items():
            q = st.queries.take(sel)
            rk = Ranking(ranking.indices[sel], ranking.scores[sel],
                         {"stage1": ranking.stage_scores["stage1"][sel]})
            t0 = time.perf_counter()
            vit = sc.vit_scores(q, st.gallery, rk.indices[:, : args.k])
            row[f"{protocol}_seconds"] = time.perf_counter() - t0
            m = _retrieval(blend(rk, vit, np.full((len(sel), 1), sc.alpha), "vit"),
                           st.query_labels[sel], st.gallery_labels, r[sel])
            m_alone = _retrieval(blend(rk, vit, np.ones((len(sel), 1)), "vit"),
                                 st.query_labels[sel], st.gallery_labels, r[sel])
            row[protocol] = {"blend": m, "alone": m_alone}
            rows.append((protocol, f"{name} α={sc.alpha:g}", m))
            rows.append((protocol, f"{name} alone (α=1)", m_alone))
        out["results"].append(row)
        console.print(row)
    path = write_result("vit_ablation", out)
    console.print(identification_table(sorted(rows, key=lambda x: x[0])))
    console.print(f"wrote {path}")


def heatmaps(args: argparse.Namespace) -> None:
    """docs/img/vit-heatmap-{correct,wrong}.png: the bundled H2L's relevance heatmaps for its
    top-1 on masked queries of people it never saw (fold-0 people; it trained on fold 1)."""
    from facerank.eval.occlusion import occlude
    from facerank.explain.vit_heatmap import render_vit_pair
    from facerank.face.align.dlib_chip import extract_chip
    from facerank.face.imageio import load_image

    data = EvalData.load()
    scorer = Stage2ViT.load(DEFAULT_CHECKPOINT, k=args.k)
    st, ranking, _ = prepare_subset(data, args.protocol, args.limit, 0, args.k)
    test = ~identity_fold(data.lfw.labels, 0)[st.query_index]  # people the model never saw
    sel = np.flatnonzero(test)[: args.n]
    q = st.queries.take(sel)
    rk = Ranking(ranking.indices[sel], ranking.scores[sel],
                 {"stage1": ranking.stage_scores["stage1"][sel]})
    out = scorer.rerank(q, st.gallery, rk)
    top = out.indices[:, 0]
    ok = st.gallery_labels[top] == st.query_labels[sel]
    s1_ok = st.gallery_labels[rk.indices[:, 0]] == st.query_labels[sel]
    picks = {"correct": np.flatnonzero(ok & ~s1_ok), "wrong": np.flatnonzero(~ok)}
    picks["correct"] = picks["correct"] if len(picks["correct"]) else np.flatnonzero(ok)
    kind = OCCLUSION_OF.get(args.protocol)
    rel = [str(p.relative_to(data.lfw.root)) for p in data.lfw.paths]
    for name, rows in picks.items():
        if not len(rows):
            console.print(f"no {name} match among {len(sel)} queries")
            continue
        i = int(rows[0])
        li = int(st.query_index[sel[i]])
        chip = extract_chip(load_image(data.lfw.paths[li]), data.features.landmarks5[li])
        if kind:
            chip = occlude(kind, chip[None], data.features.chip_landmarks68[[li]], 0,
                           ids=[rel[li]])[0]
        g = int(top[i])
        path = Path("docs/img") / f"vit-heatmap-{name}.png"
        who = (data.lfw.names[st.query_labels[sel[i]]], data.lfw.names[st.gallery_labels[g]])
        render_vit_pair(q.take([i]), st.gallery.take([g]), path, scorer, chip_a=chip,
                        labels=(f"query ({args.protocol}): {who[0]}", f"H2L top-1: {who[1]}"),
                        title=f"{name} match   ")
        console.print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--models", nargs="+", default=list(MODELS))
    t.add_argument("--grid", default="l1")
    t.add_argument("--width", type=int, default=64)
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true")
    t.add_argument("--bundle", action="store_true")
    e = sub.add_parser("eval")
    e.add_argument("--models", nargs="+", default=["h2l"])
    e.add_argument("--k", type=int, default=100)
    e.add_argument("--protocols", nargs="+", default=list(IDENTIFICATION))
    e.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--limit", type=int, default=1000,
                   help="seeded queries per protocol; 0 = all 9,164")
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--k", type=int, default=100)
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--checkpoint", nargs="*", default=None,
                   help="Face-ViT checkpoints (default: the bundled one)")
    a = sub.add_parser("ablation")
    a.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    a.add_argument("--heads", type=int, nargs="+", default=[1, 4])
    a.add_argument("--protocols", nargs="+", default=list(IDENTIFICATION))
    a.add_argument("--limit", type=int, default=1000)
    a.add_argument("--k", type=int, default=100)
    a.add_argument("--epochs", type=int, default=5, help="epochs of the depth x heads models")
    a.add_argument("--extra", nargs="*", default=["h2lcm", "h2lw", "h2lwd2", "h2lw16"],
                   help="more fold-1 checkpoints by name (<cache>/vit/NAME-fold1.pt)")
    h = sub.add_parser("heatmaps")
    h.add_argument("--protocol", default="lfw-mask")
    h.add_argument("--limit", type=int, default=1000)
    h.add_argument("--n", type=int, default=200, help="test-identity queries searched")
    h.add_argument("--k", type=int, default=100)
    args = ap.parse_args()
    if getattr(args, "limit", None) == 0:
        args.limit = None  # every query of the protocol
    {"train": train, "eval": evaluate, "speed": speed, "ablation": ablation,
     "heatmaps": heatmaps}[args.cmd](args)


if __name__ == "__main__":
    main()
