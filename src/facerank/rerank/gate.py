"""Quality gate: decide per query whether Stage 2 should re-order its candidates.

DESIGN §5 found that EMD on this backbone's intermediate maps lifts occluded queries but hurts
clean ones at any fixed alpha. The gate predicts, from the shapes of the query's Stage-1 and
EMD score lists and from a few statistics of the query's own features, whether the query is a
hard (occluded) one; only then is the EMD blend used. It is a logistic regression, fitted on
training identities, whose threshold is set so that a chosen small share of the clean training
queries (the clean budget, 1 % by default) is sent to Stage 2; stored as a small JSON file
(no pickle).

    list features (per query, cos = Stage-1 scores and emd = EMD of the same top k):
      cos_std, cos_top1, cos_peak (top-1 z-score among the rest), cos_gap10 (top1 - top10),
      cos_mean, emd_std, emd_max, emd_mean, emd_at_cos_top1, agree (EMD's best = cosine's best)
    query features (the query's raw descriptor and its patch grid):
      q_norm (descriptor length), q_grid_mean, q_grid_std, q_grid_active (share > 0),
      q_grid_spatial_std (spread of the channel-mean map over the grid)
    extra features a gate may also use (`EXTRA_FEATURES`, listed in its meta "features"):
      cos_margin (Stage-1 top1 - top2), det_score (the detector's score, capped at 1)

A gate fitted on what Stage 2 does to each query rather than on clean vs occluded is made by
`facerank.train.gate` (`facerank train gate`); its threshold may be 1.0: it sends nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from facerank.errors import InputError, ModelFileError

__all__ = ["BACKBONE_GATE_PREFIX", "BUNDLED", "EXTRA_FEATURES", "FEATURES", "LIST_FEATURES",
           "QUERY_FEATURES", "QualityGate", "bundled_gate", "bundled_gate_path", "extra_features",
           "gate_features", "pre_gate_path", "query_features"]


LIST_FEATURES = ("cos_std", "cos_top1", "cos_peak", "cos_gap10", "cos_mean", "emd_std",
                 "emd_max", "emd_mean", "emd_at_cos_top1", "agree")
QUERY_FEATURES = ("q_norm", "q_grid_mean", "q_grid_std", "q_grid_active", "q_grid_spatial_std")
FEATURES = LIST_FEATURES + QUERY_FEATURES
EXTRA_FEATURES = ("cos_margin", "det_score")  # a gate may append these (in this order)
PRE_FEATURES = LIST_FEATURES[:5] + QUERY_FEATURES  # no Stage-2 score: known before any OT
BUNDLED = Path(__file__).resolve().parent / "gates"


def query_features(descriptors: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """descriptors (Q, D) raw (not normalised), grid (Q, C, H, W) -> (Q, 5) query statistics."""
    if descriptors.ndim != 2 or grid.ndim != 4 or len(descriptors) != len(grid):
        raise InputError(f"gate needs (Q, D) descriptors and (Q, C, H, W) grids, got "
                         f"{descriptors.shape} and {grid.shape}")
    g = grid.astype(np.float32)
    return np.stack([
        np.linalg.norm(descriptors.astype(np.float64), axis=1), g.mean(axis=(1, 2, 3)),
        g.std(axis=(1, 2, 3)), (g > 0).mean(axis=(1, 2, 3)), g.mean(axis=1).std(axis=(1, 2)),
    ], axis=1).astype(np.float64)


def gate_features(cos: np.ndarray, emd: np.ndarray, query: np.ndarray) -> np.ndarray:
    """cos (Q, k) Stage-1 scores best first, emd (Q, k) EMD of the same candidates,
    query (Q, 5) from `query_features` -> (Q, F).

    Both lists cover the same k candidates (the re-ranked ones), so the statistics mean the
    same thing whether the Stage-1 ranking was cut at k or kept longer.
    """
    if cos.ndim != 2 or cos.shape != emd.shape or cos.shape[1] < 2:
        raise InputError(f"gate needs Stage-1 and EMD scores of the same (Q, k>=2) candidates, "
                         f"got {cos.shape} and {emd.shape}")
    if query.shape != (len(cos), len(QUERY_FEATURES)):
        raise InputError(f"gate needs ({len(cos)}, {len(QUERY_FEATURES)}) query features, "
                         f"got {query.shape}")
    cos = cos.astype(np.float64)
    emd = emd.astype(np.float64)
    rest = cos[:, 1:]
    tenth = cos[:, min(9, cos.shape[1] - 1)]
    return np.stack([
        cos.std(axis=1), cos[:, 0], (cos[:, 0] - rest.mean(axis=1)) / (rest.std(axis=1) + 1e-9),
        cos[:, 0] - tenth, cos.mean(axis=1), emd.std(axis=1), emd.max(axis=1),
        emd.mean(axis=1), emd[:, 0], (emd.argmax(axis=1) == 0).astype(np.float64),
        *query.T,
    ], axis=1)


def extra_features(names: tuple[str, ...] | list[str], cos: np.ndarray,
                   det_scores: np.ndarray) -> np.ndarray:
    """cos (Q, k>=2) Stage-1 scores best first, det_scores (Q,) -> (Q, len(names)) columns of
    `EXTRA_FEATURES`: cos_margin = top1 - top2, det_score = min(score, 1) (YuNet scores lie in
    [0, 1]; HOG's unbounded margins are capped so a clear HOG face reads like a clear YuNet one).
    """
    unknown = [n for n in names if n not in EXTRA_FEATURES]
    if unknown:
        raise InputError(f"unknown gate feature(s) {unknown}; known extras: {EXTRA_FEATURES}")
    if cos.ndim != 2 or cos.shape[1] < 2 or np.shape(det_scores) != (len(cos),):
        raise InputError(f"extra gate features need (Q, k>=2) scores and (Q,) detector scores, "
                         f"got {cos.shape} and {np.shape(det_scores)}")
    cols = {"cos_margin": cos[:, 0].astype(np.float64) - cos[:, 1],
            "det_score": np.minimum(np.asarray(det_scores, dtype=np.float64), 1.0)}
    return np.stack([cols[n] for n in names], axis=1) if names else np.zeros((len(cos), 0))


def pre_gate_features(cos: np.ndarray, query: np.ndarray) -> np.ndarray:
    """cos (Q, k>=2) Stage-1 scores best first, query (Q, 5) -> (Q, 10) `PRE_FEATURES`:
    the gate's inputs that need no Stage-2 score."""
    if cos.ndim != 2 or cos.shape[1] < 2 or query.shape != (len(cos), len(QUERY_FEATURES)):
        raise InputError(f"pre-gate needs (Q, k>=2) Stage-1 scores and (Q, "
                         f"{len(QUERY_FEATURES)}) query features, got {cos.shape} and "
                         f"{query.shape}")
    return gate_features(cos, np.zeros_like(cos), query)[:, [FEATURES.index(f)
                                                            for f in PRE_FEATURES]]


BACKBONE_GATE_PREFIX = {"dlib": "dlib_resnet_v1", "sface": "sface_2021dec_int8bq"}


def bundled_gate_path(grid: str, weighting: str, backbone: str = "dlib") -> Path:
    """Where the gate for `backbone` ("dlib" or "sface") with this grid and weighting ships."""
    if backbone not in BACKBONE_GATE_PREFIX:
        raise InputError(f"unknown backbone {backbone!r}; use dlib or sface")
    return BUNDLED / f"{BACKBONE_GATE_PREFIX[backbone]}-{grid}-{weighting}.json"


def pre_gate_path(gate_path: str | Path) -> Path:
    """Where the pre-gate of the gate file `gate_path` is kept: `<gate>.pre.json` beside it."""
    return Path(gate_path).with_suffix(".pre.json")


def bundled_gate(grid: str, weighting: str, backbone: str = "dlib") -> Path | None:
    """The gate shipped for `backbone` with this grid and weighting, if there is one."""
    path = bundled_gate_path(grid, weighting, backbone)
    return path if path.is_file() else None


@dataclass
class QualityGate:
    """Logistic regression on standardised gate features (Q, F); p > threshold -> Stage 2."""

    mean: list[float]
    std: list[float]
    coef: list[float]
    bias: float
    threshold: float = 0.5
    meta: dict = field(default_factory=dict)

    @property
    def extras(self) -> tuple[str, ...]:
        """The `EXTRA_FEATURES` this gate reads after `FEATURES` (in its meta "features")."""
        return tuple(self.meta.get("features", FEATURES))[len(FEATURES):]

    def inputs(self, base: np.ndarray, cos: np.ndarray, det_scores: np.ndarray) -> np.ndarray:
        """base (Q, 15) `gate_features`, plus this gate's extras from cos (Q, k) and the
        queries' detector scores (Q,) -> (Q, F)."""
        if not self.extras:
            return base
        return np.concatenate([base, extra_features(self.extras, cos, det_scores)], axis=1)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(Q,) probability that each query is a hard one that Stage 2 should re-rank."""
        if features.ndim != 2 or features.shape[1] != len(self.coef):
            raise InputError(f"gate expects (Q, {len(self.coef)}) features, got "
                             f"{features.shape}")
        x = (features - np.array(self.mean)) / np.array(self.std)
        return 1.0 / (1.0 + np.exp(-(x @ np.array(self.coef) + self.bias)))

    def use_stage2(self, features: np.ndarray) -> np.ndarray:
        """(Q,) bool from (Q, F) `gate_features`."""
        return self.probability(features) > self.threshold

    def digest(self) -> str:
        """A short hash of the decision rule (weights, scaling, threshold)."""
        import hashlib

        key = json.dumps([self.mean, self.std, self.coef, self.bias, self.threshold])
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def pre_path(self) -> Path | None:
        """Where this gate's pre-gate is looked for (`pre_gate_path` of its file)."""
        src = self.meta.get("_path")
        return None if not src else pre_gate_path(src)

    @classmethod
    def fit(cls, features: np.ndarray, hard: np.ndarray, l2: float = 1e-2,
            clean_budget: float = 0.01, meta: dict | None = None) -> QualityGate:
        """Fit on (N, F) features and (N,) bool labels (True = occluded / hard query).

        The threshold lets `clean_budget` of the easy training queries through to Stage 2.
        """
        if not 0.0 < clean_budget < 1.0:
            raise InputError(f"clean_budget must be in (0, 1), got {clean_budget}")
        if len(features) != len(hard) or len(np.unique(hard)) != 2:
            raise InputError("gate training needs features and labels of both classes")
        mean, std = features.mean(axis=0), features.std(axis=0) + 1e-12
        x = torch.from_numpy((features - mean) / std)
        y = torch.from_numpy(hard.astype(np.float64))
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
            loss = loss + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            p_easy = torch.sigmoid(x[~torch.from_numpy(hard.astype(bool))] @ w + b)
        threshold = float(torch.quantile(p_easy, 1.0 - clean_budget))
        return cls(mean.tolist(), std.tolist(), w.detach().tolist(), float(b.detach()),
                   threshold, {"features": list(FEATURES), "clean_budget": clean_budget,
                               **(meta or {})})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        raw = asdict(self)
        raw["meta"].pop("_path", None)  # where it was loaded from: not part of the gate
        tmp.write_text(json.dumps(raw, indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> QualityGate:
        """Read a gate JSON; "default" means the bundled l2/APC gate of the dlib backbone."""
        path = bundled_gate_path("l2", "apc") if str(path) == "default" else Path(path)
        try:
            raw = json.loads(Path(path).read_text())
            gate = cls(**raw)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: gate file not found; fit one with `python -m "
                                 "benchmarks.stage2 gated --save-gate` or run Stage 2 without "
                                 "a gate") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise ModelFileError(f"{path}: not a facerank gate file ({e})") from None
        names = tuple(gate.meta.get("features", FEATURES))
        if (names[: len(FEATURES)] != FEATURES
                or any(n not in EXTRA_FEATURES for n in names[len(FEATURES):])
                or len(gate.coef) != len(names) or len(gate.mean) != len(names)):
            raise ModelFileError(f"{path}: gate has {len(gate.coef)} weights for features "
                                 f"{list(names)}, expected {len(FEATURES)} + any of "
                                 f"{list(EXTRA_FEATURES)}; retrain it with this facerank "
                                 "version")
        gate.meta["_path"] = str(path)
        return gate


@dataclass
class PreGate:
    """The cheap first step of a gate: a logistic regression on `PRE_FEATURES` (no Stage-2
    score) whose threshold passes every query its gate sent on the data it was fitted on.
    Queries it drops skip Stage 2's optimal transport altogether; the others are decided by
    the full gate as before. It belongs to one gate (`for_gate` = `QualityGate.digest()`);
    a pre-gate of another gate is ignored, so re-fitting a gate can never pair it with a stale
    pre-gate. Stored as `<gate>.pre.json` beside the gate."""

    mean: list[float]
    std: list[float]
    coef: list[float]
    bias: float
    threshold: float
    for_gate: str
    meta: dict = field(default_factory=dict)

    def maybe_stage2(self, features: np.ndarray) -> np.ndarray:
        """(Q,) bool from (Q, 10) `pre_gate_features`: False = the gate would not send it."""
        if features.ndim != 2 or features.shape[1] != len(self.coef):
            raise InputError(f"pre-gate expects (Q, {len(self.coef)}) features, got "
                             f"{features.shape}")
        x = (features - np.array(self.mean)) / np.array(self.std)
        return x @ np.array(self.coef) + self.bias >= self.threshold

    @classmethod
    def fit(cls, features: np.ndarray, sent: np.ndarray, gate: QualityGate,
            margin: float = 1.0, meta: dict | None = None) -> PreGate:
        """Fit on (N, 10) pre-gate features and (N,) the full gate's decisions; the threshold
        (on the logit) is the lowest logit of a sent query minus `margin`."""
        if len(features) != len(sent) or not sent.any() or sent.all():
            raise InputError("pre-gate fitting needs queries the gate sent and some it kept")
        g = QualityGate.fit(features, sent, clean_budget=0.5)
        x = (features - np.array(g.mean)) / np.array(g.std)
        logit = x @ np.array(g.coef) + g.bias
        threshold = float(logit[sent].min() - margin)
        return cls(g.mean, g.std, g.coef, g.bias, threshold, gate.digest(),
                   {"features": list(PRE_FEATURES), "margin": margin,
                    "kept_share_fit": float((logit <= threshold).mean()), **(meta or {})})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def for_gate(cls, gate: QualityGate) -> PreGate | None:
        """The pre-gate stored beside `gate`'s file if it was fitted for this very gate."""
        path = gate.pre_path()
        if path is None or not path.is_file():
            return None
        try:
            pre = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ModelFileError(f"{path}: not a facerank pre-gate file ({e})") from None
        if len(pre.coef) != len(PRE_FEATURES):
            raise ModelFileError(f"{path}: pre-gate has {len(pre.coef)} weights, expected "
                                 f"{len(PRE_FEATURES)}")
        return pre if pre.for_gate == gate.digest() else None


def gate_inputs(gate: object, base: np.ndarray, cos: np.ndarray, det_scores: np.ndarray
                ) -> np.ndarray:
    """A gate's inputs: the 15 base features (Q, 15), plus the extra ones a gate fitted with
    them reads (`QualityGate.inputs`); any other gate (None, or one with only `use_stage2`)
    gets the base features."""
    inputs = getattr(gate, "inputs", None)
    return base if inputs is None else inputs(base, cos, det_scores)
