"""Inter-class Discrepancy Alignment (IDA, ../shared/seeds/002): the Discrepancy Alignment
Operator (Eq. 4) with reference-based (IDA-R) and learned (IDA-L) support-set estimation.

    DAO(f1, f2) = exp(tau <f1, f2>) * (1 / sum_i exp(tau s1_i) + 1 / sum_i exp(tau s2_i))

s_i are a face's cosines to its support set (its k nearest anchors). The density term
F(f) = 1 / sum_i exp(tau s_i) is large where few other identities are near the face, and the
pair's cosine is scaled up there. We work in log space: u(f) = log F(f) = -logsumexp(tau s),
log DAO = tau <f1, f2> + logaddexp(u1, u2), so tau in the hundreds (dlib cosines of
different people sit in a narrow band, so useful tau is large) cannot overflow. The score we
return is (log DAO + log(k/2)) / tau: monotone in DAO (same ROC, same ranking) and on the
cosine's scale (cos - s when all k support cosines equal s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerank.calibrate.anchors import AnchorSet, SupportIndex
from facerank.calibrate.base import Calibrator, check_embeddings, register_calibrator
from facerank.errors import InputError

DEFAULT_TAU = 30.0  # with k=10: in the plateau of the LFW tau sweep (docs/results.md)
DEFAULT_K = 10


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log(sum(exp(x))) along `axis` (scipy's costs ~40x more on one short row)."""
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def log_density(support_sims: np.ndarray, tau: float) -> np.ndarray:
    """support_sims (N, k) -> (N,) u = log F = -logsumexp(tau * s) (the paper's F, in logs)."""
    return -logsumexp(tau * np.asarray(support_sims, np.float64), axis=1)


def log_dao(cos: np.ndarray, u1: np.ndarray, u2: np.ndarray, tau: float) -> np.ndarray:
    """log of Eq. 4 from the cosine and both faces' log density terms (elementwise)."""
    return tau * np.asarray(cos, np.float64) + np.logaddexp(u1, u2)


def dao(f1: np.ndarray, f2: np.ndarray, support1: np.ndarray, support2: np.ndarray,
        tau: float) -> float:
    """Eq. 4 literally, for one pair: f (D,), support (k, D) the support-set embeddings."""
    s1, s2 = support1 @ f1, support2 @ f2
    return float(np.exp(tau * (f1 @ f2)) * (1 / np.exp(tau * s1).sum()
                                           + 1 / np.exp(tau * s2).sum()))


def _check_tau(tau: float) -> float:
    if not np.isfinite(tau) or tau <= 0:
        raise InputError(f"tau must be a positive number, got {tau}")
    return float(tau)


class _IDA(Calibrator):
    """IDA's combine: (log DAO + log(k / 2)) / tau; face terms are (N, 1) u.

    The constant log(k / 2) / tau makes the score independent of k and tau's scale: for two
    faces whose k support cosines all equal s it is exactly cos - s. Without it, calibrators
    with different (k, tau) (e.g. chosen per LFW fold) give scores offset by log(k) / tau,
    and one threshold across them fails (measured: 68.6 % pairs accuracy instead of 98.8 %).
    """

    tau = DEFAULT_TAU
    k = DEFAULT_K

    def combine(self, cos: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
        shift = np.log(self.k / 2.0)
        return (log_dao(cos, ta[..., 0], tb[..., 0], self.tau) + shift) / self.tau


@register_calibrator("ida-r")
class IDAR(_IDA):
    """IDA-R: each face's support set = its k nearest anchors (faiss)."""

    name = "ida-r"

    def __init__(self, anchors: AnchorSet | str | Path | None = None, k: int = DEFAULT_K,
                 tau: float = DEFAULT_TAU, hnsw_above: int | None = None) -> None:
        self.anchors = (AnchorSet.default() if anchors is None else anchors
                        if isinstance(anchors, AnchorSet) else AnchorSet.load(anchors))
        self.k, self.tau = int(k), _check_tau(tau)
        if not 1 <= self.k <= len(self.anchors):
            raise InputError(f"support set size k={self.k} must be between 1 and the number of "
                             f"anchors ({len(self.anchors)}); lower k or add anchors")
        self.model_id = self.anchors.model_id
        kw = {} if hnsw_above is None else {"hnsw_above": hnsw_above}
        self.index = SupportIndex(self.anchors, **kw)
        self._digest = f"ida-r-{self.anchors.digest()}-k{self.k}-t{self.tau:g}"

    def support(self, x: np.ndarray) -> np.ndarray:
        """x (N, D) -> (N, k) cosines to the support set."""
        return self.index.search(x, self.k)[0]

    def face_terms(self, x: np.ndarray) -> np.ndarray:
        return log_density(self.support(x), self.tau)[:, None]

    def digest(self) -> str:
        return self._digest

    def describe(self) -> str:
        return (f"IDA-R (k={self.k}, tau={self.tau:g}, {len(self.anchors)} anchors, "
                f"{self.index.kind})")


@register_calibrator("ida-l")
class IDAL(_IDA):
    """IDA-L: a small regressor predicts each face's density term (no anchors at run time)."""

    name = "ida-l"

    def __init__(self, checkpoint: str | Path | None = None, backbone: str | None = None
                 ) -> None:
        from facerank.calibrate.ssr import load_ssr

        self.model, self.config, self.path = load_ssr(checkpoint, backbone)
        self.tau = float(self.config["tau"])
        self.k = int(self.config["k"])
        self.model_id = str(self.config["backbone"])
        self.dim = int(self.config["dim"])

    @classmethod
    def from_model(cls, model: object, config: dict, path: str = "in-memory") -> IDAL:
        """An IDA-L around a freshly trained SSR (benchmarks; no file)."""
        self = cls.__new__(cls)
        self.model, self.config, self.path = model, config, Path(path)
        self.tau, self.k = float(config["tau"]), int(config["k"])
        self.model_id, self.dim = str(config["backbone"]), int(config["dim"])
        return self

    def face_terms(self, x: np.ndarray) -> np.ndarray:
        x = check_embeddings(x, "faces", self.dim)
        return (-self.tau * self.model.predict(x))[:, None]

    def digest(self) -> str:
        return f"ida-l-{self.config.get('digest', Path(self.path).stem)}"

    def describe(self) -> str:
        return f"IDA-L (k={self.k}, tau={self.tau:g}, {Path(self.path).name})"
