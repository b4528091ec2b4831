"""Which per-face quality features could calibrate SFace's match probability on photo variants.

    python -m benchmarks.quality_features auc
    python -m benchmarks.quality_features ece

`auc`: the 300 seeded photos of identity half A (`benchmarks.probability.photo_probe_sets`,
YuNet chain), clean, low resolution and hand + grey + blur. Per candidate feature: the AUC of
clean vs variant faces, and Spearman's rho between the feature and the face's mean cosine to
the other clean images of its person, within each set. Candidates: the two descriptor
features of the bundled models, the YuNet score, chip measures (sharpness, Laplacian
variance, RMS contrast), statistics of SFace's conv_14 map, and the cosine to the flipped
chip's descriptor (one more network pass per face).

`ece`: the quality-aware fit of `benchmarks.probability --photo-fit` (SFace cosine, minmax
pair terms, pairs weighted per probe, half A: 1,500 clean images, their chip-level variants and
the 12 photo variants of 300 photos against every clean half-A image) with other per-face
columns, reported as ECE (15 bins, 50/50) on the half-B photo sets. Columns tried:
- sharpness, and the log spread of the conv_14 map's channel means ("grid");
- "oracle": the face's mean cosine to the other clean images of its person (needs the
  labels: an upper bound on what a per-face feature could give);
- "learned": a ridge regression (alpha 10) of that oracle value on the face's own data,
  fitted on the half-A faces of the fit: the L2-normalised descriptor, its log length,
  sharpness, grid, and squares of the sharpness and the log length ("desc": descriptor
  terms only; "nogrid": without grid; "full": all).
Writes `benchmarks/results/quality_features_sface_{auc,ece}.json`.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
from rich.console import Console

import benchmarks.probability as bp
from benchmarks.common import write_result
from facerank.calibrate.probability import (
    expected_calibration_error,
    logistic_fit_matrix,
    pair_terms,
)
from facerank.eval.protocols import occluded_queries
from facerank.face.quality import chip_sharpness
from facerank.train.data import photo_variant, query_extractor, variant_queries

console = Console()
PHOTO = ("mask-shaded,hand,scarf,cap,lowres,dark,grey,blur-jpeg,partial,mask-dark-lowres,"
         "scarf-dark-lowres,hand-grey-blur").split(",")


def grid_spread(grids: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """(N, C, H, W) -> (N,) log std over channels of the spatially averaged map."""
    return np.concatenate([np.log(grids[s: s + chunk].astype(np.float32).mean(axis=(2, 3))
                                  .std(axis=1) + 1e-9) for s in range(0, len(grids), chunk)])


def photo_chips(data, kind: str, rows: np.ndarray, seed: int, points: np.ndarray,  # noqa: ANN001
                fx) -> np.ndarray:  # noqa: ANN001
    from facerank.eval.photo import occlude_photo
    from facerank.face.imageio import load_image

    out = []
    for j, i in enumerate(rows):
        img = load_image(data.lfw.paths[i])
        if kind != "clean":
            img = occlude_photo(kind, img, data.features.landmarks68[i], seed,
                                str(data.lfw.paths[i].relative_to(data.lfw.root)))
        out.append(fx.backbone.align_points(img, points[j]))
    return np.stack(out)


def auc(args: argparse.Namespace) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    data, halves, _ = bp._halves("sface")
    qx = query_extractor("yunet", "sface")
    rows = variant_queries(data.lfw.labels, args.photos, 0, train_fold=True)
    emb = data.features.embeddings
    centroid = emb[halves["A"]].astype(np.float64).mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    feats: dict[str, dict[str, np.ndarray]] = {}
    for kind in ("clean", "lowres", "hand-grey-blur"):
        fs = photo_variant(kind, rows, bp.PHOTO_SEED, data=data, progress=False, queries=qx)
        chips = photo_chips(data, kind, rows, bp.PHOTO_SEED, fs.landmarks5, qx)
        grey = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in chips]).astype(np.float32)
        mid = (slice(None), slice(16, 96), slice(16, 96))
        lap = np.stack([cv2.Laplacian(g, cv2.CV_32F, ksize=3) for g in grey])
        d = fs.descriptors.astype(np.float64)
        flip, _ = qx.embed_chips(np.ascontiguousarray(chips[:, :, ::-1]))
        unit = d / np.linalg.norm(d, axis=1, keepdims=True)
        x = fs.grids["l2"].astype(np.float32)
        feats[kind] = {
            "log_norm": np.log(np.linalg.norm(d, axis=1)), "centroid": unit @ centroid,
            "yunet_score": fs.det_scores, "sharpness": chip_sharpness(chips),
            "laplacian_log_var": np.log(lap[mid].var(axis=(1, 2)) + 1e-3),
            "rms_contrast": np.log(grey[mid].std(axis=(1, 2)) + 1e-3),
            "conv14_log_energy": np.log((x ** 2).mean(axis=(1, 2, 3)) + 1e-9),
            "conv14_channel_spread": grid_spread(x),
            "flip_cosine": (unit * (flip / np.linalg.norm(flip, axis=1, keepdims=True))).sum(1),
            "_mates": bp.mate_cosine(data, d, rows)}
    out: dict = {"photos_half_A": int(len(rows)), "features": {}}
    ones = np.r_[np.ones(len(rows)), np.zeros(len(rows))]
    for name in feats["clean"]:
        if name.startswith("_"):
            continue
        row = {}
        for v in ("lowres", "hand-grey-blur"):
            a = roc_auc_score(ones, np.r_[feats["clean"][name], feats[v][name]])
            row[f"auc_{v}"] = float(max(a, 1 - a))
        for v in feats:
            row[f"rho_{v}"] = float(spearmanr(feats[v][name], feats[v]["_mates"])[0])
        out["features"][name] = row
        console.print(f"{name:24s} " + " ".join(f"{k} {x:.3f}" for k, x in row.items()))
    return out


def ece(args: argparse.Namespace) -> dict:
    data, halves, cohorts = bp._halves("sface")
    labels, names = data.lfw.labels, np.asarray(data.lfw.names)
    emb = data.features.embeddings
    qx = query_extractor("yunet", "sface")
    fit_rows = bp.subset(labels, halves["A"], 1500, 1)
    centroid = emb[halves["A"]].astype(np.float64).mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    every = np.arange(len(labels))
    g_sharp = bp.clean_sharpness(data)

    def cols(desc: np.ndarray, sharp: np.ndarray, grid: np.ndarray, rows: np.ndarray
             ) -> np.ndarray:  # per face: log_norm, centroid, sharpness, grid, mates
        d = np.asarray(desc, np.float64)
        n = np.linalg.norm(d, axis=1)
        return np.stack([np.log(n), d / n[:, None] @ centroid, sharp, grid,
                         bp.mate_cosine(data, d, rows)], axis=1)

    clean_all = cols(data.features.descriptors, g_sharp, grid_spread(data.features.grids["l2"]),
                     every)
    chip = {"clean": (data.features.descriptors[fit_rows], clean_all[fit_rows])}
    for v in ("lowres24", "blur", "jpeg", "mask"):
        fs = occluded_queries(data, v, fit_rows, bp.VARIANT_SEED, False)
        chip[v] = (fs.descriptors, cols(fs.descriptors, bp.chip_variant_sharpness(
            data, v, fit_rows, bp.VARIANT_SEED), grid_spread(fs.grids["l2"]), fit_rows))

    def photo_sets(half: str, variants: list[str]) -> dict:
        rows = variant_queries(labels, 300, 0, train_fold=half == "A")
        out = {}
        for v in variants:
            if v == "clean":
                out[v] = (rows, data.features.descriptors[rows], clean_all[rows])
                continue
            fs = photo_variant(v, rows, bp.PHOTO_SEED, data=data, progress=False, queries=qx)
            sh = bp.photo_sharpness(data, v, rows, bp.PHOTO_SEED, fs.landmarks5, qx)
            out[v] = (rows, fs.descriptors, cols(fs.descriptors, sh, grid_spread(fs.grids["l2"]),
                                                 rows))
        return out

    fit_photo, test = photo_sets("A", PHOTO), photo_sets("B", ["clean", *PHOTO])
    # the learned column: ridge from the face's own data to its mate cosine, half-A faces
    def face_in(desc: np.ndarray, c: np.ndarray) -> np.ndarray:
        d = np.asarray(desc, np.float64)
        return np.concatenate([d / np.linalg.norm(d, axis=1, keepdims=True), c[:, :1], c[:, 2:4],
                               (c[:, 2:3] + 3.5) ** 2, (c[:, :1] - 2.5) ** 2], axis=1)
    pick = {"desc": np.r_[0:129, 132], "nogrid": np.r_[0:130, 131, 132],
            "full": np.arange(133)}
    train = [(d, c) for d, c in chip.values()] + [(d, c) for _, d, c in fit_photo.values()]
    xin = np.concatenate([face_in(d, c) for d, c in train])
    yin = np.concatenate([c[:, 4] for _, c in train])
    learned: dict = {}
    out: dict = {"ridge_r2": {}, "ece": {}}
    for key, sel in pick.items():
        mu, sd = xin[:, sel].mean(axis=0), xin[:, sel].std(axis=0) + 1e-9
        z = np.c_[(xin[:, sel] - mu) / sd, np.ones(len(xin))]
        beta = np.linalg.solve(z.T @ z + args.alpha * np.eye(z.shape[1]), z.T @ yin)
        learned[key] = (lambda d, c, sel=sel, mu=mu, sd=sd, beta=beta:
                        np.c_[(face_in(d, c)[:, sel] - mu) / sd, np.ones(len(d))] @ beta)
        te = [(learned[key](d, c), c[:, 4]) for _, d, c in test.values()]
        p, t = np.concatenate([a for a, _ in te]), np.concatenate([b for _, b in te])
        out["ridge_r2"][key] = {"fit": float(1 - ((z @ beta - yin) ** 2).mean() / yin.var()),
                                "half_B_probes": float(1 - ((p - t) ** 2).mean() / t.var())}
    # fit pairs, as benchmarks.probability.fit_quality builds them (cosine)
    ii, jj = bp.off_diagonal(len(fit_rows))
    fit_names = names[labels[fit_rows]]
    rng = np.random.default_rng(0)
    parts = []
    e_a = data.features.descriptors[fit_rows].astype(np.float64)
    e_a /= np.linalg.norm(e_a, axis=1, keepdims=True)
    for k, (v, (d, _)) in enumerate(chip.items()):
        e_b = d / np.linalg.norm(d, axis=1, keepdims=True)
        sc, y = bp.pair_scores("none", e_a.astype(np.float32), e_b.astype(np.float32),
                               fit_names, cohorts["A"])
        keep = np.ones(len(sc), bool) if v == "clean" else y | (rng.random(len(sc)) < 0.05)
        parts.append((sc[keep], y[keep], ("clean", None, ii[keep]), ("chip", v, jj[keep]),
                      np.full(keep.sum(), k), bp.probe_weights(ii[keep], y[keep])))
    for k, (v, (rows, d, _)) in enumerate(fit_photo.items()):
        sc, y, pi, gj = bp.photo_fit_pairs("none", data, cohorts["A"], halves["A"], rows, d,
                                           0.05, k)
        parts.append((sc, y, ("photo", v, pi), ("all", None, gj),
                      np.full(len(sc), len(chip) + k), bp.probe_weights(pi, y)))
    s = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    g = np.concatenate([p[4] for p in parts])
    pw = np.concatenate([p[5] for p in parts])
    w = np.zeros(len(s))
    for k in np.unique(g):
        for m in ((g == k) & y, (g == k) & ~y):
            w[m] = 0.5 * pw[m] / pw[m].sum()
    w *= len(s) / w.sum()

    def face_cols(src: str, v: str | None, idx: np.ndarray, col: str) -> np.ndarray:
        d, c = {"chip": lambda: chip[v], "photo": lambda: fit_photo[v][1:],
                "clean": lambda: chip["clean"],
                "all": lambda: (data.features.descriptors, clean_all)}[src]()
        x = {"log_norm": lambda: c[:, 0], "centroid": lambda: c[:, 1],
             "sharpness": lambda: c[:, 2], "grid": lambda: c[:, 3],
             "oracle": lambda: np.nan_to_num(c[:, 4], nan=float(np.nanmedian(clean_all[:, 4])))}
        if col.startswith("learned"):
            return learned[col.split("-")[1]](d[idx], c[idx])
        return x[col]()[idx]

    g_rows = halves["B"]
    g_emb = emb[g_rows].astype(np.float64)
    test_pairs = {}
    for v, (rows, d, _) in test.items():
        pe = d / np.linalg.norm(d, axis=1, keepdims=True)
        valid = g_rows[None, :] != rows[:, None]
        pi, gj = np.nonzero(valid)
        test_pairs[v] = ((pe @ g_emb.T)[valid],
                         (labels[rows][:, None] == labels[g_rows][None, :])[valid], pi, gj)
    sets = [("log_norm", "centroid"), ("log_norm", "centroid", "sharpness"),
            ("log_norm", "centroid", "sharpness", "grid"), ("log_norm", "centroid", "oracle"),
            ("log_norm", "centroid", "learned-desc"),
            ("log_norm", "centroid", "learned-nogrid"), ("log_norm", "centroid", "learned-full")]
    for feats in sets:
        fa = np.concatenate([np.stack([face_cols(*p[2], f) for f in feats], 1) for p in parts])
        fb = np.concatenate([np.stack([face_cols(*p[3], f) for f in feats], 1) for p in parts])
        clean = g == 0
        ref = np.concatenate([fa[clean], fb[clean]])
        mu, sd = ref.mean(axis=0), ref.std(axis=0)

        def design(sc: np.ndarray, qa: np.ndarray, qb: np.ndarray, mu: np.ndarray = mu,
                   sd: np.ndarray = sd) -> np.ndarray:
            q = pair_terms((qa - mu) / sd, (qb - mu) / sd, "minmax")
            return np.stack([sc, np.ones_like(sc), *(c for f in range(q.shape[1])
                                                     for c in (q[:, f], sc * q[:, f]))], 1)
        coef = logistic_fit_matrix(design(s, fa, fb), y.astype(np.float64), w)
        row = {}
        for v, (sc, ty, pi, gj) in test_pairs.items():
            rows, d, c = test[v]
            qa = np.stack([learned[f.split("-")[1]](d, c) if f.startswith("learned") else
                           {"log_norm": c[:, 0], "centroid": c[:, 1], "sharpness": c[:, 2],
                            "grid": c[:, 3], "oracle": c[:, 4]}[f] for f in feats], 1)[pi]
            gd, gc = data.features.descriptors[g_rows], clean_all[g_rows]
            qb = np.stack([learned[f.split("-")[1]](gd, gc) if f.startswith("learned") else
                           {"log_norm": gc[:, 0], "centroid": gc[:, 1], "sharpness": gc[:, 2],
                            "grid": gc[:, 3], "oracle": np.nan_to_num(
                                gc[:, 4], nan=float(np.nanmedian(clean_all[:, 4])))}[f]
                           for f in feats], 1)[gj]
            p = 1.0 / (1.0 + np.exp(-np.clip(design(sc, qa, qb) @ coef, -40, 40)))
            tw = np.where(ty, 0.5 / ty.sum(), 0.5 / (~ty).sum())
            row[v] = 100 * expected_calibration_error(p, ty, 15, tw)["ece"]
        out["ece"][",".join(feats)] = row
        console.print(f"{','.join(feats):44s} " + " ".join(f"{k[:8]} {x:.2f}"
                                                           for k, x in row.items()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("auc", "ece"))
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--alpha", type=float, default=10.0, help="ridge penalty of 'learned'")
    args = p.parse_args()
    out = auc(args) if args.what == "auc" else ece(args)
    out["command"] = "python -m benchmarks.quality_features " + " ".join(sys.argv[1:])
    console.print(f"wrote {write_result(f'quality_features_sface_{args.what}', out)}")


if __name__ == "__main__":
    main()
