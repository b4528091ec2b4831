"""URL confidence on held-out identities: error-versus-reject curves, URL score vs cosine, speed.

    facerank train url --fold --per-edit 1200 --edits crop,lowres,mask,blur --epochs 12 \
        --out src/facerank/uncertainty/models/url-dlib_resnet_v1.pt        # bundled, fold True
    facerank train url --other-fold --per-edit 1200 --edits crop,lowres,mask,blur --epochs 12 \
        --out benchmarks/results/url/url-fold-false.pt
    python -m benchmarks.url eval    # both folds: results/url.json, docs/img/url_reject.png
    python -m benchmarks.url speed      # -> benchmarks/results/url_speed.json
    python -m benchmarks.url figure     # -> docs/img/url_faces.png

Every number is on the identities a head did not train on: the head trained on fold f is scored
on the queries *and* gallery images of the people of fold (not f) only (the protocol's gallery
restricted to those people), and the two folds' queries are pooled.  A curve point "drop x %"
is the Stage-1 cosine P@1 of the queries left after removing the x % with the lowest score of a
quality measure: URL face confidence, the HOG detector score of the query (the LFW photo's
detection for lfw-1680; HOG run on the edited chip otherwise), or the raw descriptor norm.
The edited protocols use a seeded subset of `--limit` queries (the queries and edited chips
`setup_identification(limit=...)` would use); lfw-1680 uses all 9,164.  Rank-1 and open-set
TPIR@FPIR compare the confidence-weighted URL score with the cosine on the same faces.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.common import RESULTS, Timer, write_result
from facerank.eval import metrics
from facerank.eval.protocols import OCCLUSION_OF, EvalData, occluded_queries, openset_split
from facerank.face.align.dlib_chip import extract_chip
from facerank.face.features import FeatureSet
from facerank.face.imageio import load_image
from facerank.train.split import identity_fold
from facerank.uncertainty.confidence import bundled_path, load_url_head
from facerank.uncertainty.url import match_scores, run_head

PROTOCOLS = ("lfw-1680", "lfw-crop", "lfw-mask", "lfw-lowres")
DROPS = np.round(np.arange(0.0, 0.501, 0.05), 2)
FOLD_FALSE = RESULTS / "url" / "url-fold-false.pt"
IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
console = Console(stderr=True)


def chip_det_scores(data: EvalData, protocol: str, query_index: np.ndarray, seed: int = 0
                    ) -> np.ndarray:
    """HOG score of each query chip as the evaluator builds it (max over detections at
    threshold -2, upsample 0; -2 when none): the detector's own idea of face quality."""
    from facerank.eval.occlusion import occlude

    feats, lfw = data.features, data.lfw
    hog = data.extractor.detector._hog  # noqa: SLF001 - the raw dlib detector, for its scores
    rel = [str(p.relative_to(lfw.root)) for p in lfw.paths]
    out = np.empty(len(query_index))
    for s in range(0, len(query_index), 256):
        idx = query_index[s : s + 256]
        chips = np.stack([extract_chip(load_image(lfw.paths[i]), feats.landmarks5[i])
                          for i in idx])
        if protocol in OCCLUSION_OF:
            chips = occlude(OCCLUSION_OF[protocol], chips, feats.chip_landmarks68[idx], seed,
                            ids=[rel[i] for i in idx])
        for j, chip in enumerate(chips):
            _, scores, _ = hog.run(chip, 0, -2.0)
            out[s + j] = max(scores, default=-2.0)
    return out


def _cache_det(data: EvalData, protocol: str, query_index: np.ndarray) -> np.ndarray:
    if protocol == "lfw-1680":  # the query is the LFW photo itself: its detection's score
        return data.features.det_scores[query_index]
    path = RESULTS / "url" / f"detscore-{protocol}-n{len(query_index)}.npy"
    if path.is_file():
        return np.load(path)
    d = chip_det_scores(data, protocol, query_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, d)
    return d


def top1(scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """(Q,) arg-max gallery index per row with `exclude` (Q,) (-1: none) masked out."""
    s = scores.copy()
    rows = np.flatnonzero(exclude >= 0)
    s[rows, exclude[rows]] = -np.inf
    return s.argmax(axis=1)


def reject_curve(correct: np.ndarray, quality: np.ndarray) -> list[float]:
    """P@1 (in %) of the queries kept after dropping the DROPS fraction with lowest quality."""
    order = np.argsort(quality, kind="stable")  # worst first
    n = len(correct)
    return [float(100 * correct[order[int(round(d * n)):]].mean()) for d in DROPS]


def _heads(true: Path | None = None, false: Path | None = None) -> dict[bool, tuple]:
    """The fold-True head (default: the bundled one) and the fold-False head."""
    return {True: load_url_head(true or bundled_path("dlib_resnet_v1")),
            False: load_url_head(false or FOLD_FALSE)}


def setup(data: EvalData, protocol: str, limit: int | None, seed: int = 0
          ) -> tuple[FeatureSet, np.ndarray, np.ndarray, np.ndarray]:
    """(queries, query_index, gallery_index, exclude) of a protocol, as `setup_identification`
    builds them (strict gallery, seeded edits), for its seeded `limit` subset of queries only
    (the same subset and the same edited chips as `setup_identification(limit=...)`)."""
    all_q = data.lfw.people_with_at_least(2)
    pick = np.arange(len(all_q))
    if limit is not None:
        pick = np.sort(np.random.default_rng(seed).choice(pick, min(limit, len(pick)),
                                                          replace=False))
    qi = all_q[pick]
    if protocol == "lfw-1680":
        return data.features.take(qi), qi, all_q, np.searchsorted(all_q, qi)
    queries = occluded_queries(data, OCCLUSION_OF[protocol], qi, seed, progress=True)
    return queries, qi, np.arange(len(data.lfw)), qi.copy()


def evaluate(data: EvalData, heads: dict[bool, tuple], limit: int | None) -> dict:
    labels = data.lfw.labels
    fold = identity_fold(labels, 0)
    out: dict = {"protocols": {}, "limit": limit}
    for protocol in PROTOCOLS:
        lim = None if protocol == "lfw-1680" else limit  # clean queries cost nothing
        queries, qi, gallery_index, exclude = setup(data, protocol, lim)
        det = _cache_det(data, protocol, qi)
        rec: dict[str, list[np.ndarray]] = {k: [] for k in ("cos", "url", "conf", "det", "norm")}
        for train_fold, (head, _meta) in heads.items():
            qm = fold[qi] != train_fold  # held-out queries
            gsel = np.flatnonzero(fold[gallery_index] != train_fold)  # held-out gallery
            g = data.features.take(gallery_index[gsel])
            q = queries.take(np.flatnonzero(qm))
            # the protocol's excluded gallery image, re-indexed into the restricted gallery
            pos = np.full(len(gallery_index), -1)
            pos[gsel] = np.arange(len(gsel))
            ex = exclude[qm]
            ex = np.where(ex >= 0, pos[np.maximum(ex, 0)], -1)
            ql, gl = labels[qi[qm]], labels[gallery_index[gsel]]
            cos = q.embeddings @ g.embeddings.T
            uq = run_head(head, q.descriptors, _grid(head, q))
            ug = run_head(head, g.descriptors, _grid(head, g))
            us = match_scores(uq.sub, uq.conf, ug.sub, ug.conf)
            rec["cos"].append(gl[top1(cos, ex)] == ql)
            rec["url"].append(gl[top1(us, ex)] == ql)
            rec["conf"].append(uq.face)
            rec["det"].append(det[qm])
            rec["norm"].append(np.linalg.norm(q.descriptors, axis=1))
        cat = {k: np.concatenate(v) for k, v in rec.items()}
        res = {"n_queries": int(len(cat["cos"])),
               "p1_cosine": float(100 * cat["cos"].mean()),
               "p1_url_score": float(100 * cat["url"].mean()),
               "drops": DROPS.tolist(),
               "curves": {m: reject_curve(cat["cos"], cat[key]) for m, key in
                          (("url_confidence", "conf"), ("detector_score", "det"),
                           ("descriptor_norm", "norm"))},
               "curves_url_score": {"url_confidence": reject_curve(cat["url"], cat["conf"])}}
        i20 = int(np.flatnonzero(DROPS == 0.2)[0])
        res["gain_at_20"] = {m: c[i20] - c[0] for m, c in res["curves"].items()}
        out["protocols"][protocol] = res
        console.print(f"{protocol}: n={res['n_queries']} P@1 cos {res['p1_cosine']:.2f} "
                      f"URL {res['p1_url_score']:.2f}; +20 % drop: " + ", ".join(
                          f"{m} {v:+.2f}" for m, v in res["gain_at_20"].items()))
    out["openset"] = openset(data, heads)
    return out


def _grid(head, fs):  # noqa: ANN001, ANN202
    return None if head.config.grid is None else fs.grids[head.config.grid]


def openset(data: EvalData, heads: dict[bool, tuple], seed: int = 0) -> dict:
    """run_openset's protocol inside each held-out half: cosine vs URL score."""
    lfw = data.lfw
    fold = identity_fold(lfw.labels, 0)
    multi = lfw.people_with_at_least(2)
    res: dict = {}
    for train_fold, (head, _m) in heads.items():
        held = multi[fold[multi] != train_fold]
        gallery_index, mated, nonmated = openset_split(lfw.labels, held, seed)
        g = data.features.take(gallery_index)
        ug = run_head(head, g.descriptors, _grid(head, g))
        for name in ("cosine", "url_score"):
            mats = []
            for probes in (mated, nonmated):
                q = data.features.take(probes)
                if name == "cosine":
                    mats.append(q.embeddings @ g.embeddings.T)
                else:
                    uq = run_head(head, q.descriptors, _grid(head, q))
                    mats.append(match_scores(uq.sub, uq.conf, ug.sub, ug.conf))
            r = metrics.tpir_at_fpir(mats[0], lfw.labels[mated], mats[1],
                                     lfw.labels[gallery_index], [0.01, 0.1])
            res.setdefault(name, []).append({"test_fold": not train_fold,
                                             "tpir_at_fpir_1e-2": float(r["tpir"][0]),
                                             "tpir_at_fpir_1e-1": float(r["tpir"][1]),
                                             "rank1": float(r["rank1"]),
                                             "n_gallery": len(gallery_index),
                                             "n_mated": len(mated), "n_nonmated": len(nonmated)})
    for name, rows in res.items():
        console.print(f"open set {name}: " + "; ".join(
            f"fold {r['test_fold']}: TPIR@1% {100 * r['tpir_at_fpir_1e-2']:.2f} "
            f"@10% {100 * r['tpir_at_fpir_1e-1']:.2f} rank-1 {100 * r['rank1']:.2f}"
            for r in rows))
    return res


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(4 * len(PROTOCOLS), 3.4))
    styles = {"url_confidence": ("URL confidence", "#d97706", "-"),
              "detector_score": ("HOG detector score", "#475569", "--"),
              "descriptor_norm": ("descriptor norm", "#2563eb", ":")}
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        r = result["protocols"][protocol]
        x = 100 * np.asarray(r["drops"])
        for m, (label, colour, ls) in styles.items():
            ax.plot(x, r["curves"][m], ls, color=colour, label=label, lw=2)
        ax.set_title(f"{protocol} (n={r['n_queries']})")
        ax.set_xlabel("least-confident queries dropped (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Stage-1 P@1 of kept queries (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Error versus reject, held-out LFW identities (both folds pooled)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def speed(data: EvalData, n: int = 2000, repeats: int = 5) -> dict:
    """Per-face cost of the URL confidence vs one cosine search of the same faces, one run."""
    import torch

    torch.set_num_threads(2)
    head, _ = load_url_head(bundled_path("dlib_resnet_v1"))
    fs = data.features.take(np.arange(n))
    grid = _grid(head, fs)
    one = fs.take([0])
    times = {"batch": [], "single": [], "cosine_search": []}
    for _ in range(repeats):
        with Timer() as t:
            run_head(head, fs.descriptors, grid)
        times["batch"].append(t.seconds / n)
        with Timer() as t:
            for _ in range(100):
                run_head(head, one.descriptors, _grid(head, one))
        times["single"].append(t.seconds / 100)
        with Timer() as t:
            _ = one.embeddings @ data.features.embeddings.T  # one probe vs 13,233 faces
        times["cosine_search"].append(t.seconds)
    best = {k: min(v) for k, v in times.items()}
    return {"n_faces": n, "repeats": repeats, "ms_per_face_batched": 1e3 * best["batch"],
            "ms_per_face_single": 1e3 * best["single"],
            "ms_cosine_search_13233": 1e3 * best["cosine_search"],
            "all_seconds": times, "grid": head.config.grid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("eval", "speed", "figure"))
    ap.add_argument("--limit", type=int, default=1200,
                    help="Seeded subset of the 9,164 queries for the edited protocols "
                         "(lfw-1680 always uses all); 0 = all.")
    ap.add_argument("--heads", nargs=2, type=Path, default=(None, None),
                    metavar=("FOLD_TRUE", "FOLD_FALSE"), help="Checkpoints to evaluate.")
    ap.add_argument("--name", default="url", help="Result file name (benchmarks/results/).")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = EvalData.load(progress=True)
    if args.what == "eval":
        heads = _heads(*args.heads)
        result = evaluate(data, heads, args.limit or None)
        result["checkpoints"] = {str(f): m.get("command") for f, (_, m) in heads.items()}
        result["seconds"] = time.perf_counter() - t0
        path = write_result(args.name, result)
        console.print(f"wrote {path}")
        if args.name == "url":
            plot(result, IMG / "url_reject.png")
            console.print(f"wrote {IMG / 'url_reject.png'}")
    elif args.what == "speed":
        path = write_result("url_speed", speed(data))
        console.print(path.read_text())
    else:
        from benchmarks.url_figure import figure

        figure(data, _heads(), IMG / "url_faces.png")
        console.print(f"wrote {IMG / 'url_faces.png'}")


if __name__ == "__main__":
    main()
