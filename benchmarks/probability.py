"""Match probability on LFW: fit on one identity half, report on the other.

    python -m benchmarks.probability --backbone dlib --variants clean,lowres24,blur,jpeg,mask
    python -m benchmarks.probability --backbone sface --write-defaults

Pairs: a seeded subset of `--images` images of people with >= 2 images in each half; every
ordered pair (i, j), i != j, of the subset is scored with image j clean (clean) or with a
variant drawn on its aligned chip (`facerank.eval.occlusion`, seed 0, features cached); the
fit half's pairs are always clean. Calibrators use a cohort of one image per identity; a
face's own identity is left out of its cohort (`support_excluding_own`), the rule a gallery
cohort follows. Cohorts: "own" = the half's own people (the gallery's cohort), "other" = the
other half's people (the bundled LFW anchors on a gallery of other people).

Reported per (calibrator, cohort, model kind, variant): ECE (15 bins, equal prior: same and
different pairs reweighted to 50/50), the reliability bins, and the measured FAR / TAR at
the thresholds chosen on the fit half at FAR 1e-2, 1e-3, 1e-4.
`--write-defaults` writes the chosen kind fitted on half A (own cohort) to
`src/facerank/calibrate/defaults/prob-<backbone>-<calibrator>.json`.

`--quality` also fits P(same | score, quality) (`MatchProbability.fit_quality`) on half A's
clean pairs plus the pairs of a clean and a degraded face of every variant (impostor pairs of
the variants subsampled to `--fit-impostors`, each group weighted equally), and reports it on
half B beside the score-only model; with `--write-defaults` the quality model is what is
written (its score-only fallback inside it).

`--photo-variants cap,hand,...` measures the bundled models (`MatchProbability.default`,
fitted on identity half A; nothing is refitted) on photo-level variants
(`facerank.eval.photo_variants`, drawn on the photo before detection, features cached by
`facerank.train.data.photo_variant`): pairs of a clean gallery face and a variant probe, both
of identity half B, every probe against every clean half-B image but its own original.
Probes: `--photo-queries` seeded half-B images (variant seed 1, the `benchmarks.photo_variants`
set) of each named variant, and, for `--photo-third` variants, the half-B rows of the seeded
third of all LFW images that `benchmarks.cluster` edits (variant seed 0). Reported per
(calibrator, cohort, probe set), for the bundled model's score-only form and its
quality-aware form: ECE (15 bins, 50/50), and the FAR / TAR at its 1e-2/1e-3/1e-4 decision
(score threshold, or the verdict's rule with quality, `MatchProbability.accepts`), with the
false-accept count and a 95 % interval from a bootstrap over probes (impostor pairs of one
probe are not independent).

    python -m benchmarks.probability --backbone sface --photo-variants cap,dark,hand
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from facerank.calibrate.anchors import AnchorSet, support_excluding_own
from facerank.calibrate.asnorm import DEFAULT_TOP_N
from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU, log_density
from facerank.calibrate.probability import (
    FARS,
    KINDS,
    QUALITY_FEATURES,
    MatchProbability,
    expected_calibration_error,
    fit_recognisability,
    quality_features,
)
from facerank.errors import ModelFileError
from facerank.eval.protocols import EvalData, lfw_extractor, occluded_queries
from facerank.eval.studies.calibration_protocols import pick_per_identity
from facerank.train.split import identity_fold

console = Console()
CALIBRATORS = ("none", "ida-r", "asnorm")
DEFAULTS = Path(__file__).resolve().parents[1] / "src/facerank/calibrate/defaults"
VARIANT_SEED = 0


def cohort_terms(cal: str, x: np.ndarray, x_labels: np.ndarray, cohort: AnchorSet
                 ) -> np.ndarray:
    """(N, T) per-face terms of `cal` with the face's own identity left out of the cohort."""
    if cal == "ida-r":
        return log_density(support_excluding_own(x, x_labels, cohort, DEFAULT_K),
                           DEFAULT_TAU)[:, None]
    if cal == "asnorm":
        n = min(DEFAULT_TOP_N, len(cohort) - 1)
        s = support_excluding_own(x, x_labels, cohort, n)
        return np.stack([s.mean(axis=1), np.maximum(s.std(axis=1), 1e-6)], axis=1)
    return np.zeros((len(x), 0))


def combine(cal: str, cos: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    if cal == "ida-r":
        return (DEFAULT_TAU * cos + np.logaddexp(ta[..., 0], tb[..., 0])
                + np.log(DEFAULT_K / 2.0)) / DEFAULT_TAU
    if cal == "asnorm":
        return 0.5 * ((cos - ta[..., 0]) / ta[..., 1] + (cos - tb[..., 0]) / tb[..., 1])
    return cos


def pair_scores(cal: str, a: np.ndarray, b: np.ndarray, labels: np.ndarray,
                cohort: AnchorSet) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs i != j of a (N, D) against b (N, D) -> (scores, same) flat."""
    cos = a.astype(np.float64) @ b.T.astype(np.float64)
    ta, tb = cohort_terms(cal, a, labels, cohort), cohort_terms(cal, b, labels, cohort)
    s = combine(cal, cos, ta[:, None, :], tb[None, :, :])
    off = ~np.eye(len(a), dtype=bool)
    same = labels[:, None] == labels[None, :]
    return s[off], same[off]


def openset_scores(method: str, cohort: AnchorSet | None, q: np.ndarray, g: np.ndarray,
                   g_labels: np.ndarray, chunk: int = 64, probe: str = "candidate"
                   ) -> np.ndarray:
    """(Q, G) scores of probes against a one-image-per-person gallery. cohort None: the
    gallery's own identities (candidate left out, as a gallery search scores them); else a
    fixed anchor set (e.g. the other LFW half, as the bundled anchors)."""
    from facerank.calibrate.cohort import cohort_scores, identity_cohort

    if method == "none":
        return q.astype(np.float64) @ g.T.astype(np.float64)
    if cohort is None:
        own = identity_cohort(g, g_labels, "m")
        out = np.empty((len(q), len(g)))
        gl = np.broadcast_to(g_labels, (chunk, len(g)))
        for s in range(0, len(q), chunk):
            qq = q[s : s + chunk]
            out[s : s + chunk] = cohort_scores(method, own, qq,
                                               np.broadcast_to(g, (len(qq), *g.shape)),
                                               gl[: len(qq)], probe=probe)
        return out
    cos = q.astype(np.float64) @ g.T.astype(np.float64)
    none = np.array(["\0"])
    tq = cohort_terms(method, q, np.repeat(none, len(q)), cohort)
    tg = cohort_terms(method, g, np.repeat(none, len(g)), cohort)
    return combine(method, cos, tq[:, None, :], tg[None, :, :])


def openset(data: EvalData, rows: np.ndarray, probes: dict[str, np.ndarray],
            other: AnchorSet, sizes: list[int], cals: tuple[str, ...]) -> dict:
    """TPIR@FPIR 1 % on an open set of `rows` (half the people enrolled with one image each),
    probes clean or a variant; per enrolled gallery size (seeded subsets of the people)."""
    from facerank.eval.metrics import tpir_at_fpir
    from facerank.eval.protocols import openset_split

    labels = data.lfw.labels
    emb = data.features.embeddings
    pos = {int(r): i for i, r in enumerate(rows)}
    g_idx, mated, nonmated = openset_split(labels, rows, 0)
    out: dict = {}
    for n in sizes:
        g_sel = np.sort(np.random.default_rng(n).permutation(g_idx)[: min(n, len(g_idx))])
        people = labels[g_sel]
        m_sel = mated[np.isin(labels[mated], people)]
        gl = np.asarray(data.lfw.names)[people]
        for v, pe in probes.items():
            qm = pe[[pos[int(r)] for r in m_sel]]
            qn = pe[[pos[int(r)] for r in nonmated]]
            row = {}
            for cal in cals:
                for cname, ch, pr in ((("own", None, "candidate"), ("own-nearest", None, "nearest"),
                                       ("other", other, "-")) if cal != "none"
                                      else (("-", None, "-"),)):
                    sm = openset_scores(cal, ch, qm, emb[g_sel], gl, probe=pr)
                    sn = openset_scores(cal, ch, qn, emb[g_sel], gl, probe=pr)
                    r = tpir_at_fpir(sm, labels[m_sel], sn, people, 0.01)
                    row[cal if cal == "none" else f"{cal}/{cname}"] = float(r["tpir"])
            out[f"gallery {len(g_sel)} / {v}"] = row
            console.print(f"open set, {len(g_sel)} enrolled, {v}: "
                          + ", ".join(f"{k} {100 * x:.2f}" for k, x in row.items()))
    return out


def openset_photo(data: EvalData, half_rows: np.ndarray, sets: dict[str, tuple],
                  other: AnchorSet, sizes: list[int], cals: tuple[str, ...]) -> dict:
    """TPIR@FPIR 1 % of photo-level probes on an open set of identity half `half_rows`:
    half of its people (with >= 2 images) enrolled with one clean image each
    (`openset_split`, seed 0), or a seeded subset of `sizes` of them; `sets` {name: (LFW rows,
    raw probe descriptors, ...)} from `photo_probe_sets`. Mated probes: the probes of enrolled
    people but their enrolled image; non-mated: the probes of people never enrolled. The
    same rows in every set, so the variants differ only in the photo edit."""
    from facerank.eval.metrics import tpir_at_fpir
    from facerank.eval.protocols import openset_split

    labels = data.lfw.labels
    emb = data.features.embeddings
    g_idx, _, nonmated = openset_split(labels, with_two_images(labels, half_rows), 0)
    never = np.unique(labels[nonmated])
    out: dict = {}
    for n in sizes:
        g_sel = np.sort(np.random.default_rng(n).permutation(g_idx)[: min(n, len(g_idx))])
        people = labels[g_sel]
        gl = np.asarray(data.lfw.names)[people]
        for v, (rows, desc, *_) in sets.items():
            q = (desc / np.linalg.norm(desc, axis=1, keepdims=True)).astype(np.float32)
            m = np.isin(labels[rows], people) & ~np.isin(rows, g_sel)
            nm = np.isin(labels[rows], never)
            row: dict = {"n_mated": int(m.sum()), "n_nonmated": int(nm.sum())}
            for cal in cals:
                for cname, ch in ((("own", None), ("other", other)) if cal != "none"
                                  else (("-", None),)):
                    sm = openset_scores(cal, ch, q[m], emb[g_sel], gl)
                    sn = openset_scores(cal, ch, q[nm], emb[g_sel], gl)
                    r = tpir_at_fpir(sm, labels[rows[m]], sn, people, 0.01)
                    row[cal if cal == "none" else f"{cal}/{cname}"] = float(r["tpir"])
            out[f"gallery {len(g_sel)} / {v}"] = row
            console.print(f"photo open set, {len(g_sel)} enrolled, {v} ({row['n_mated']} "
                          f"mated, {row['n_nonmated']} non-mated): "
                          + ", ".join(f"{k} {100 * x:.2f}" for k, x in row.items()
                                      if not k.startswith("n_")))
    return out


def off_diagonal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row / column of every ordered pair i != j of n faces, in `pair_scores`' order."""
    return np.nonzero(~np.eye(n, dtype=bool))


def probe_weights(probe: np.ndarray, same: np.ndarray) -> np.ndarray:
    """(P,) pair weights 1 / (pairs of the pair's probe in its class, same or different), so
    each probe counts once among the same pairs and once among the different pairs (a person
    with hundreds of images does not decide the fit)."""
    key = 2 * np.asarray(probe, np.int64) + np.asarray(same, bool)
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    return 1.0 / cnt[inv]


def photo_fit_pairs(cal: str, data: EvalData, cohort: AnchorSet, g_rows: np.ndarray,
                    probe_rows: np.ndarray, probe_desc: np.ndarray, share: float,
                    seed: int) -> tuple[np.ndarray, ...]:
    """(scores, same, probe index, gallery row) of every (probe, clean gallery face of
    g_rows) pair but a probe's own original, impostor pairs subsampled to `share`."""
    labels, names = data.lfw.labels, np.asarray(data.lfw.names)
    g_emb = data.features.embeddings[g_rows].astype(np.float64)
    p_emb = probe_desc / np.linalg.norm(probe_desc, axis=1, keepdims=True)
    tg = cohort_terms(cal, g_emb.astype(np.float32), names[labels[g_rows]], cohort)
    tp = cohort_terms(cal, p_emb.astype(np.float32), names[labels[probe_rows]], cohort)
    sc = combine(cal, p_emb @ g_emb.T, tp[:, None, :], tg[None, :, :])
    y = labels[probe_rows][:, None] == labels[g_rows][None, :]
    keep = (g_rows[None, :] != probe_rows[:, None]) & (
        y | (np.random.default_rng(seed).random(sc.shape) < share))
    ii, jj = np.nonzero(keep)
    return sc[ii, jj], y[ii, jj], ii, g_rows[jj]


def mate_cosine(data: EvalData, desc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(Q,) mean cosine of each face (raw descriptors (Q, D) of LFW rows `rows`) to the clean
    images of its person but its own original (NaN for a person with one image)."""
    labels = data.lfw.labels
    emb = data.features.embeddings.astype(np.float64)
    sums = np.zeros((labels.max() + 1, emb.shape[1]))
    np.add.at(sums, labels, emb)
    e = np.asarray(desc, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    n = np.bincount(labels)[labels[rows]] - 1
    tot = (e * sums[labels[rows]]).sum(axis=1) - (e * emb[rows]).sum(axis=1)
    return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


def clean_sharpness(data: EvalData) -> np.ndarray:
    """(N_lfw,) `chip_sharpness` of every clean LFW face, its chip cut again from the photo
    at the cached points (cached in FACERANK_CACHE/benchmarks)."""
    from facerank._util.paths import cache_root
    from facerank.face.imageio import load_image
    from facerank.face.quality import SHARPNESS_VERSION, chip_sharpness

    fx, feats = data.extractor, data.features
    path = cache_root() / "benchmarks" / (f"sharpness-v{SHARPNESS_VERSION}-"
                                          f"{fx.config_digest}-n{len(feats)}.npy")
    if path.is_file():
        return np.load(path)
    out = np.array([chip_sharpness(fx.backbone.align_points(load_image(data.lfw.paths[i]),
                                                            feats.landmarks5[i]))[0]
                    for i in range(len(feats))])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def chip_variant_sharpness(data: EvalData, kind: str, rows: np.ndarray, seed: int
                           ) -> np.ndarray:
    """(Q,) sharpness of the chip-level variant `kind` of `rows` (`occluded_queries`' chips)."""
    from facerank.eval.occlusion import occlude
    from facerank.face.imageio import load_image
    from facerank.face.quality import chip_sharpness

    fx, feats = data.extractor, data.features
    rel = [str(data.lfw.paths[i].relative_to(data.lfw.root)) for i in rows]
    chips = np.stack([fx.backbone.align_points(load_image(data.lfw.paths[i]),
                                               feats.landmarks5[i]) for i in rows])
    return chip_sharpness(occlude(kind, chips, feats.chip_landmarks68[rows], seed, ids=rel))


def photo_sharpness(data: EvalData, kind: str, rows: np.ndarray, seed: int,
                    landmarks5: np.ndarray, fx) -> np.ndarray:  # noqa: ANN001
    """(Q,) sharpness of the photo variant `kind` of `rows`, its chip cut by `fx` at the
    probes' own points `landmarks5` (Q, 5, 2) (`photo_queries`' chips)."""
    from facerank.eval.photo import occlude_photo
    from facerank.face.imageio import load_image
    from facerank.face.quality import chip_sharpness

    l68 = data.features.landmarks68
    out = np.empty(len(rows))
    for j, i in enumerate(rows):
        img = load_image(data.lfw.paths[i])
        if kind != "clean":
            img = occlude_photo(kind, img, l68[i], seed,
                                str(data.lfw.paths[i].relative_to(data.lfw.root)))
        out[j] = chip_sharpness(fx.backbone.align_points(img, landmarks5[j]))[0]
    return out


def fit_quality(cal: str, fit_rows: np.ndarray, desc: dict[str, np.ndarray], names: np.ndarray,
                cohort: AnchorSet, centroid: np.ndarray, backbone: str, fit_impostors: float,
                meta: dict, photo: dict | None = None, data: EvalData | None = None,
                g_rows: np.ndarray | None = None, design: str = "sum",
                per_probe: bool = False, floor_factor: float | None = None,
                features: tuple[str, ...] = QUALITY_FEATURES,
                sharp: dict[str, np.ndarray] | None = None,
                g_sharp: np.ndarray | None = None,
                rec_inputs: tuple[str, ...] = ("descriptor", "log_norm"),
                rec_alpha: float = 10.0, verdict: str = "auto") -> MatchProbability:
    """Quality-aware model on the fit half: clean pairs (all) + (clean, variant) pairs of each
    variant (same pairs all, impostors subsampled); `photo` {variant: (probe rows, raw probe
    descriptors, probe sharpness or None)}: also a group per photo variant, its probes against
    every clean face of g_rows (`photo_fit_pairs`). `features`: the quality features; with
    "sharpness", `sharp` {variant: (Q,)} holds the faces' sharpness beside `desc` and
    `g_sharp` (N_lfw,) that of every clean LFW face. With "recognisability", its regression
    (`fit_recognisability` on `rec_inputs`, ridge `rec_alpha`) is fitted first on the same
    faces (every face of `desc` and `photo`; target: the face's `mate_cosine`), so a variant
    left out of the fit is left out of the regression too."""
    rng = np.random.default_rng(0)
    sharp = sharp or {}
    clean = desc["clean"]
    spec = None
    if "recognisability" in features:
        faces = [(d, mate_cosine(data, d, fit_rows), sharp.get(v)) for v, d in desc.items()]
        faces += [(d, mate_cosine(data, d, rows), ps) for rows, d, ps in (photo or {}).values()]
        use_sharp = "sharpness" in rec_inputs
        spec = fit_recognisability(
            np.concatenate([f[0] for f in faces]), np.concatenate([f[1] for f in faces]),
            rec_inputs, np.concatenate([f[2] for f in faces]) if use_sharp else None,
            rec_alpha)
        console.print(f"recognisability ({','.join(rec_inputs)}): R^2 on its "
                      f"{sum(len(f[0]) for f in faces)} fit faces {spec['r2_fit']:.3f}")
    qc = quality_features(clean, centroid, features, sharp.get("clean"), spec)  # per face
    ii, jj = off_diagonal(len(fit_rows))
    parts = []
    for g, (v, d) in enumerate(desc.items()):
        e_a = clean / np.linalg.norm(clean, axis=1, keepdims=True)
        e_b = d / np.linalg.norm(d, axis=1, keepdims=True)
        sc, y = pair_scores(cal, e_a.astype(np.float32), e_b.astype(np.float32), names, cohort)
        keep = np.ones(len(sc), bool) if v == "clean" else y | (rng.random(len(sc))
                                                                < fit_impostors)
        qv = quality_features(d, centroid, features, sharp.get(v), spec)
        parts.append((sc[keep], y[keep], qc[ii[keep]], qv[jj[keep]], np.full(keep.sum(), g),
                      probe_weights(ii[keep], y[keep])))
    for k, (rows, d, ps) in enumerate((photo or {}).values()):
        sc, y, pi, gj = photo_fit_pairs(cal, data, cohort, g_rows, rows, d, fit_impostors, k)
        parts.append((sc, y, quality_features(d, centroid, features, ps, spec)[pi],
                      quality_features(data.features.descriptors[gj], centroid, features,
                                       None if g_sharp is None else g_sharp[gj], spec),
                      np.full(len(sc), len(desc) + k), probe_weights(pi, y)))
    s, y, da, db, g, pw = (np.concatenate(c) for c in zip(*parts, strict=True))
    return MatchProbability.fit_quality(s, y, da, db, g, centroid, calibrator=cal,
                                        backbone=backbone, meta=meta, design=design,
                                        features=tuple(features),
                                        weights=pw if per_probe else None,
                                        floor_factor=floor_factor,
                                        fallback_groups=len(desc) if photo else None,
                                        recognisability=spec, verdict=verdict)


PHOTO_SEED = 1  # the variant seed of `benchmarks.photo_variants`' cached probes


def photo_probe_sets(data: EvalData, variants: list[str], n: int, third: list[str],
                     detector: str = "lfw", half: str = "B", backbone: str = "dlib",
                     sharpness: bool = False) -> dict[str, tuple]:
    """{set name: (LFW rows (Q,), raw probe descriptors (Q, D), detected (Q,) bool: a real
    detection, not the no-face fallback crop, sharpness (Q,) or None unless `sharpness`)},
    every probe
    of identity half B (`identity_fold(labels, 0)` False): a clean-probe reference, the
    `n` seeded half-B probes of each variant (seed `PHOTO_SEED`), and the half-B rows of the
    seeded third edited by `benchmarks.cluster` (seed 0) for the variants in `third`.
    detector "lfw": the probes go through the evaluation set-up (the features' own chain),
    "yunet": through the product's chain (`train.data.query_extractor`: YuNet, the largest
    face); half "A": the same of identity half A instead."""
    from benchmarks.cluster import photo_edit_rows
    from facerank.train.data import photo_variant, query_extractor, variant_queries

    labels = data.lfw.labels
    half_b = identity_fold(labels, 0) == (half == "A")
    qx = None if detector == "lfw" else query_extractor(detector, backbone)
    sets: dict[str, tuple] = {}
    g_sharp = clean_sharpness(data) if sharpness else None

    def add(key: str, rows: np.ndarray, fs, kind: str, seed: int) -> None:  # noqa: ANN001
        keep = half_b[rows]
        det = np.array([not x.startswith("fallback") for x in fs.det_sources])[keep]
        sh = None
        if sharpness:
            sh = g_sharp[rows[keep]] if kind == "clean" else photo_sharpness(
                data, kind, rows[keep], seed, fs.landmarks5[keep], qx or data.extractor)
        sets[key] = (rows[keep], fs.descriptors[keep], det, sh)

    rows = variant_queries(labels, n, 0, train_fold=half == "A")
    if variants:
        add(f"clean (n{n})", rows, data.features.take(rows), "clean", 0)
    for v in variants:
        add(f"{v} (n{n})", rows, photo_variant(v, rows, PHOTO_SEED, data=data,
                                               progress=False, queries=qx), v, PHOTO_SEED)
    edits = photo_edit_rows(len(labels), 1 / 3, 0, tuple(third)) if third else {}
    for v, r in edits.items():
        add(f"{v} (third)", r, photo_variant(v, r, 0, data=data, progress=False, queries=qx),
            v, 0)
    return sets


def _far_interval(fa: np.ndarray, imp: np.ndarray, reps: int = 2000) -> list[float]:
    """95 % bootstrap interval (over probes) of sum(fa) / sum(imp); fa, imp (Q,) per probe."""
    idx = np.random.default_rng(0).integers(0, len(fa), (reps, len(fa)))
    r = fa[idx].sum(axis=1) / np.maximum(imp[idx].sum(axis=1), 1)
    return [float(x) for x in np.quantile(r, [0.025, 0.975])]


def _ece_interval(stats: np.ndarray, reps: int = 1000) -> list[float]:
    """95 % bootstrap interval (over probes) of the 50/50 ECE from per-probe bin sums
    stats (Q, 4, B): same-pair count, different-pair count, and their probability sums."""
    idx = np.random.default_rng(0).integers(0, len(stats), (reps, len(stats)))
    ece = _ece_of_sums(stats[idx].sum(axis=1))  # (reps,)
    return [float(x) for x in np.quantile(ece, [0.025, 0.975])]


def _ece_of_sums(t: np.ndarray, floor: float = 1.0) -> np.ndarray:
    """Bin sums t (..., 4, B) (same-pair count, different-pair count, and their probability
    sums) -> (...) the 50/50 ECE, sum_b wt_b |mean p_b - share_b|; `floor` bounds the class
    totals from below (1 pair for counts)."""
    ws = 0.5 / np.maximum(t[..., 0, :].sum(axis=-1, keepdims=True), floor)
    wd = 0.5 / np.maximum(t[..., 1, :].sum(axis=-1, keepdims=True), floor)
    wt = t[..., 0, :] * ws + t[..., 1, :] * wd
    gap = np.abs(t[..., 2, :] * ws + t[..., 3, :] * wd - t[..., 0, :] * ws)
    return gap.sum(axis=-1) / wt.sum(axis=-1)


def _ece_per_probe(stats: np.ndarray) -> float:
    """The 50/50 ECE from per-probe bin sums stats (Q, 4, B) (`_ece_interval`) with each
    probe counting once among the same-person pairs and once among the different-person
    pairs (the fit's `--per-probe` weighting), so that a person with hundreds of images does
    not decide it."""
    ns = stats[:, 0].sum(axis=1, keepdims=True)
    nd = stats[:, 1].sum(axis=1, keepdims=True)
    t = np.stack([stats[:, 0] / np.maximum(ns, 1), stats[:, 1] / np.maximum(nd, 1),
                  stats[:, 2] / np.maximum(ns, 1), stats[:, 3] / np.maximum(nd, 1)], axis=1)
    return float(_ece_of_sums(t.sum(axis=0), floor=1e-12))


def _ece_line(r: dict) -> str:
    """One console line of a `photo_pairs` result: ECE (also per probe) and FAR at 1e-3."""
    return "  ".join(
        f"{k}: ECE {100 * r[k]['ece']:.2f} (per probe {100 * r[k]['ece_per_probe']:.2f}) "
        f"FAR@1e-3 {r[k]['far']['1e-03']['ratio']:.2f}x ({r[k]['far']['1e-03']['false_accepts']}) "
        f"TAR@1e-3 {100 * r[k]['tar']['1e-03']:.1f}"
        + ("" if "cannot_tell" not in r[k] else
           f" cannot tell: same {100 * r[k]['cannot_tell']['1e-03']['same']:.1f} %, "
           f"different {100 * r[k]['cannot_tell']['1e-03']['different']:.1f} %")
        for k in ("score only", "with quality"))


def photo_pairs(cal: str, model: MatchProbability, cohort: AnchorSet, data: EvalData,
                g_rows: np.ndarray, probe_rows: np.ndarray, probe_desc: np.ndarray,
                chunk: int = 128, probe_sharp: np.ndarray | None = None,
                g_sharp: np.ndarray | None = None) -> dict:
    """The bundled `model` on every (clean gallery face of g_rows, probe) pair but a probe's
    own original: ECE and FAR / TAR of its score-only and quality-aware forms (a model that
    reads sharpness gets the probes' `probe_sharp` and every LFW face's `g_sharp`)."""
    labels, names = data.lfw.labels, np.asarray(data.lfw.names)
    g_emb = data.features.embeddings[g_rows].astype(np.float64)
    p_emb = probe_desc / np.linalg.norm(probe_desc, axis=1, keepdims=True)
    g_lab, p_lab = labels[g_rows], labels[probe_rows]
    tg = cohort_terms(cal, g_emb.astype(np.float32), names[g_lab], cohort)
    tp = cohort_terms(cal, p_emb.astype(np.float32), names[p_lab], cohort)
    qg = model.face_quality(data.features.descriptors[g_rows],
                            None if g_sharp is None else g_sharp[g_rows])
    qp = model.face_quality(probe_desc, probe_sharp)
    thr = {f: model.threshold(f) for f in FARS}
    forms = ("score only", "with quality")
    probs: dict[str, list] = {k: [] for k in forms}
    bins = 15  # per probe and bin: same / different counts and probability sums (ECE interval)
    stats = {k: np.zeros((len(probe_rows), 4, bins)) for k in forms}
    same: list[np.ndarray] = []
    # per probe: impostor / same pairs, and per (form, far) false / true accepts
    n_imp, n_same = np.zeros(len(probe_rows)), np.zeros(len(probe_rows))
    acc = {(k, f, w): np.zeros(len(probe_rows)) for k in forms for f in FARS
           for w in ("fa", "ta", "low", "cant_same", "cant_diff")}
    for c in range(0, len(probe_rows), chunk):
        sl = slice(c, c + chunk)
        s = combine(cal, p_emb[sl] @ g_emb.T, tp[sl][:, None, :], tg[None, :, :])
        valid = g_rows[None, :] != probe_rows[sl, None]
        ii, jj = np.nonzero(valid)
        s = s[valid]
        y = (p_lab[sl, None] == g_lab[None, :])[valid]
        p = {"score only": model(s), "with quality": model(s, qp[sl][ii], qg[jj])}
        q = ii + c
        n_imp += np.bincount(q, weights=~y, minlength=len(probe_rows))
        n_same += np.bincount(q, weights=y, minlength=len(probe_rows))
        for f, ts in thr.items():  # with quality: the verdict's rule (`accepts`)
            for k, dec in (("score only", s >= ts),
                           ("with quality", model.accepts(s, qp[sl][ii], qg[jj], f))):
                acc[k, f, "fa"] += np.bincount(q, weights=dec & ~y, minlength=len(probe_rows))
                acc[k, f, "ta"] += np.bincount(q, weights=dec & y, minlength=len(probe_rows))
                # accepted, yet shown as less likely than not: a verdict and a probability
                # that disagree in front of the user
                acc[k, f, "low"] += np.bincount(q, weights=dec & (p[k] < 0.5),
                                                minlength=len(probe_rows))
                if k == "with quality":  # "cannot tell" instead of "different people"
                    cant = ~dec & model.abstains(qp[sl][ii], qg[jj])
                    acc[k, f, "cant_same"] += np.bincount(q, weights=cant & y,
                                                          minlength=len(probe_rows))
                    acc[k, f, "cant_diff"] += np.bincount(q, weights=cant & ~y,
                                                          minlength=len(probe_rows))
        for k in forms:
            probs[k].append(p[k].astype(np.float32))
            b = q * bins + np.minimum((p[k] * bins).astype(int), bins - 1)
            n = len(probe_rows) * bins
            for col, wts in enumerate((y, ~y, p[k] * y, p[k] * ~y)):
                stats[k][:, col] += np.bincount(b, weights=wts, minlength=n).reshape(-1, bins)
        same.append(y)
    y = np.concatenate(same)
    w = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    out: dict = {"n_probes": int(len(probe_rows)), "n_same": int(y.sum()),
                 "n_different": int((~y).sum())}
    for k in forms:
        ece = expected_calibration_error(np.concatenate(probs[k]), y, 15, w)
        out[k] = {"ece": ece["ece"], "ece_ci95": _ece_interval(stats[k]),
                  "ece_per_probe": _ece_per_probe(stats[k]),
                  "reliability": ece["bins"], "far": {}, "tar": {}}
        for f in FARS:
            fa = acc[k, f, "fa"]
            out[k]["far"][f"{f:.0e}"] = {
                "far": float(fa.sum() / n_imp.sum()), "ratio": float(fa.sum() / n_imp.sum() / f),
                "false_accepts": int(fa.sum()),
                "ci95": _far_interval(fa, n_imp)}
            out[k]["tar"][f"{f:.0e}"] = float(acc[k, f, "ta"].sum() / n_same.sum())
            n_acc = acc[k, f, "fa"].sum() + acc[k, f, "ta"].sum()
            out[k].setdefault("accepted_below_half", {})[f"{f:.0e}"] = float(
                acc[k, f, "low"].sum() / max(n_acc, 1))
            if k == "with quality":  # shares of the same / different pairs
                out[k].setdefault("cannot_tell", {})[f"{f:.0e}"] = {
                    "same": float(acc[k, f, "cant_same"].sum() / n_same.sum()),
                    "different": float(acc[k, f, "cant_diff"].sum() / n_imp.sum())}
    return out


def _halves(backbone: str) -> tuple[EvalData, dict[str, np.ndarray], dict[str, AnchorSet]]:
    """LFW features, the rows of identity halves A / B (`identity_fold(labels, 0)`), and a
    cohort of one image per identity of each half."""
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=False)
    labels, names = data.lfw.labels, np.asarray(data.lfw.names)
    emb = data.features.embeddings
    fold = identity_fold(labels, 0)
    halves = {"A": np.flatnonzero(fold), "B": np.flatnonzero(~fold)}
    cohorts = {}
    for h, r in halves.items():
        pick = pick_per_identity(r, labels, 1, 0)
        cohorts[h] = AnchorSet(emb[pick], data.extractor.model_id, names[labels[pick]])
    return data, halves, cohorts


def _split(x: str | None) -> list[str]:
    return [v.strip() for v in (x or "").split(",") if v.strip()]


def run_photo(args: argparse.Namespace) -> dict:
    """The bundled models on photo-level variants of identity half B (see the docstring)."""
    data, halves, cohorts = _halves(args.backbone)
    split = lambda x: [v.strip() for v in x.split(",") if v.strip()]  # noqa: E731
    t0 = time.perf_counter()
    need_sharp = any(m is not None and m.needs_sharpness for m in (
        MatchProbability.default(c, args.backbone) for c in split(args.calibrators)))
    half, other_half = args.photo_half, "B" if args.photo_half == "A" else "A"
    if half == "A" and not args.openset_only:
        raise SystemExit("--photo-half A is for --openset-only (the bundled models were "
                         "fitted on half A)")
    sets = photo_probe_sets(data, split(args.photo_variants), args.photo_queries,
                            split(args.photo_third), args.photo_detector, half=half,
                            backbone=args.backbone, sharpness=need_sharp)
    console.print(f"{len(sets)} probe sets loaded ({time.perf_counter() - t0:.0f} s)")
    g_rows = halves[half]
    g_sharp = clean_sharpness(data) if need_sharp else None
    out: dict = {"backbone": args.backbone, "model": data.extractor.model_id,
                 "gallery": f"all {len(g_rows)} clean images of LFW identity half {half} "
                            f"(identity_fold(labels, 0) {half == 'A'}), a probe's own "
                            "original left out",
                 "probe_sets": {k: {"probes": int(len(r)), "detected": int(d.sum())}
                                for k, (r, _, d, _) in sets.items()},
                 "results": {}}
    if args.photo_openset:
        out["openset_tpir_at_fpir_1e-2"] = openset_photo(
            data, g_rows, sets, cohorts[other_half],
            [int(x) for x in split(args.photo_openset)],
            tuple(split(args.calibrators)))
    for cal in ([] if args.openset_only else split(args.calibrators)):
        model = MatchProbability.default(cal, args.backbone)
        if model is None:
            console.print(f"no bundled model for {args.backbone} / {cal}: skipped")
            continue
        out.setdefault("models", {})[cal] = {"file": f"prob-{args.backbone}-{cal}.json",
                                             "fit": model.meta.get("fit"),
                                             "command": model.meta.get("command")}
        for cname, ch in ((("-", "A"),) if cal == "none" else (("own", "B"), ("other", "A"))):
            runs = [(k, r, d, sh) for k, (r, d, _, sh) in sets.items()]
            if args.photo_detected:  # also the probes with a real detection only
                runs += [(f"{k} detected", r[m], d[m], None if sh is None else sh[m])
                         for k, (r, d, m, sh) in sets.items() if 0 < m.sum() < len(m)]
            for key, rows, desc, sh in runs:
                r = photo_pairs(cal, model, cohorts[ch], data, g_rows, rows, desc,
                                probe_sharp=sh, g_sharp=g_sharp)
                out["results"][f"{cal}/{cname}/{key}"] = r
                console.print(f"{cal:6s} {cname:5s} {key:28s} " + _ece_line(r))
    return out


def photo_report(cal: str, model: MatchProbability, data: EvalData,
                 cohorts: dict[str, AnchorSet], test_half: str, fit_half: str,
                 g_rows: np.ndarray, sets: dict, tag: str = "",
                 g_sharp: np.ndarray | None = None) -> dict:
    """`photo_pairs` of `model` on each probe set of the test half, per cohort."""
    out: dict = {}
    for cname, ch in ((("-", fit_half),) if cal == "none" else (("own", test_half),
                                                                 ("other", fit_half))):
        for key, (rows, desc, _, sh) in sets.items():
            r = photo_pairs(cal, model, cohorts[ch], data, g_rows, rows, desc,
                            probe_sharp=sh, g_sharp=g_sharp)
            out[f"{cname}/{key}"] = r
            console.print(f"{tag}{cal:6s} {cname:5s} {key:28s} " + _ece_line(r))
    return out


def with_two_images(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows whose person has >= 2 images among `rows`."""
    return rows[np.bincount(labels[rows], minlength=labels.max() + 1)[labels[rows]] >= 2]


def subset(labels: np.ndarray, rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    multi = with_two_images(labels, rows)
    return np.sort(np.random.default_rng(seed).choice(multi, min(n, len(multi)), False))


def run(args: argparse.Namespace) -> dict:
    data, halves, cohorts = _halves(args.backbone)
    labels, names = data.lfw.labels, np.asarray(data.lfw.names)
    emb = data.features.embeddings
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    features = tuple(_split(args.quality_features))
    rec_inputs = tuple(_split(args.recognisability_inputs))
    probe_spec = {"inputs": list(rec_inputs), "weights": [], "bias": 0.0}
    try:  # an unknown feature or input name stops here
        quality_features(np.zeros((1, emb.shape[1])), np.zeros(emb.shape[1]), features,
                         np.zeros(1), probe_spec)
    except ModelFileError as e:
        if "weights for" not in str(e):
            raise
    with_sharp = "sharpness" in features or ("recognisability" in features
                                             and "sharpness" in rec_inputs)
    g_sharp = clean_sharpness(data) if with_sharp else None
    out: dict = {"backbone": args.backbone, "images_per_half": args.images,
                 "quality_features": list(features), "runs": {}}
    if "recognisability" in features:
        out["recognisability_inputs"] = list(rec_inputs)
    for fit_half, test_half in (("A", "B"), ("B", "A"))[: 1 if args.one_direction else 2]:
        fit_rows = subset(labels, halves[fit_half], args.images, 1)
        test_rows = subset(labels, halves[test_half], args.images, 2)
        fit_names, test_names = names[labels[fit_rows]], names[labels[test_rows]]
        desc = data.features.descriptors
        var_desc = {"clean": desc[test_rows]}
        fit_desc = {"clean": desc[fit_rows]}
        var_sharp = {"clean": g_sharp[test_rows]} if with_sharp else {}
        fit_sharp = {"clean": g_sharp[fit_rows]} if with_sharp else {}
        for v in variants:
            if v == "clean":
                continue
            t0 = time.perf_counter()
            var_desc[v] = occluded_queries(data, v, test_rows, VARIANT_SEED, False).descriptors
            if with_sharp:
                var_sharp[v] = chip_variant_sharpness(data, v, test_rows, VARIANT_SEED)
            if args.quality and (args.fit_variants is None
                                 or v in args.fit_variants.split(",")):
                fit_desc[v] = occluded_queries(data, v, fit_rows, VARIANT_SEED,
                                               False).descriptors
                if with_sharp:
                    fit_sharp[v] = chip_variant_sharpness(data, v, fit_rows, VARIANT_SEED)
            console.print(f"{v}: {len(test_rows)} variant features "
                          f"({time.perf_counter() - t0:.0f} s)")
        var_emb = {v: (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
                   for v, d in var_desc.items()}
        var_emb["clean"] = emb[test_rows]
        centroid = emb[halves[fit_half]].astype(np.float64).mean(axis=0)
        centroid /= np.linalg.norm(centroid)
        ti, tj = off_diagonal(len(test_rows))
        run_out: dict = {}
        photo_fit: dict = {}
        if args.quality and args.photo_fit:  # photo-variant probes of the fit half
            fit_sets = photo_probe_sets(data, _split(args.photo_fit),
                                        args.photo_fit_queries or args.photo_queries, [],
                                        args.photo_detector, fit_half, args.backbone,
                                        with_sharp)
            photo_fit = {k.split(" (")[0]: (r, d, sh) for k, (r, d, _, sh) in fit_sets.items()
                         if args.photo_fit_clean or not k.startswith("clean")}
            test_sets = photo_probe_sets(data, _split(args.photo_variants), args.photo_queries,
                                         _split(args.photo_third), args.photo_detector,
                                         test_half, args.backbone, with_sharp)
            console.print(f"photo variants: {len(photo_fit)} fit sets (half {fit_half}), "
                          f"{len(test_sets)} test sets (half {test_half})")
        qkw = {"data": data, "g_rows": halves[fit_half], "design": args.design,
               "per_probe": args.per_probe, "floor_factor": args.floor_factor,
               "features": features, "sharp": fit_sharp, "g_sharp": g_sharp,
               "rec_inputs": rec_inputs, "rec_alpha": args.recognisability_alpha,
               "verdict": args.verdict}
        for cal in ([] if args.openset_only else args.calibrators.split(",")):
            fs, fy = pair_scores(cal, emb[fit_rows], emb[fit_rows], fit_names,
                                 cohorts[fit_half])
            models = {k: MatchProbability.fit(fs, fy, kind=k, calibrator=cal,
                                              backbone=args.backbone,
                                              meta={"fit": f"LFW half {fit_half}"})
                      for k in KINDS}
            if args.quality:
                models["quality"] = fit_quality(
                    cal, fit_rows, fit_desc, fit_names, cohorts[fit_half], centroid,
                    args.backbone, args.fit_impostors, {"fit": f"LFW half {fit_half}"},
                    photo=photo_fit, **qkw)
            res: dict = {"fit_pairs": {"same": int(fy.sum()), "different": int((~fy).sum())},
                         "thresholds": models["isotonic"].thresholds}
            if args.quality:
                res["thresholds_quality"] = models["quality"].thresholds
                q = models["quality"].quality or {}
                res["verdict"] = {"rule": q.get("verdict"), "fit": q.get("verdict_fit")}
                console.print(f"{cal}: verdict rule {q.get('verdict')} "
                              + " ".join(f"{r}: TAR {v['tar_mean']:.4f} FAR x "
                                         f"{min(v['far_ratio_by_group']):.2f}-"
                                         f"{max(v['far_ratio_by_group']):.2f}"
                                         for r, v in (q.get("verdict_fit") or {}).items()
                                         if isinstance(v, dict)))
            for cohort_name, ch in (("own", test_half), ("other", fit_half)):
                if cal == "none" and cohort_name == "other":
                    continue
                for v, b in var_emb.items():
                    s, y = pair_scores(cal, emb[test_rows], b, test_names, cohorts[ch])
                    w = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
                    row: dict = {"n_same": int(y.sum()), "n_different": int((~y).sum())}
                    for k, m in models.items():
                        if k == "quality":  # quality of both faces; probability thresholds
                            qa = m.face_quality(var_desc["clean"], var_sharp.get("clean"))[ti]
                            qb = m.face_quality(var_desc[v], var_sharp.get(v))[tj]
                            p = m(s, qa, qb)
                            acc = {f: m.accepts(s, qa, qb, f) for f in FARS}
                        else:
                            p = m(s)
                            acc = {f: s >= m.threshold(f) for f in FARS}
                        ece = expected_calibration_error(p, y, 15, w)
                        row[k] = {"ece": ece["ece"], "reliability": ece["bins"],
                                  "far": {f"{f:.0e}": float(acc[f][~y].mean()) for f in FARS},
                                  "tar": {f"{f:.0e}": float(acc[f][y].mean()) for f in FARS}}
                    res[f"{cohort_name}/{v}"] = row
                    console.print(f"fit {fit_half} {cal:7s} {cohort_name:5s} {v:10s} "
                                  + " ".join(f"{k} ECE {row[k]['ece']:.4f} FAR@1e-3 "
                                             f"{row[k]['far']['1e-03']:.5f}" for k in models))
            if photo_fit:
                res["photo"] = photo_report(cal, models["quality"], data, cohorts, test_half,
                                            fit_half, halves[test_half], test_sets,
                                            g_sharp=g_sharp)
            if photo_fit and args.photo_holdout and cal == "none":
                res["photo_holdout"] = {}
                for v in photo_fit:  # leave v out of the fit, report on v
                    m = fit_quality(cal, fit_rows, fit_desc, fit_names, cohorts[fit_half],
                                    centroid, args.backbone, args.fit_impostors, {},
                                    photo={k: x for k, x in photo_fit.items() if k != v},
                                    **qkw)
                    held = {k: x for k, x in test_sets.items() if k.split(" (")[0] == v}
                    res["photo_holdout"][v] = photo_report(
                        cal, m, data, cohorts, test_half, fit_half, halves[test_half], held,
                        tag=f"without {v}: ", g_sharp=g_sharp)
            run_out[cal] = res
            if args.write_defaults and fit_half == "A":
                m = models["quality" if args.quality else args.kind]
                m.meta["command"] = "python -m benchmarks.probability " + " ".join(
                    sys.argv[1:])
                m.meta["fit"] = (f"all ordered pairs of {len(fit_rows)} seeded images of LFW "
                                 "identity half A (people with >= 2 images), cohort: one image "
                                 "per person of half A, own identity left out"
                                 + (f"; plus (clean, degraded) pairs of {args.variants} "
                                    f"(impostors subsampled {args.fit_impostors}), each "
                                    "group weighted equally" if args.quality else "")
                                 + (f"; plus photo-level variants {args.photo_fit} of "
                                    f"{args.photo_fit_queries or args.photo_queries} seeded "
                                    "half-A photos "
                                    f"({args.photo_detector} detector), each against every "
                                    "clean half-A image" if photo_fit else "")
                                 + ("; pairs weighted per probe" if args.per_probe else ""))
                m.save(DEFAULTS / f"prob-{args.backbone}-{cal}.json")
        if args.openset or args.openset_only:
            sizes = [int(x) for x in args.openset_sizes.split(",")]
            run_out["openset_tpir_at_fpir_1e-2"] = openset(
                data, test_rows, var_emb, cohorts[fit_half], sizes,
                tuple(args.calibrators.split(",")))
        out["runs"][f"fit {fit_half} -> test {test_half}"] = run_out
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="dlib", choices=("dlib", "sface"))
    p.add_argument("--calibrators", default=",".join(CALIBRATORS))
    p.add_argument("--variants", default="clean,lowres24,blur,jpeg,mask",
                   help="comma-separated variant names of facerank.eval.occlusion")
    p.add_argument("--images", type=int, default=1500, help="images per half (seeded)")
    p.add_argument("--kind", default="logistic", choices=KINDS,
                   help="the form written by --write-defaults (logistic: lower held-out ECE)")
    p.add_argument("--one-direction", action="store_true", help="fit A -> test B only")
    p.add_argument("--write-defaults", action="store_true")
    p.add_argument("--quality", action="store_true",
                   help="also fit / report the quality-aware model (written by "
                   "--write-defaults)")
    p.add_argument("--fit-variants", default=None,
                   help="variants the quality fit sees (default: all of --variants); the "
                   "others are held out, to test a variant it never saw")
    p.add_argument("--fit-impostors", type=float, default=0.05,
                   help="share of the variants' impostor pairs used by the quality fit")
    p.add_argument("--openset", action="store_true",
                   help="also TPIR@FPIR 1 %% on the test half: own cohort vs other-half anchors")
    p.add_argument("--suffix", default="", help="appended to the results file name")
    p.add_argument("--openset-only", action="store_true", help="skip the pair measurements")
    p.add_argument("--openset-sizes", default="10,25,50,100,1000",
                   help="enrolled gallery sizes (people) of the open set")
    p.add_argument("--plot", nargs="+", metavar="JSON",
                   help="only draw the reliability diagram from these results files")
    p.add_argument("--plot-out", default="docs/img/probability_reliability.png")
    p.add_argument("--photo-variants", default=None,
                   help="comma-separated photo variants (facerank.eval.photo_variants): report "
                   "the bundled models on (clean, photo-variant) pairs of half B instead")
    p.add_argument("--photo-queries", type=int, default=200,
                   help="seeded half-B probes per photo variant (cached: 200)")
    p.add_argument("--photo-fit-queries", type=int, default=None,
                   help="seeded photos per variant of the fit half (default: --photo-queries)")
    p.add_argument("--photo-third", default="",
                   help="photo variants also read from the seeded third of all images edited "
                   "by benchmarks.cluster (mask-shaded,lowres), half-B rows")
    p.add_argument("--photo-detector", default="lfw", choices=("lfw", "yunet"),
                   help="the chain photo probes go through: the evaluation set-up (lfw) or the "
                   "product's (yunet: YuNet, the largest face)")
    p.add_argument("--photo-fit", default=None,
                   help="with --quality: also fit on these photo variants of the fit half's "
                   "--photo-queries seeded photos, and report the fit on --photo-variants of "
                   "the test half")
    p.add_argument("--photo-holdout", action="store_true",
                   help="with --photo-fit: refit without each photo variant, report on it")
    p.add_argument("--quality-features", default=",".join(QUALITY_FEATURES),
                   help="comma-separated quality features of the quality fit "
                   "(calibrate.probability.KNOWN_FEATURES; sharpness: face.quality)")
    p.add_argument("--recognisability-inputs", default="descriptor,log_norm",
                   help="inputs of the 'recognisability' regression "
                   "(calibrate.probability.RECOGNISABILITY_INPUTS)")
    p.add_argument("--recognisability-alpha", type=float, default=10.0,
                   help="ridge penalty of the 'recognisability' regression")
    p.add_argument("--design", default="sum", choices=("sum", "minmax"),
                   help="pair terms of the quality model (MatchProbability.fit_quality)")
    p.add_argument("--per-probe", action="store_true",
                   help="weight the quality fit's pairs 1 / pairs of their probe")
    p.add_argument("--verdict", default="auto", choices=("auto", "quality", "score"),
                   help="the quality model's verdict rule (MatchProbability.fit_quality)")
    p.add_argument("--floor-factor", type=float, default=None,
                   help="fit the impostor scores given quality: verdicts by the "
                   "quality-normalised score, floored at the clean score threshold of this "
                   "many times the FAR (minmax design)")
    p.add_argument("--photo-openset", default=None, metavar="SIZES",
                   help="with --photo-variants: also TPIR@FPIR 1 %% of the photo probes on an "
                   "open set of their half (--photo-half) with this many people enrolled "
                   "(comma-separated); "
                   "--openset-only skips the pair measurements")
    p.add_argument("--photo-fit-clean", action="store_true",
                   help="with --photo-fit: the clean photos through the same detector are a "
                   "fit group too")
    p.add_argument("--photo-half", default="B", choices=("A", "B"),
                   help="the identity half of the photo probes (A only with --openset-only: "
                   "the bundled models were fitted on A)")
    p.add_argument("--photo-detected", action="store_true",
                   help="also report each photo probe set on its probes with a real detection")
    args = p.parse_args()
    if args.photo_variants is not None and not args.photo_fit:
        out = run_photo(args)
        out["command"] = "python -m benchmarks.probability " + " ".join(sys.argv[1:])
        write_result(f"probability_{args.backbone}_photo{args.suffix}", out)
        return
    if args.plot:
        plot(args.plot, args.plot_out)
        return
    out = run(args)
    out["command"] = "python -m benchmarks.probability " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    tail = ("_openset" if args.openset or args.openset_only else "") + args.suffix
    path = write_result(f"probability_{args.backbone}{tail}", out)
    console.print(f"wrote {path}")



def plot(paths: list[str], out: str = "docs/img/probability_reliability.png") -> None:
    """Reliability diagram (15 bins) of the cosine models, fit A -> test B, per backbone
    (rows) and model (columns: score only, and with quality where the results have it) and
    variant, from results JSON written by `run`."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [json.loads(Path(p).read_text()) for p in paths]
    kinds = [k for k in ("logistic", "quality")
             if any(k in d["runs"]["fit A -> test B"]["none"]["own/clean"] for d in data)]
    if any("photo" in d["runs"]["fit A -> test B"]["none"] for d in data):
        kinds.append("photo")  # the quality model on photo-level probe sets
    fig, axes = plt.subplots(len(paths), len(kinds), figsize=(5 * len(kinds), 4.6 * len(paths)),
                             squeeze=False)
    for row_axes, d in zip(axes, data, strict=True):
        res = d["runs"]["fit A -> test B"]["none"]
        for ax, kind in zip(row_axes, kinds, strict=True):
            if kind == "photo":  # {"-/<set> (n...)": {"with quality": {...}}}
                curves = [(k[2:].split(" (")[0], r["with quality"])
                          for k, r in res.get("photo", {}).items()]
            else:
                curves = [(k[4:], r[kind]) for k, r in res.items()
                          if k.startswith("own/") and isinstance(r, dict) and kind in r]
            for name, r in curves:
                bins = [b for b in r["reliability"] if b["mean_prob"] is not None]
                ax.plot([b["mean_prob"] for b in bins], [b["share_same"] for b in bins], "o-",
                        ms=3, label=f"{name} (ECE {100 * r['ece']:.1f} %)")
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            what = {"logistic": "score only", "quality": "score + quality",
                    "photo": "score + quality, photo-level"}[kind]
            ax.set(title=f"{d['backbone']}: cosine, {what} (LFW half B)",
                   xlabel="predicted match probability", ylabel="share of same-person pairs",
                   xlim=(0, 1), ylim=(0, 1))
            ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
