"""Adaptive symmetric score normalisation (AS-norm), the verification baseline IDA must beat.

Each face's cohort is its top-N most similar anchors; with their cosine mean mu and standard
deviation sigma, s' = ((s - mu_a) / sigma_a + (s - mu_b) / sigma_b) / 2 (Matejka et al.,
Interspeech 2017, "adaptive S-norm"). The same anchors and faiss search as IDA-R, so the two
differ only in how the neighbourhood enters the score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerank.calibrate.anchors import AnchorSet, SupportIndex
from facerank.calibrate.base import Calibrator, register_calibrator
from facerank.errors import InputError

DEFAULT_TOP_N = 400  # the choice on identity half A (benchmarks.calibrate accuracy)


@register_calibrator("asnorm")
class ASNorm(Calibrator):
    """face terms (N, 2): cohort mean and std of the top-N anchor cosines."""

    name = "asnorm"

    def __init__(self, anchors: AnchorSet | str | Path | None = None,
                 top_n: int = DEFAULT_TOP_N, hnsw_above: int | None = None) -> None:
        self.anchors = (AnchorSet.default() if anchors is None else anchors
                        if isinstance(anchors, AnchorSet) else AnchorSet.load(anchors))
        self.top_n = int(top_n)
        if not 2 <= self.top_n <= len(self.anchors):
            raise InputError(f"AS-norm cohort size {self.top_n} must be between 2 and the "
                             f"number of anchors ({len(self.anchors)})")
        self.model_id = self.anchors.model_id
        kw = {} if hnsw_above is None else {"hnsw_above": hnsw_above}
        self.index = SupportIndex(self.anchors, **kw)
        self._digest = f"asnorm-{self.anchors.digest()}-n{self.top_n}"

    def face_terms(self, x: np.ndarray) -> np.ndarray:
        sims = self.index.search(x, self.top_n)[0]
        return np.stack([sims.mean(axis=1), np.maximum(sims.std(axis=1), 1e-6)], axis=1)

    def combine(self, cos: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
        cos = np.asarray(cos, np.float64)
        return 0.5 * ((cos - ta[..., 0]) / ta[..., 1] + (cos - tb[..., 0]) / tb[..., 1])

    def digest(self) -> str:
        return self._digest

    def describe(self) -> str:
        return f"AS-norm (top {self.top_n} of {len(self.anchors)} anchors)"
