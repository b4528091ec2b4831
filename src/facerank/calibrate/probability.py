"""Match probability: P(same person | score) for one backbone and one calibrator.

A `MatchProbability` maps a Stage-1 score (cosine, or a calibrator's score) to the
probability that the two faces show the same person, at equal prior odds (as many same as
different pairs; `prior` records it). Two fitted forms:

    logistic   p = 1 / (1 + exp(-(a * s + b)))        (Platt scaling, 2 parameters)
    isotonic   p = interp(s, knots_x, knots_y)        (pool-adjacent-violators, monotone)

It also carries the score thresholds at stated false accept rates (chosen on the impostor
pairs it was fitted on), so `compare` / `search` can say "same person at FAR 1e-3".

Quality. A logistic model may also carry a `quality` block: P(same | score, quality of both
faces), where a face's quality is read from its raw descriptor alone, so it exists for every
face at search time (gallery rows store their descriptors):

    log_norm   log of the descriptor's length before normalisation (SFace's shrinks on
               low-resolution, blurred and occluded faces)
    centroid   cosine of the face to the mean face of the fit half (dlib's masked faces move
               towards it)
    sharpness  the aligned chip's sharpness (`face.quality.chip_sharpness`), stored per face
               beside its descriptor; faces stored before it read as unknown
    recognisability
               a learned estimate of how well the face matches its own person: a ridge
               regression (`fit_recognisability`), fitted on the fit half's faces, from the
               L2-normalised descriptor, its log length and optionally the sharpness to the
               face's mean cosine to the other clean images of its person. Its weights live
               in the quality block ("recognisability": inputs, centres, weights, bias), so
               the model file stays plain JSON.

    p = 1 / (1 + exp(-(w_s s + w_1 + sum_f (c_f + d_f s) Q_f)))   Q_f = z_f(a) + z_f(b)

z_f is the feature standardised on the fit half's clean faces. The "sum" design above uses
Q_f; the "minmax" design uses the worse and the better face of each feature and the squared
shortfall of the worse one, [min_f, max_f, min(min_f, 0)^2] (so a clean gallery face does not
hide an occluded probe). Without the descriptors of both faces (a bare score) the model
answers with its score-only form `a s + b`.

Verdicts at a FAR. Without quality: the score reaches the FAR's score threshold (chosen on the
clean impostor pairs of the fit half). A "minmax" model may also carry the impostor score
distribution given the pair's quality (mean and log spread linear in the pair terms); with
both faces' quality the verdict then asks the quality-normalised score (s - mean) / sd to reach
the threshold that lets through that FAR of the fit half's impostor pairs (clean and degraded,
each group weighted equally), and the score to reach a floor: the clean score threshold at
`floor_factor` times the FAR (10 in the bundled files), so quality can lower the score
threshold, but only that far. Low-quality
impostor pairs score lower, so one score threshold is too strict on them (SFace let through
0.05-0.4x of 1e-3 on photo-level variants); the normalised score holds the FAR per quality.
An older "sum" model asks the score threshold and its quality-aware probability threshold
both. A quality block whose "verdict" is "score" decides by the clean score threshold alone
(quality then moves only the probability): `fit_quality` picks that rule where it holds the FAR
on every fit group and accepts more true pairs there than the quality-aware rule. A model
with the recognisability may also abstain: below the level of the worse face at which the
verdict accepts fewer than half the same-person pairs of its fit, a pair it does not accept is
"cannot tell", not "different people" (a barely readable face is no evidence of another
person).

A model file is a small JSON: the form, its parameters, the calibrator and backbone it was
made for (a file for another calibrator or backbone is refused), the thresholds, and the
command that made it. Bundled files live in `calibrate/defaults/prob-<backbone>-<cal>.json`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from facerank.errors import InputError, ModelFileError

KINDS = ("logistic", "isotonic")
FARS = (1e-2, 1e-3, 1e-4)
SCALE = "match probability"  # the one name every output uses for this scale
FORMAT = 1


def format_probability(p: float | None) -> str:
    """A match probability as a person reads it: "97.3 %", and "> 99.9 %" / "< 0.1 %" at the
    ends (a model fitted on a finite set of pairs never knows 100 %); "-" when there is none."""
    if p is None or not np.isfinite(p):
        return "-"
    if p >= 0.9995:
        return "> 99.9 %"
    if p < 0.0005:
        return "< 0.1 %"
    return f"{100 * p:.1f} %"


def _far_key(far: float) -> str:
    return f"{far:.0e}"


def _scores(x: np.ndarray, what: str) -> np.ndarray:
    s = np.asarray(x, dtype=np.float64)
    if not np.isfinite(s).all():
        raise InputError(f"{what}: {int((~np.isfinite(s)).sum())} score(s) are NaN or inf")
    return s


def _pav(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted isotonic (non-decreasing) fit of y on sorted x -> (knots_x, knots_y).

    Pool-adjacent-violators on blocks; ties in x are merged first. Returns one knot per
    block at the block's weighted mean score (for interpolation between blocks).
    """
    _, kx, ky = _pav_blocks(x, y, w)
    return kx, ky


def _pav_blocks(x: np.ndarray, y: np.ndarray, w: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_pav` with each block's smallest x too -> (block starts, knots_x, knots_y)."""
    ux, inv = np.unique(x, return_inverse=True)
    wy = np.bincount(inv, weights=w * y)
    ws = np.bincount(inv, weights=w)
    wx = np.bincount(inv, weights=w * x)
    vals: list[float] = []
    wts: list[float] = []
    xs: list[float] = []
    starts: list[float] = []
    for v, wt, xx, u in zip(wy / ws, ws, wx, ux, strict=True):  # O(n) amortised over blocks
        vals.append(v)
        wts.append(wt)
        xs.append(xx)
        starts.append(u)
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            v2, w2, x2 = vals.pop(), wts.pop(), xs.pop()
            starts.pop()
            wt1 = wts[-1]
            vals[-1] = (vals[-1] * wt1 + v2 * w2) / (wt1 + w2)
            wts[-1] = wt1 + w2
            xs[-1] = xs[-1] + x2
    kx = np.asarray(xs) / np.asarray(wts)
    return np.asarray(starts), kx, np.asarray(vals)


def logistic_fit(s: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 100
              ) -> tuple[float, float, float, float]:
    """Weighted Platt fit on standardised scores -> (a, b) on the raw scale, plus (mu, sd)."""
    mu, sd = float(np.average(s, weights=w)), float(np.sqrt(np.cov(s, aweights=w)) or 1.0)
    z = (s - mu) / sd
    theta = np.zeros(2)
    X = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(iters):  # Newton's method with a tiny ridge
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ theta, -40, 40)))
        g = X.T @ (w * (p - y)) + 1e-6 * theta
        h = (X * (w * p * (1 - p))[:, None]).T @ X + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    a = theta[0] / sd
    return float(a), float(theta[1] - a * mu), mu, sd


QUALITY_FEATURES = ("log_norm", "centroid")  # read from the raw descriptor
FACE_FEATURES = ("sharpness",)  # stored per face beside its descriptor (`face.quality`)
LEARNED_FEATURES = ("recognisability",)  # a regression on the above, kept in the model file
KNOWN_FEATURES = QUALITY_FEATURES + FACE_FEATURES + LEARNED_FEATURES
RECOGNISABILITY_INPUTS = ("descriptor", "log_norm", "sharpness")


def _sharpness_column(sharpness: np.ndarray | None, n: int, who: str) -> np.ndarray:
    """(n,) float64 sharpness of n faces; one-line InputError when missing or mis-sized."""
    if sharpness is None:
        raise InputError(f"{who} needs each face's sharpness")
    x = np.asarray(sharpness, np.float64).reshape(-1)
    if x.shape != (n,):
        raise InputError(f"{len(x)} sharpness values for {n} faces")
    return x


def recognisability_inputs(descriptors: np.ndarray, inputs: tuple[str, ...] | list[str],
                           sharpness: np.ndarray | None = None,
                           centre: dict | None = None) -> np.ndarray:
    """(N, D) raw descriptors (and (N,) sharpness) -> (N, K) the inputs of the
    recognisability regression: "descriptor" the L2-normalised descriptor (D columns),
    "log_norm" its log length and "sharpness" the chip sharpness, each with its squared
    distance to `centre[name]` (2 columns)."""
    d = np.asarray(descriptors, np.float64)
    if d.ndim == 1:
        d = d[None]
    n = np.maximum(np.linalg.norm(d, axis=1), 1e-12)
    centre = centre or {}
    cols: list[np.ndarray] = []
    for name in inputs:
        if name == "descriptor":
            cols.append(d / n[:, None])
            continue
        if name == "log_norm":
            x = np.log(n)
        elif name == "sharpness":
            x = _sharpness_column(sharpness, len(d), "the recognisability regression")
        else:
            raise ModelFileError(f"unknown recognisability input {name!r}; known: "
                                 f"{', '.join(RECOGNISABILITY_INPUTS)}")
        c = float(centre.get(name, 0.0))
        cols.append(np.stack([x, (x - c) ** 2], axis=1))
    return np.concatenate(cols, axis=1)


def fit_recognisability(descriptors: np.ndarray, target: np.ndarray,
                        inputs: tuple[str, ...] | list[str] = ("descriptor", "log_norm"),
                        sharpness: np.ndarray | None = None, alpha: float = 10.0) -> dict:
    """Ridge regression (penalty `alpha` on standardised inputs) of a per-face target (N,),
    e.g. the face's mean cosine to the other clean images of its person, on the face's own
    data (`recognisability_inputs`); rows with a non-finite target are left out.

    Returns the JSON-ready spec a quality block keeps under "recognisability": inputs,
    centres of the squared terms (the inputs' means), weights (K,) and bias on the raw
    inputs, and the fit's R^2."""
    t = np.asarray(target, np.float64).reshape(-1)
    ok = np.isfinite(t)
    d = np.asarray(descriptors, np.float64)[ok]
    sh = None if sharpness is None else np.asarray(sharpness, np.float64).reshape(-1)[ok]
    if ok.sum() < 10:
        raise InputError("fitting recognisability needs at least 10 faces with a target")
    first = recognisability_inputs(d, [i for i in inputs if i != "descriptor"], sh)
    centre = {name: float(first[:, 2 * k].mean())
              for k, name in enumerate(i for i in inputs if i != "descriptor")}
    X = recognisability_inputs(d, inputs, sh, centre)
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = np.c_[(X - mu) / sd, np.ones(len(X))]
    pen = alpha * np.eye(Z.shape[1])
    beta = np.linalg.solve(Z.T @ Z + pen, Z.T @ t[ok])
    w = beta[:-1] / sd
    b = float(beta[-1] - (w * mu).sum())
    r2 = 1.0 - float(((X @ w + b - t[ok]) ** 2).mean() / max(t[ok].var(), 1e-12))
    return {"inputs": list(inputs), "centre": centre, "weights": w.tolist(), "bias": b,
            "alpha": float(alpha), "r2_fit": r2}


def recognisability(descriptors: np.ndarray, spec: dict,
                    sharpness: np.ndarray | None = None) -> np.ndarray:
    """(N, D) raw descriptors (and (N,) sharpness if the spec reads it) -> (N,) the face's
    predicted recognisability under `spec` (`fit_recognisability`)."""
    X = recognisability_inputs(descriptors, spec["inputs"], sharpness, spec.get("centre"))
    w = np.asarray(spec["weights"], np.float64)
    if X.shape[1] != len(w):
        raise ModelFileError(f"recognisability: {len(w)} weights for {X.shape[1]} inputs")
    return X @ w + float(spec["bias"])


def quality_features(descriptors: np.ndarray, centroid: np.ndarray,
                     features: tuple[str, ...] | list[str] = QUALITY_FEATURES,
                     sharpness: np.ndarray | None = None,
                     recognisability_spec: dict | None = None) -> np.ndarray:
    """(N, D) raw descriptors (and (N,) `face.quality.chip_sharpness` of the same faces, when
    `features` names "sharpness" or the recognisability regression reads it) -> (N, F)
    per-face quality features (see the module doc); "recognisability" needs the regression's
    `recognisability_spec` (`fit_recognisability`)."""
    d = np.asarray(descriptors, np.float64)
    if d.ndim == 1:
        d = d[None]
    n = np.maximum(np.linalg.norm(d, axis=1), 1e-12)

    def sharp() -> np.ndarray:
        return _sharpness_column(sharpness, len(d), "the quality feature 'sharpness'")

    def learned() -> np.ndarray:
        if recognisability_spec is None:
            raise InputError("the quality feature 'recognisability' needs its regression")
        return recognisability(d, recognisability_spec, sharpness)

    cols = {"log_norm": lambda: np.log(n),
            "centroid": lambda: (d / n[:, None]) @ np.asarray(centroid, np.float64),
            "sharpness": sharp, "recognisability": learned}
    try:
        return np.stack([cols[f]() for f in features], axis=1)
    except KeyError as e:
        raise ModelFileError(f"unknown quality feature {e}; known: "
                             f"{', '.join(KNOWN_FEATURES)}") from None


def logistic_fit_matrix(X: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 100
                        ) -> np.ndarray:
    """Weighted logistic regression on the columns of X (P, C) (one must be the constant)
    by Newton's method on standardised columns -> weights (C,) on the raw columns."""
    mu = np.average(X, axis=0, weights=w)
    sd = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=w))
    const = np.ptp(X, axis=0) == 0
    if not const.any():
        raise InputError("logistic_fit_matrix: X needs a constant column")
    mu[const], sd[const] = 0.0, 1.0
    Z = (X - mu) / sd
    theta = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ theta, -40, 40)))
        g = Z.T @ (w * (p - y)) + 1e-6 * theta
        h = (Z * (w * p * (1 - p))[:, None]).T @ Z + 1e-6 * np.eye(len(theta))
        step = np.linalg.solve(h, g)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    raw = theta / sd
    shift = float((theta * mu / sd).sum())
    raw[np.flatnonzero(const)[0]] -= shift  # fold the standardisation into the constant
    return raw


PAIR_DESIGNS = ("sum", "minmax")
CANNOT_TELL = "cannot tell (a face too degraded)"  # the verdict's abstention
VERDICT_RULES = ("quality", "score")  # how a quality model decides (`fit_quality(verdict=)`)


def pair_terms(qa: np.ndarray, qb: np.ndarray, design: str = "sum") -> np.ndarray:
    """Standardised qualities (P, F) of both faces of each pair -> pair terms (P, T):
    "sum": Q_f = qa_f + qb_f (T = F); "minmax": the worse and the better face of each feature
    and the squared shortfall of the worse one, [min_f, max_f, min(min_f, 0)^2] (T = 3F)."""
    qa, qb = np.asarray(qa, np.float64), np.asarray(qb, np.float64)
    if design == "sum":
        return qa + qb
    if design == "minmax":
        lo, hi = np.minimum(qa, qb), np.maximum(qa, qb)
        return np.concatenate([lo, hi, np.minimum(lo, 0.0) ** 2], axis=1)
    raise ModelFileError(f"unknown pair design {design!r}; known: {', '.join(PAIR_DESIGNS)}")


def _n_terms(n_features: int, design: str) -> int:
    return n_features * (3 if design == "minmax" else 1)


def _quality_design(s: np.ndarray, qa: np.ndarray, qb: np.ndarray, design: str = "sum"
                    ) -> np.ndarray:
    """scores (P,), standardised qualities (P, F) of both faces -> design (P, 2 + 2T):
    [s, 1, T_1, s T_1, ..., T_T, s T_T] with the pair terms T of `pair_terms`."""
    q = pair_terms(qa, qb, design)
    cols = [s, np.ones_like(s)]
    for f in range(q.shape[1]):
        cols += [q[:, f], s * q[:, f]]
    return np.stack(cols, axis=1)


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The smallest x whose weighted share of the x above it is <= 1 - q."""
    o = np.argsort(x, kind="stable")
    cw = np.cumsum(w[o]) / w.sum()
    return float(x[o][min(len(x) - 1, int(np.searchsorted(cw, q, side="left")) + 1)])


class MatchProbability:
    """P(same person | score) for one (backbone, calibrator); `__call__(scores) -> probs`.

    scores and probabilities have the same shape (any); probabilities are in [0, 1].
    """

    def __init__(self, kind: str, params: dict, calibrator: str, backbone: str,
                 thresholds: dict | None = None, meta: dict | None = None,
                 quality: dict | None = None) -> None:
        if kind not in KINDS:
            raise InputError(f"unknown probability model {kind!r}; choose {', '.join(KINDS)}")
        self.kind, self.params = kind, params
        self.calibrator, self.backbone = calibrator, backbone
        self.thresholds = dict(thresholds or {})  # {"1e-03": {"score", "probability", ...}}
        self.meta = dict(meta or {})
        self.quality = None if quality is None else dict(quality)
        self._rec: dict | None = None  # the recognisability regression, if the block has one
        if self.quality is not None:
            try:
                feats = tuple(str(f) for f in self.quality["features"])
                self._q = (feats, np.asarray(self.quality["centroid"], np.float64),
                           np.asarray(self.quality["mean"], np.float64),
                           np.asarray(self.quality["sd"], np.float64),
                           np.asarray(self.quality["weights"], np.float64))
                self._design = str(self.quality.get("design", "sum"))
                imp = self.quality.get("impostor")
                self._imp = None if imp is None else (
                    np.asarray(imp["mean"], np.float64), np.asarray(imp["log_sd"], np.float64))
            except (KeyError, TypeError, ValueError):
                raise ModelFileError("quality block: needs features, centroid, mean, sd and "
                                     "weights") from None
            unknown = [f for f in feats if f not in KNOWN_FEATURES]
            if unknown:
                raise ModelFileError(f"quality block: unknown quality feature(s) "
                                     f"{', '.join(unknown)}; this version knows "
                                     f"{', '.join(KNOWN_FEATURES)}")
            if self.quality.get("verdict", "quality") not in VERDICT_RULES:
                raise ModelFileError(f"quality block: unknown verdict rule "
                                     f"{self.quality.get('verdict')!r}; known: "
                                     f"{', '.join(VERDICT_RULES)}")
            if self._design not in PAIR_DESIGNS:
                raise ModelFileError(f"quality block: unknown pair design {self._design!r}; "
                                     f"known: {', '.join(PAIR_DESIGNS)}")
            self._rec = self.quality.get("recognisability")
            if ("recognisability" in feats) != (self._rec is not None):
                raise ModelFileError("quality block: the feature 'recognisability' and its "
                                     "regression 'recognisability' come together")
            if self._rec is not None:
                try:
                    ins = [str(i) for i in self._rec["inputs"]]
                    bad = [i for i in ins if i not in RECOGNISABILITY_INPUTS]
                    k = sum(len(self._q[1]) if i == "descriptor" else 2 for i in ins)
                    ok = (not bad and len(self._rec["weights"]) == k
                          and np.isfinite(np.asarray(self._rec["weights"], np.float64)).all()
                          and np.isfinite(float(self._rec["bias"]))
                          and all(np.isfinite(float(v))
                                  for v in dict(self._rec.get("centre", {})).values()))
                except (KeyError, TypeError, ValueError):
                    ok = False
                if not ok:
                    raise ModelFileError("quality block: the recognisability regression needs "
                                         "known inputs, one finite weight per input column "
                                         "and a bias")
            abstain = self.quality.get("abstain")
            if abstain is not None and not (
                    isinstance(abstain, dict) and abstain.get("feature") in feats
                    and isinstance(abstain.get("below"), int | float)
                    and np.isfinite(float(abstain["below"]))):
                raise ModelFileError("quality block: 'abstain' needs a known feature and a "
                                     "finite level 'below'")
            f, t = len(feats), _n_terms(len(feats), self._design)
            if kind != "logistic" or self._q[2].shape != (f,) or self._q[3].shape != (f,) \
                    or self._q[4].shape != (2 + 2 * t,) or self._q[1].ndim != 1 \
                    or (self._imp is not None and not self._imp[0].shape
                        == self._imp[1].shape == (1 + t,)):
                raise ModelFileError("quality block: sizes of mean/sd/weights/impostor do not "
                                     "match its features (logistic models only)")
        if kind == "isotonic":
            self._kx = np.asarray(params["x"], np.float64)
            self._ky = np.asarray(params["y"], np.float64)
            if self._kx.ndim != 1 or len(self._kx) != len(self._ky) or len(self._kx) < 1:
                raise ModelFileError("isotonic probability model: knots x/y must be equal "
                                     "non-empty lists")

    @classmethod
    def fit(cls, scores: np.ndarray, same: np.ndarray, kind: str = "logistic",
            calibrator: str = "none", backbone: str = "dlib", fars: tuple = FARS,
            prior: float = 0.5, meta: dict | None = None) -> MatchProbability:
        """Fit on pair scores (P,) with same (P,) bool, reweighted to `prior` same pairs."""
        s = _scores(scores, "scores").ravel()
        y = np.asarray(same, dtype=bool).ravel()
        if len(s) != len(y):
            raise InputError(f"{len(s)} scores but {len(y)} same/different labels")
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos < 2 or n_neg < 2:
            raise InputError("fitting a match probability needs at least 2 same and 2 "
                             f"different pairs (got {n_pos} and {n_neg})")
        w = np.where(y, prior / n_pos, (1 - prior) / n_neg) * len(s)
        yf = y.astype(np.float64)
        if kind == "logistic":
            a, b, _, _ = logistic_fit(s, yf, w)
            params: dict = {"a": a, "b": b}
        elif kind == "isotonic":
            order = np.argsort(s, kind="stable")
            kx, ky = _pav(s[order], yf[order], w[order])
            params = {"x": kx.tolist(), "y": ky.tolist()}
        else:
            raise InputError(f"unknown probability model {kind!r}; choose {', '.join(KINDS)}")
        model = cls(kind, params, calibrator, backbone,
                    meta={"prior": prior, "n_same": n_pos, "n_different": n_neg,
                          **(meta or {})})
        imp = np.sort(s[~y])
        for far in fars:
            # the smallest score whose impostor share above it is <= far
            idx = min(len(imp) - 1, int(np.ceil((1 - far) * len(imp))))
            thr = float(imp[idx])  # impostors >= thr: at most far * n (without ties)
            model.thresholds[_far_key(far)] = {
                "far": far, "score": thr, "probability": float(model(np.array([thr]))[0]),
                "tar": float((s[y] >= thr).mean()), "n_impostor": n_neg}
        return model

    @property
    def needs_sharpness(self) -> bool:
        """True when the quality block reads each face's stored sharpness."""
        return self.quality is not None and ("sharpness" in self._q[0] or (
            self._rec is not None and "sharpness" in self._rec["inputs"]))

    def face_quality(self, descriptors: np.ndarray, sharpness: np.ndarray | None = None
                     ) -> np.ndarray | None:
        """(N, D) raw descriptors (and (N,) sharpness of the same faces, for a model that
        reads it) -> (N, F) standardised quality features; None when the model has no quality
        block, the descriptors do not fit its centroid, or a sharpness it needs is missing or
        not finite (an older gallery): the caller then gets the score-only form."""
        if self.quality is None:
            return None
        feats, centroid, mean, sd, _ = self._q
        d = np.asarray(descriptors, np.float64)
        if d.ndim == 1:
            d = d[None]
        if d.ndim != 2 or d.shape[1] != len(centroid) or not np.isfinite(d).all():
            return None
        if self.needs_sharpness:
            if sharpness is None:
                return None
            sharpness = np.asarray(sharpness, np.float64).reshape(-1)
            if sharpness.shape != (len(d),) or not np.isfinite(sharpness).all():
                return None
        return (quality_features(d, centroid, feats, sharpness, self._rec) - mean) / sd

    @classmethod
    def fit_quality(cls, scores: np.ndarray, same: np.ndarray, feats_a: np.ndarray,
                    feats_b: np.ndarray, group: np.ndarray, centroid: np.ndarray,
                    calibrator: str = "none", backbone: str = "dlib",
                    features: tuple[str, ...] = QUALITY_FEATURES, fars: tuple = FARS,
                    meta: dict | None = None, design: str = "sum",
                    weights: np.ndarray | None = None, floor_factor: float | None = None,
                    fallback_groups: int | None = None,
                    recognisability: dict | None = None,
                    verdict: str = "auto", verdict_far: float = 1e-3,
                    abstain_tar: float | None = 0.5) -> MatchProbability:
        """Fit P(same | score, quality) on pairs (P,) whose faces have the quality features
        feats_a, feats_b (P, F) (`quality_features(descriptors, centroid, features)` of each
        face, indexed by pair); group (P,) int: 0 = clean pairs, k > 0 = pairs with a degraded
        face (each group weighted equally, same and different pairs 50/50 within a group;
        `weights` (P,), optional: relative weights of the pairs within their group and class,
        e.g. 1 / pairs of the pair's probe so that no person dominates).

        `design` "sum" or "minmax" (`pair_terms`). The score-only fallback (`params`) is fitted
        on the same weighted pairs (only the groups < `fallback_groups` if given); the
        thresholds are chosen on the clean (group 0) impostor pairs: the score threshold and
        the quality-aware probability threshold at each FAR.

        `floor_factor` (minmax only) also fits the impostor score distribution given the
        pair's quality (mean and log spread linear in the pair terms, on every group's
        impostor pairs): the verdict at FAR f then needs the quality-normalised score
        (`normalised_score`) to reach the threshold that lets through f of the impostor pairs
        (each group weighted equally), and the score to reach the clean score threshold at
        FAR `floor_factor` * f (the floor: quality lowers the score threshold at most to it).

        `recognisability`: the regression (`fit_recognisability`) behind the feature
        "recognisability", kept in the quality block so that `face_quality` can compute it.

        `verdict`: the rule of `accepts` with both faces' quality. "quality" is the rule above
        (the normalised score with `floor_factor`, else score and probability thresholds);
        "score" the clean score threshold alone (quality then only moves the probability);
        "auto" measures both on these pairs (`VERDICT_RULES`) and keeps the one whose FAR at
        `verdict_far` is within [0.5x, 2x] of nominal on every group with the higher mean TAR over
        the groups (if neither holds the FAR, the one closer to it). A quality model that
        ranks pairs worse than the score alone (dlib: the verdict lost 3 points of clean
        TAR on the fit half) then keeps the score's verdict and still calibrates the
        probability.

        `abstain_tar`: with the feature "recognisability", the verdict may say "cannot tell"
        instead of "different people" for a pair whose worse face is less recognisable than
        the level at which the verdict accepts `abstain_tar` of the same-person pairs
        (isotonic in that face's recognisability, every group, at `verdict_far`); None: never.
        """
        if verdict not in ("auto", *VERDICT_RULES):
            raise InputError(f"unknown verdict rule {verdict!r}; choose auto, "
                             f"{', '.join(VERDICT_RULES)}")
        s = _scores(scores, "scores").ravel()
        y = np.asarray(same, dtype=bool).ravel()
        g = np.asarray(group).ravel()
        fa = np.asarray(feats_a, np.float64)
        fb = np.asarray(feats_b, np.float64)
        base = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64).ravel()
        if not (len(s) == len(y) == len(g) == len(fa) == len(fb) == len(base)) \
                or fa.shape != fb.shape or fa.ndim != 2 or fa.shape[1] != len(features):
            raise InputError("scores, same, group, weights and quality features must have one "
                             "row per pair, one column per feature")
        if design not in PAIR_DESIGNS:
            raise InputError(f"unknown pair design {design!r}; choose {', '.join(PAIR_DESIGNS)}")
        if floor_factor is not None and (design != "minmax" or not floor_factor >= 1):
            raise InputError("floor_factor needs the minmax design and a value >= 1")
        w = np.zeros(len(s))
        groups = np.unique(g)
        for k in groups:
            sel = g == k
            n_pos, n_neg = int((y & sel).sum()), int((~y & sel).sum())
            if n_pos < 2 or n_neg < 2:
                raise InputError(f"pair group {k}: needs at least 2 same and 2 different pairs")
            pos, neg = sel & y, sel & ~y
            w[pos] = 0.5 * base[pos] / base[pos].sum()
            w[neg] = 0.5 * base[neg] / base[neg].sum()
        w *= len(s) / w.sum()
        yf = y.astype(np.float64)
        clean = g == groups.min()
        ref = np.concatenate([fa[clean], fb[clean]])
        mean, sd = ref.mean(axis=0), np.maximum(ref.std(axis=0), 1e-12)
        qa, qb = (fa - mean) / sd, (fb - mean) / sd
        coef = logistic_fit_matrix(_quality_design(s, qa, qb, design), yf, w)
        fb_sel = np.ones(len(s), bool) if fallback_groups is None else g < fallback_groups
        if not fb_sel.any():
            raise InputError("fallback_groups leaves no pairs for the score-only fallback")
        a, b, _, _ = logistic_fit(s[fb_sel], yf[fb_sel], w[fb_sel])
        quality = {"features": list(features), "centroid": np.asarray(centroid).tolist(),
                   "mean": mean.tolist(), "sd": sd.tolist(), "weights": coef.tolist(),
                   "design": design,
                   "pair_quality": "Q_f = z_f(a) + z_f(b)" if design == "sum" else
                   "[min_f, max_f, min(min_f, 0)^2] of z_f(a), z_f(b)"}
        if recognisability is not None:
            quality["recognisability"] = dict(recognisability)
        imp = ~y
        if floor_factor is not None:  # impostor score given the pair's quality
            X = np.concatenate([np.ones((len(s), 1)), pair_terms(qa, qb, design)], axis=1)
            sw = np.sqrt(w[imp])[:, None]
            m_coef = np.linalg.lstsq(X[imp] * sw, s[imp] * sw[:, 0], rcond=None)[0]
            resid = np.log(np.abs(s[imp] - X[imp] @ m_coef) + 1e-6)
            sd_coef = np.linalg.lstsq(X[imp] * sw, resid * sw[:, 0], rcond=None)[0]
            quality["impostor"] = {"mean": m_coef.tolist(), "log_sd": sd_coef.tolist(),
                                   "floor_factor": float(floor_factor)}
        model = cls("logistic", {"a": a, "b": b}, calibrator, backbone,
                    meta={"prior": 0.5, "n_same": int(y.sum()), "n_different": int((~y).sum()),
                          "groups": int(len(groups)), **(meta or {})}, quality=quality)
        cimp = clean & imp
        s_imp = np.sort(s[cimp])
        p_imp = np.sort(model(s[cimp], qa[cimp], qb[cimp]))
        p_all = model(s, qa, qb)
        z_imp = None if floor_factor is None else model.normalised_score(s[imp], qa[imp],
                                                                         qb[imp])
        for far in fars:
            idx = min(len(s_imp) - 1, int(np.ceil((1 - far) * len(s_imp))))
            thr, pthr = float(s_imp[idx]), float(p_imp[idx])
            t = model.thresholds[_far_key(far)] = {
                "far": far, "score": thr, "probability": float(model(np.array([thr]))[0]),
                "probability_quality": pthr,
                "tar": float((s[y & clean] >= thr).mean()),
                "tar_quality": float((p_all[y & clean] >= pthr).mean()),
                "n_impostor": int(cimp.sum())}
            if z_imp is not None:
                fl = min(1.0, floor_factor * far)
                t["z"] = _weighted_quantile(z_imp, w[imp], 1 - far)
                t["score_floor"] = float(s_imp[min(len(s_imp) - 1,
                                                   int(np.ceil((1 - fl) * len(s_imp))))])
                t["tar_quality"] = float(model.accepts(s[y & clean], qa[y & clean],
                                                       qb[y & clean], far).mean())
        model._choose_verdict(verdict, s, y, g, qa, qb, verdict_far)
        if abstain_tar is not None and "recognisability" in features:
            model._fit_abstain(s[y], qa[y], qb[y], w[y], verdict_far, abstain_tar)
        return model

    def _fit_abstain(self, s: np.ndarray, qa: np.ndarray, qb: np.ndarray, w: np.ndarray,
                     far: float, tar_floor: float) -> None:
        """From same-person pairs (P,): the recognisability of the worse face below which
        the verdict accepts fewer than `tar_floor` of them (weighted isotonic fit), kept in
        the quality block as "abstain" (none when every level reaches it or none does)."""
        assert self.quality is not None
        f = list(self._q[0]).index("recognisability")
        worse = np.minimum(qa[:, f], qb[:, f])
        acc = self.accepts(s, qa, qb, far).astype(np.float64)
        o = np.argsort(worse, kind="stable")
        starts, _, ky = _pav_blocks(worse[o], acc[o], w[o])
        ok = ky >= tar_floor
        if ok.all() or not ok.any():
            self.quality.pop("abstain", None)
            return
        below = float(starts[int(np.argmax(ok))])  # the first level where the fit reaches it
        self.quality["abstain"] = {
            "feature": "recognisability", "below": below, "tar_floor": float(tar_floor),
            "far": float(far), "share_same_below": float(w[worse < below].sum() / w.sum())}

    def abstains(self, qa: np.ndarray | None, qb: np.ndarray | None) -> np.ndarray:
        """(P,) bool: pairs whose worse face is below the model's "abstain" level (its
        verdict says "cannot tell" rather than "different people"); all False without the
        block or the faces' quality."""
        block = None if self.quality is None else self.quality.get("abstain")
        if block is None or qa is None or qb is None or np.shape(qa) != np.shape(qb) \
                or np.ndim(qa) != 2 or np.shape(qa)[1] != len(self._q[0]):
            return np.zeros(0 if qa is None else len(qa), bool)
        f = list(self._q[0]).index(block["feature"])
        return np.minimum(np.asarray(qa)[:, f], np.asarray(qb)[:, f]) < float(block["below"])

    def _choose_verdict(self, verdict: str, s: np.ndarray, y: np.ndarray, g: np.ndarray,
                        qa: np.ndarray, qb: np.ndarray, far: float = 1e-3) -> None:
        """Measure each verdict rule on the fit pairs (FAR at `far` per group as a multiple
        of it, TAR per group) and record the chosen one in the quality block (`fit_quality`)."""
        assert self.quality is not None
        stats: dict[str, dict] = {}
        groups = np.unique(g)
        for rule in VERDICT_RULES:
            self.quality["verdict"] = rule
            acc = self.accepts(s, qa, qb, far)
            ratio = [float(acc[(g == k) & ~y].mean() / far) for k in groups]
            tar = [float(acc[(g == k) & y].mean()) for k in groups]
            stats[rule] = {"far_ratio_by_group": ratio, "tar_by_group": tar,
                           "tar_mean": float(np.mean(tar)),
                           "far_holds": bool(all(0.5 <= r <= 2.0 for r in ratio))}
        if verdict == "auto":
            held = [r for r in VERDICT_RULES if stats[r]["far_holds"]]
            if held:
                verdict = max(held, key=lambda r: (stats[r]["tar_mean"], r == "quality"))
            else:
                verdict = min(VERDICT_RULES, key=lambda r: max(
                    abs(np.log(max(x, 1e-6))) for x in stats[r]["far_ratio_by_group"]))
        self.quality["verdict"] = verdict
        self.quality["verdict_fit"] = {"far": far, "groups": [int(k) for k in groups],
                                       **stats}

    def normalised_score(self, scores: np.ndarray, qa: np.ndarray, qb: np.ndarray
                         ) -> np.ndarray | None:
        """(P,) scores and both faces' `face_quality` (P, F) -> (P,) the score in units of the
        impostor spread at the pair's quality, (s - mean(q)) / sd(q); None for a model
        without the impostor fit."""
        if self.quality is None or self._imp is None:
            return None
        X = np.concatenate([np.ones((len(qa), 1)), pair_terms(qa, qb, self._design)], axis=1)
        return (np.asarray(scores, np.float64) - X @ self._imp[0]) / np.exp(X @ self._imp[1])

    def accepts(self, scores: np.ndarray, qa: np.ndarray | None = None,
                qb: np.ndarray | None = None, far: float = 1e-3,
                strict: bool = False) -> np.ndarray:
        """(P,) bool: the pairs decided "same person" at `far` (the rule of `verdict`).

        strict: quality may only make the verdict stricter (the floor is the clean score
        threshold itself), for a search's top-1, which is the best of many impostor chances."""
        t = self.thresholds[_far_key(far)]
        s = np.asarray(scores, np.float64).ravel()
        if self.quality is None or qa is None or qb is None \
                or self.quality.get("verdict", "quality") == "score" \
                or np.shape(qa) != np.shape(qb) or np.shape(qa) != (len(s), len(self._q[0])):
            return s >= float(t["score"])
        if "z" in t and self._imp is not None:
            floor = float(t["score"] if strict else t["score_floor"])
            return (s >= floor) & (self.normalised_score(s, qa, qb) >= float(t["z"]))
        same = s >= float(t["score"])
        if "probability_quality" in t:
            same &= self(s, qa, qb) >= float(t["probability_quality"])
        return same

    def __call__(self, scores: np.ndarray, qa: np.ndarray | None = None,
                 qb: np.ndarray | None = None) -> np.ndarray:
        """scores (P,) or any shape -> P(same person) of the same shape, float64 in [0, 1].

        qa, qb: (P, F) `face_quality` of each pair's two faces (flat scores only); without
        them (or for a model without quality) the score-only form answers."""
        s = np.asarray(scores, dtype=np.float64)
        if self.quality is not None and qa is not None and qb is not None \
                and s.ndim == 1 and np.shape(qa) == np.shape(qb) == (len(s), len(self._q[0])):
            z = np.clip(_quality_design(s, np.asarray(qa), np.asarray(qb), self._design)
                        @ self._q[4],
                        -40, 40)
            return np.where(np.isfinite(s), 1.0 / (1.0 + np.exp(-z)), np.nan)
        if self.kind == "logistic":
            z = np.clip(self.params["a"] * s + self.params["b"], -40, 40)
            p = 1.0 / (1.0 + np.exp(-z))
        else:
            p = np.interp(s, self._kx, self._ky)
        return np.where(np.isfinite(s), p, np.nan)

    def threshold(self, far: float = 1e-3) -> float | None:
        """The score threshold at `far` (None if the model has none for it)."""
        t = self.thresholds.get(_far_key(far))
        return None if t is None else float(t["score"])

    def verdict(self, score: float, far: float = 1e-3, qa: np.ndarray | None = None,
                qb: np.ndarray | None = None, strict: bool = False) -> str | None:
        """"same person" / "different people" at the FAR threshold (or `CANNOT_TELL` instead
        of "different people" where the worse face is below the model's abstain level, see
        `fit_quality(abstain_tar=)`), None without a threshold.

        Without both faces' quality (qa, qb (1, F)) the score must reach the FAR's score
        threshold. With them, a model with the impostor fit (`fit_quality(floor_factor=)`)
        asks the quality-normalised score to reach the FAR's threshold `z` (the impostor
        pairs of the pair's quality let through about `far`) and the score to reach the floor
        `score_floor` (the clean score threshold at floor_factor * far), so quality can lower
        the score threshold only down to the floor. An older model without it asks the score
        threshold and the quality-aware probability threshold both. `strict`: see `accepts`.
        """
        if self.thresholds.get(_far_key(far)) is None:
            return None
        if bool(self.accepts(np.array([float(score)]), qa, qb, far, strict)[0]):
            return "same person"
        if self.abstains(qa, qb).any():
            return CANNOT_TELL
        return "different people"

    def check(self, calibrator: str, backbone: str | None = None) -> None:
        """Refuse use with another calibrator / backbone than the model was fitted for."""
        if calibrator != self.calibrator:
            raise InputError(f"the match probability model was fitted for calibrator "
                             f"{self.calibrator!r}, not {calibrator!r}; use the model of the "
                             "same --calibrate")
        if backbone is not None and backbone != self.backbone:
            raise InputError(f"the match probability model was fitted on {self.backbone!r} "
                             f"features, not {backbone!r}; use the model of the same backbone")

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "scale": SCALE, "kind": self.kind, "params": self.params,
             "calibrator": self.calibrator, "backbone": self.backbone,
             "thresholds": self.thresholds, "meta": self.meta}
        if self.quality is not None:
            d["quality"] = self.quality
        return d

    def save(self, path: str | Path) -> None:
        import os

        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, p)

    @classmethod
    def from_dict(cls, d: dict, where: str = "probability model") -> MatchProbability:
        try:
            q = d.get("quality")
            return cls(str(d["kind"]), dict(d["params"]), str(d["calibrator"]),
                       str(d["backbone"]), dict(d.get("thresholds", {})),
                       dict(d.get("meta", {})), None if q is None else dict(q))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{where}: not a match probability model ({e}); make one "
                                 "with python -m benchmarks.probability fit") from None

    @classmethod
    def load(cls, path: str | Path, calibrator: str | None = None,
             backbone: str | None = None) -> MatchProbability:
        """Read a JSON model; refuse one made for another calibrator / backbone."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelFileError(f"{p}: probability model not found") from None
        except (OSError, ValueError):
            raise ModelFileError(f"{p}: not a readable JSON probability model") from None
        if not isinstance(d, dict):
            raise ModelFileError(f"{p}: not a match probability model")
        model = cls.from_dict(d, str(p))
        if calibrator is not None:
            model.check(calibrator, backbone)
        return model

    @classmethod
    def default(cls, calibrator: str, backbone: str) -> MatchProbability | None:
        """The bundled model for (backbone, calibrator), None if none is shipped."""
        name = f"prob-{backbone}-{calibrator}.json"
        try:
            text = (resources.files("facerank.calibrate") / "defaults" / name).read_text()
        except (FileNotFoundError, OSError):
            return None
        return cls.from_dict(json.loads(text), name)


def expected_calibration_error(probs: np.ndarray, same: np.ndarray, bins: int = 15,
                               weights: np.ndarray | None = None) -> dict:
    """ECE over `bins` equal-width probability bins: sum_b w_b |mean p_b - share same_b|.

    Returns {"ece", "bins": [{"lo", "hi", "n", "weight", "mean_prob", "share_same"}]}.
    """
    p = np.asarray(probs, np.float64).ravel()
    y = np.asarray(same, bool).ravel().astype(np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64).ravel()
    b = np.minimum((p * bins).astype(int), bins - 1)
    wt = np.bincount(b, weights=w, minlength=bins)
    mp = np.bincount(b, weights=w * p, minlength=bins)
    my = np.bincount(b, weights=w * y, minlength=bins)
    n = np.bincount(b, minlength=bins)
    nz = wt > 0
    gap = np.zeros(bins)
    gap[nz] = np.abs(mp[nz] / wt[nz] - my[nz] / wt[nz])
    ece = float((wt * gap).sum() / wt.sum())
    rows = [{"lo": i / bins, "hi": (i + 1) / bins, "n": int(n[i]),
             "weight": float(wt[i] / wt.sum()),
             "mean_prob": float(mp[i] / wt[i]) if nz[i] else None,
             "share_same": float(my[i] / wt[i]) if nz[i] else None} for i in range(bins)]
    return {"ece": ece, "bins": rows}
