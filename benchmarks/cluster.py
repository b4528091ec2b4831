"""Clustering all of LFW as unlabelled faces: baselines against facerank's probability clustering.

    python -m benchmarks.cluster [--backbone dlib|sface] [--edited 1000] [--photo-edited 0.333]
                                 [--stage2 emd|none] [--synthetic 100000]
    python -m benchmarks.cluster --backbone dlib --add-shipped | --table

Thresholds and the probability map are fitted on identity fold True (`train.split.identity_fold`,
seed 0) and reported on fold False; the same settings are then run on all 13,233 images.

Variants:
  clean          the 13,233 images under the LFW set-up (HOG, centre face, central box if none).
  edited         a seeded subset of the images of people with >= 2 images replaced by its
                 chip-level mask / 24-px versions (`eval.protocols.occluded_queries`, half each).
  photo-edited   a seeded fraction of all images (default a third) edited on the photo before
                 detection (`eval.photo_variants`: the shaded mask and the 16-32 px low
                 resolution, dealt in turn), then re-detected and re-embedded
                 (`train.data.photo_variant`, cached under FACERANK_CACHE). An edited photo in
                 which the detector finds no face is left out of both the truth and the
                 prediction (as `facerank cluster` would skip that photo); their number is
                 reported per edit.
  photo-edited-centre  the same photos, a missed face cut from the photo's central box instead
                 (the LFW set-up's fallback), so all 13,233 faces take part.
Stage 2 (`--stage2 emd`): the borderline edges of our graph (probability 0.2-0.8) get a new
probability, a logistic of (logit of the Stage-1 probability, Stage-2 pair score alpha * EMD +
(1 - alpha) * cosine) fitted on fold True's borderline edges; p_link is chosen again on fold
True. Reported beside ours without it, time included.
Timing: each method on all faces after extraction (2 cores, shared machine); ours also on
`--synthetic` random vectors around 10,000 synthetic identities (time only).
"probability-shipped" is ours with the settings `facerank cluster` ships (fitted on the clean
fold True) on every variant; `--add-shipped` adds it to the last result without re-running it.
Writes benchmarks/results/cluster-<backbone>.json; `--table` prints it as markdown.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.common import write_result
from facerank.clustering import algorithms as A
from facerank.clustering import metrics as M
from facerank.clustering.probability import LogisticProb, fit_logistic
from facerank.eval.protocols import EvalData, lfw_extractor, occluded_queries
from facerank.face.features import FeatureSet
from facerank.train.split import identity_fold

P_LINKS = (0.4, 0.5, 0.6, 0.7, 0.8)
FLOORS = (None, 0.5, 0.7)
PHOTO_EDITS = ("mask-shaded", "lowres")  # `eval.photo_variants`, drawn before detection


def baselines(backbone: str) -> list:
    """face_recognition's habit on dlib (0.6 on descriptors); SFace's cosine 0.363."""
    if backbone == "dlib":
        return [A.ChineseWhispers(0.6), A.DBSCANCluster(0.6), A.Agglomerative(0.6)]
    cos = 0.363
    return [A.ChineseWhispers(None, cosine=cos), A.DBSCANCluster(1 - cos, metric="cosine"),
            A.Agglomerative(1 - cos, metric="cosine")]


def photo_edit_rows(n: int, fraction: float, seed: int = 0,
                    kinds: tuple[str, ...] = PHOTO_EDITS) -> dict[str, np.ndarray]:
    """{kind: sorted rows}: a seeded `fraction` of the n images, dealt to `kinds` in turn
    (disjoint; together round(fraction * n) rows)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, int(round(fraction * n)), replace=False))
    return {k: pick[i::len(kinds)] for i, k in enumerate(kinds)}


def confidence_of(fs: FeatureSet, backbone_id: str) -> np.ndarray | None:
    from facerank.uncertainty.confidence import confidences, default_head, relative

    found = default_head(backbone_id)
    if found is None:
        return None
    head, meta = found
    try:
        return relative(confidences(fs, head).face, meta)
    except Exception:  # noqa: BLE001 - no grid in these features: no confidence
        return None


def replace_rows(base: FeatureSet, edits: dict[str, tuple[np.ndarray, FeatureSet]],
                 grids: tuple[str, ...]) -> FeatureSet:
    """`base` with the rows of each edit replaced by its features (only `grids` kept)."""
    desc = base.descriptors.astype(np.float32).copy()
    g = {k: base.grids[k].copy() for k in grids}
    paths, sources = list(base.paths), list(base.det_sources)
    for rows, fs in edits.values():
        desc[rows] = fs.descriptors
        for k in grids:
            g[k][rows] = fs.grids[k].astype(g[k].dtype)
        for j, r in enumerate(rows):
            paths[r], sources[r] = fs.paths[j], fs.det_sources[j]
    boxes = base.boxes.copy()
    for rows, fs in edits.values():
        boxes[rows] = fs.boxes
    return FeatureSet(paths, desc, g, base.landmarks5, base.landmarks68, base.chip_landmarks68,
                      boxes, base.det_scores, sources)


@dataclass
class Variant:
    """One set of faces to cluster: vectors (N, D), URL confidence, which rows take part
    (`keep`), and a maker of the features Stage 2 reads (None: no Stage 2; made when needed,
    as SFace's grids take 1.3 GB per variant)."""

    x: np.ndarray
    confidence: np.ndarray | None
    keep: np.ndarray
    features: Callable[[], FeatureSet] | None = None
    info: dict = field(default_factory=dict)


@dataclass
class EdgeRescorer:
    """`ProbabilityCluster.rescore` from a Stage-2 pair score: edges (r, c) of the faces `rows`
    of `features`, with their Stage-1 probability p -> a logistic of (logit p, Stage-2 score)
    (`coef`: w_p, w_s, bias; fitted by `fit`). Stage-2 scores are memoised per pair."""

    stage2: object
    features: FeatureSet
    rows: np.ndarray
    coef: tuple[float, float, float] | None = None
    memo: dict = field(default_factory=dict)

    def scores(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        a, b = self.rows[r], self.rows[c]
        keys = a.astype(np.int64) * len(self.features) + b
        todo = np.array([k not in self.memo for k in keys.tolist()], bool)
        if todo.any():
            s = self.stage2.score_pairs(self.features.take(a[todo]),  # type: ignore[attr-defined]
                                        self.features.take(b[todo]))
            self.memo.update(zip(keys[todo].tolist(), s.tolist(), strict=True))
        return np.array([self.memo[k] for k in keys.tolist()], np.float64)

    @staticmethod
    def _design(p: np.ndarray, s: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.stack([np.log(p / (1 - p)), s], axis=1)

    def fit(self, p: np.ndarray, s: np.ndarray, same: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e4, max_iter=1000).fit(self._design(p, s), same)
        self.coef = (float(lr.coef_[0, 0]), float(lr.coef_[0, 1]), float(lr.intercept_[0]))

    def __call__(self, r: np.ndarray, c: np.ndarray, p: np.ndarray) -> np.ndarray:
        assert self.coef is not None
        z = self._design(p, self.scores(r, c)) @ np.array(self.coef[:2]) + self.coef[2]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def fresh(self, rows: np.ndarray) -> EdgeRescorer:
        return EdgeRescorer(self.stage2, self.features, rows, self.coef)


def make_variants(data: EvalData, edited: int, photo_fraction: float, stage2_grid: str | None,
                  seed: int) -> dict[str, Variant]:
    y = data.lfw.labels
    feats = data.features
    n = len(y)
    mid = data.extractor.model_id
    grids = (stage2_grid,) if stage2_grid else ()
    x0 = feats.descriptors.astype(np.float32)
    c0 = confidence_of(feats, mid)
    out = {"clean": Variant(x0, c0, np.ones(n, bool),
                            (lambda: replace_rows(feats, {}, grids)) if grids else None,
                            {"fallback_faces": int(sum(s.startswith("fallback")
                                                       for s in feats.det_sources))})}
    if edited:
        rng = np.random.default_rng(seed)
        multi = data.lfw.people_with_at_least(2)
        pool = np.flatnonzero(np.isin(y, multi))
        pick = np.sort(rng.choice(pool, size=min(edited, len(pool)), replace=False))
        halves = {"mask": pick[::2], "lowres24": pick[1::2]}
        edits = {k: (rows, occluded_queries(data, k, rows, seed, progress=False))
                 for k, rows in halves.items()}
        out["edited"] = _edited_variant(data, edits, c0, np.ones(n, bool), grids)
        out["edited"].info = {"images": int(len(pick)), "kinds": list(halves)}
    if photo_fraction:
        from facerank.eval.photo import detection_stats
        from facerank.train.data import photo_variant

        keep = np.ones(n, bool)
        edits, info = {}, {"fraction": photo_fraction, "seed": seed, "edits": {}}
        for kind, rows in photo_edit_rows(n, photo_fraction, seed).items():
            fs = photo_variant(kind, rows, seed=seed, data=data, progress=False)
            missed = np.array([s.startswith("fallback") for s in fs.det_sources])
            keep[rows[missed]] = False
            st = detection_stats(fs, feats.boxes[rows])
            info["edits"][kind] = {"images": int(len(rows)), "missed": int(missed.sum()),
                                   "detected": round(100 * st["detected"], 2),
                                   "found_right_face": round(100 * st["found"], 2)}
            edits[kind] = (rows, fs)
        info["images"] = int(sum(len(r) for r, _ in edits.values()))
        info["left_out"] = int((~keep).sum())
        out["photo-edited"] = _edited_variant(data, edits, c0, keep, grids)
        out["photo-edited"].info = info
        # the LFW set-up's rule instead: a missed face is cut from the photo's central box
        out["photo-edited-centre"] = _edited_variant(data, edits, c0, np.ones(n, bool), grids)
        out["photo-edited-centre"].info = {**info, "left_out": 0,
                                           "missed_faces": "central box of the photo"}
    return out


def _edited_variant(data: EvalData, edits: dict[str, tuple[np.ndarray, FeatureSet]],
                    c0: np.ndarray | None, keep: np.ndarray, grids: tuple[str, ...]) -> Variant:
    x = data.features.descriptors.astype(np.float32).copy()
    c = None if c0 is None else c0.copy()
    for rows, fs in edits.values():
        x[rows] = fs.descriptors.astype(np.float32)
        if c is not None:
            ce = confidence_of(fs, data.extractor.model_id)
            c[rows] = np.nan if ce is None else ce
    return Variant(x, c, keep,
                   (lambda: replace_rows(data.features, edits, grids)) if grids else None)


def shipped(backbone: str) -> A.ProbabilityCluster:
    """Ours with the settings `facerank cluster` ships (`clustering.pipeline.DEFAULTS`, fitted
    on the clean fold True), whatever the variant: what a user gets on such photos."""
    from facerank.clustering.pipeline import default_method

    m = default_method(backbone)
    m.name = "probability-shipped"
    return m


def add_shipped(backbone: str, seed: int = 0) -> dict:
    """Add `shipped(backbone)` to fold_false / all of every variant of the backbone's last
    result JSON (same variants, rebuilt from the cache), and what ours' largest cluster holds
    (`largest_cluster`), without re-running the rest."""
    import json

    from benchmarks.common import RESULTS

    out = json.loads((RESULTS / f"cluster-{backbone}.json").read_text())
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=False)
    y = data.lfw.labels
    fold = identity_fold(y, seed)
    variants = make_variants(data, out["edited_images"], out["photo_edited_fraction"], None,
                             seed)
    for name, v in variants.items():
        for part, rows in (("fold_false", np.flatnonzero(~fold & v.keep)),
                           ("all", np.flatnonzero(v.keep))):
            m = shipped(backbone)
            t0 = time.perf_counter()
            lab = _fit(m, v.x, v.confidence, rows)
            r = {**M.summary(lab, y[rows]), "seconds": round(time.perf_counter() - t0, 2)}
            old = {k: x for k, x in out["variants"][name][part].items() if k != m.name}
            out["variants"][name][part] = {"probability": old["probability"], m.name: r, **old}
            print(backbone, name, part, m.name, r, flush=True)
        out["variants"][name]["largest_cluster_all"] = largest_cluster(
            out["variants"][name], v, y, photo_edit_rows(len(y), out["photo_edited_fraction"],
                                                         seed) if "photo" in name else {})
        print(name, out["variants"][name]["largest_cluster_all"], flush=True)
    out["shipped_added"] = {"loadavg": os.getloadavg()}
    out.pop("benchmark", None), out.pop("machine", None)
    when = out.pop("when", None)
    return {**out, "main_run_when": out.get("main_run_when", when)}


def largest_cluster(res: dict, v: Variant, y: np.ndarray,
                    edits: dict[str, np.ndarray]) -> dict:
    """What the largest cluster of ours (the variant's chosen settings, all its faces) holds:
    size, people, faces of its most frequent person, and faces per photo edit."""
    ch = res["chosen_on_fold_true"]
    m = A.ProbabilityCluster(LogisticProb(**res["probability"]), p_link=ch["p_link"],
                             min_confidence=ch["min_confidence"])
    rows = np.flatnonzero(v.keep)
    lab = _fit(m, v.x, v.confidence, rows)
    big = int(np.argmax(np.bincount(lab[lab >= 0])))
    members = rows[lab == big]
    _, counts = np.unique(y[members], return_counts=True)
    return {"size": int(len(members)), "people": int(len(counts)),
            "top_person_faces": int(counts.max()),
            "edited": {k: int(np.isin(members, r).sum()) for k, r in edits.items()}}


def _fit(m: A.ProbabilityCluster, x: np.ndarray, conf: np.ndarray | None,
         rows: np.ndarray) -> np.ndarray:
    return m.fit(x[rows], None if conf is None else conf[rows])


def evaluate(backbone: str, v: Variant, y: np.ndarray, fold: np.ndarray,
             stage2: object | None) -> dict:
    """Selection on fold True, then every method on fold False and on all kept faces."""
    x, cv = v.x, v.confidence
    tr, te = np.flatnonzero(fold & v.keep), np.flatnonzero(~fold & v.keep)
    every = np.flatnonzero(v.keep)
    r, c, ss = A.edges(*A.knn(A.unit(x[tr]), 30))
    prob = fit_logistic(ss, y[tr][r] == y[tr][c])
    sel = []
    for pl in P_LINKS:
        for fl in FLOORS if cv is not None else (None,):
            lab = _fit(A.ProbabilityCluster(prob, p_link=pl, min_confidence=fl), x, cv, tr)
            sel.append((M.bcubed(lab, y[tr])["f1"], pl, fl))
    best = max(sel, key=lambda t: t[0])
    ours = A.ProbabilityCluster(prob, p_link=best[1], min_confidence=best[2])
    res: dict = {**v.info, "faces": int(len(every)), "probability": prob.to_dict(),
                 "cosine_at_p50": prob.score_at(0.5),
                 "chosen_on_fold_true": {"p_link": best[1], "min_confidence": best[2],
                                         "bcubed_f1": round(best[0], 2)},
                 "selection": [[round(a, 2), b, f] for a, b, f in sel],
                 "fold_false": {}, "all": {}}
    with2 = None
    if stage2 is not None and v.features is not None:
        with2, info2 = _stage2_method(ours, stage2, v, x, cv, y, tr)
        res["stage2"] = info2
    methods = [ours, shipped(backbone), *([with2] if with2 else []), *baselines(backbone)]
    for part, rows in (("fold_false", te), ("all", every)):
        for m in methods:
            if m is with2:
                m.rescore = m.rescore.fresh(rows)  # type: ignore[union-attr]
            t0 = time.perf_counter()
            lab = _fit(m, x, cv, rows) if isinstance(m, A.ProbabilityCluster) else m.fit(x[rows])
            dt = time.perf_counter() - t0
            res[part][m.name] = {**M.summary(lab, y[rows]), "seconds": round(dt, 2)}
            if m is with2:
                res[part][m.name]["rescored_edges"] = m.last.get("rescored")
            print(backbone, part, m.name, res[part][m.name], flush=True)
    if best[2] is not None:  # ours without the confidence floor, for the ablation
        lab = A.ProbabilityCluster(prob, p_link=best[1]).fit(x[te])
        res["fold_false"]["probability-no-url"] = M.summary(lab, y[te])
    return res


def _stage2_method(ours: A.ProbabilityCluster, stage2: object, v: Variant, x: np.ndarray,
                   cv: np.ndarray | None, y: np.ndarray,
                   tr: np.ndarray) -> tuple[A.ProbabilityCluster, dict]:
    """Ours with the borderline edges re-scored: map fitted and p_link chosen on fold True."""
    assert v.features is not None
    rescorer = EdgeRescorer(stage2, v.features(), tr)
    r, c, p = ours.graph(x[tr])
    lo, hi = ours.border
    b = np.flatnonzero((p >= lo) & (p <= hi))
    t0 = time.perf_counter()
    s = rescorer.scores(r[b], c[b])
    per_pair = (time.perf_counter() - t0) / max(len(b), 1)
    same = y[tr][r[b]] == y[tr][c[b]]
    rescorer.fit(p[b], s, same)
    sel = []
    for pl in P_LINKS:
        m = A.ProbabilityCluster(ours.prob, p_link=pl, min_confidence=ours.min_confidence,
                                 rescore=rescorer)
        sel.append((M.bcubed(_fit(m, x, cv, tr), y[tr])["f1"], pl))
    best = max(sel, key=lambda t: t[0])
    m = A.ProbabilityCluster(ours.prob, p_link=best[1], min_confidence=ours.min_confidence,
                             rescore=rescorer, name=f"probability+{stage2.name}")  # type: ignore[attr-defined]
    from facerank.eval.metrics import roc_auc

    info = {"method": getattr(stage2, "describe", lambda: str(stage2))(),
            "border": list(ours.border), "fold_true_borderline_edges": int(len(b)),
            "fold_true_borderline_same": int(same.sum()),
            "auc_borderline_cosine": round(100 * roc_auc(p[b], same), 2),
            "auc_borderline_stage2": round(100 * roc_auc(s, same), 2),
            "seconds_per_pair": round(per_pair, 5),
            "coef_logit_p_stage2_bias": rescorer.coef,
            "chosen_on_fold_true": {"p_link": best[1], "bcubed_f1": round(best[0], 2)},
            "selection": [[round(a, 2), pl] for a, pl in sel]}
    print("stage2", info, flush=True)
    return m, info


def synthetic_timing(n: int, d: int, prob: LogisticProb, seed: int = 0) -> dict:
    """Ours on n random unit vectors around 10,000 synthetic identities (time only)."""
    rng = np.random.default_rng(seed)
    centres = A.unit(rng.normal(size=(10_000, d)).astype(np.float32))
    who = rng.integers(0, len(centres), n)
    xv = A.unit(centres[who] + 0.05 * rng.normal(size=(n, d)).astype(np.float32))
    t0 = time.perf_counter()
    lab = A.ProbabilityCluster(prob).fit(xv)
    return {"n": n, "dim": d, "seconds": round(time.perf_counter() - t0, 2),
            "clusters": int(lab.max() + 1), "loadavg": os.getloadavg()}


def run(backbone: str, edited: int, photo_fraction: float, synthetic: int,
        stage2_name: str = "none", seed: int = 0) -> dict:
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=False)
    y = data.lfw.labels
    stage2 = None
    if stage2_name != "none":
        from facerank.rerank.base import make_stage2

        stage2 = make_stage2(stage2_name, backbone=backbone)
    grid = getattr(stage2, "grid_name", None)
    variants = make_variants(data, edited, photo_fraction, grid, seed)
    fold = identity_fold(y, seed)
    out: dict = {"backbone": backbone, "model_id": data.extractor.model_id, "images": len(y),
                 "people": int(len(np.unique(y))), "edited_images": edited,
                 "photo_edited_fraction": photo_fraction, "stage2": stage2_name,
                 "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "variants": {}}
    for name, v in variants.items():
        print("variant", name, v.info, flush=True)
        out["variants"][name] = evaluate(backbone, v, y, fold, stage2)
        write_result(f"cluster-{backbone}", {**out, "partial": True})
    if synthetic:
        d = variants["clean"].x.shape[1]
        prob = LogisticProb(20.0, -14.0)  # p = 0.5 at cosine 0.7 (time only)
        out["synthetic"] = synthetic_timing(synthetic, d, prob, seed)
        print("synthetic", out["synthetic"], flush=True)
    out["loadavg_end"] = os.getloadavg()
    return out


def summary(result: dict) -> str:
    """Markdown: held-out (fold False) BCubed F1 and clusters of each method per variant."""
    names = ("probability", "probability-shipped", "probability+emd", "agglomerative",
             "chinese-whispers", "dbscan")
    lines = ["| variant | faces | " + " | ".join(names) + " | ours - best baseline |",
             "|---|---:|" + "---:|" * (len(names) + 1)]
    for name, res in result["variants"].items():
        ff = res["fold_false"]
        cells = [f"{ff[m]['bcubed_f1']} ({ff[m]['clusters']})" if m in ff else "" for m in names]
        best = max(ff[m]["bcubed_f1"] for m in names[3:] if m in ff)
        truth = next(iter(ff.values()))["true_clusters"]
        lines.append(f"| {name} | {res['faces']} ({truth} people held out) | "
                     + " | ".join(cells) + f" | {ff['probability']['bcubed_f1'] - best:+.2f} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    """Markdown rows of a result JSON (docs/results.md)."""
    cols = ("pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_precision",
            "bcubed_recall", "bcubed_f1")
    lines = ["| variant | part | method | pairwise P | R | F1 | BCubed P | R | **F1** | "
             "clusters / true | s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in result["variants"].items():
        for part in ("fold_false", "all"):
            for m, r in res[part].items():
                vals = " | ".join(f"**{r[k]}**" if k == "bcubed_f1" else str(r[k]) for k in cols)
                lines.append(f"| {name} | {part} | {m} | {vals} | {r['clusters']} / "
                             f"{r['true_clusters']} | {r.get('seconds', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dlib", choices=["dlib", "sface"])
    ap.add_argument("--edited", type=int, default=1000,
                    help="chip-level edited images (0: skip the variant)")
    ap.add_argument("--photo-edited", type=float, default=1 / 3,
                    help="fraction of all images edited on the photo (0: skip the variant)")
    ap.add_argument("--stage2", default="none", help="re-score borderline edges (emd, vit)")
    ap.add_argument("--synthetic", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--add-shipped", action="store_true",
                    help="add ours with the shipped settings to the last result and stop")
    ap.add_argument("--table", action="store_true",
                    help="print the markdown table of the backbone's last result and stop")
    a = ap.parse_args()
    if a.table:
        import json

        from benchmarks.common import RESULTS

        result = json.loads((RESULTS / f"cluster-{a.backbone}.json").read_text())
        print(summary(result) + "\n\n" + table(result))
        return
    if a.add_shipped:
        print(write_result(f"cluster-{a.backbone}", add_shipped(a.backbone, a.seed)))
        return
    out = run(a.backbone, a.edited, a.photo_edited, a.synthetic, a.stage2, a.seed)
    print(write_result(f"cluster-{a.backbone}", out))


if __name__ == "__main__":
    main()
