"""A calibrated match probability for clustering: a logistic map of the pair score.

`fit_logistic(scores, same)` returns `prob(scores) -> probabilities`, monotone in the score.
Any callable with that signature can replace it (e.g. a shared calibrator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerank.calibrate.probability import logistic_fit
from facerank.errors import InputError


@dataclass(frozen=True)
class LogisticProb:
    """p = 1 / (1 + exp(-(a * score + b))), a > 0."""

    a: float
    b: float

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        z = self.a * np.asarray(scores, np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def score_at(self, p: float) -> float:
        """The score where the probability equals p."""
        return float((np.log(p / (1 - p)) - self.b) / self.a)

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b}


def fit_logistic(scores: np.ndarray, same: np.ndarray) -> LogisticProb:
    """Maximum-likelihood logistic fit of same (N,) bool on scores (N,), unweighted
    (`facerank.calibrate.probability.logistic_fit`)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(same, np.float64)
    if s.ndim != 1 or s.shape != y.shape or len(s) < 2 or y.min() == y.max():
        raise InputError("the probability fit needs (N,) scores with both same and different "
                         "pairs")
    a, b, _, _ = logistic_fit(s, y, np.ones_like(s))
    return LogisticProb(a, b)
