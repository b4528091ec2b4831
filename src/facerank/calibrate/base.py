"""What every score calibrator provides, and the registry `--calibrate NAME` reads.

A calibrator turns the cosine of two faces into a calibrated score using one small vector of
statistics per face (`face_terms`): IDA's log density term, AS-norm's cohort mean and std.
The per-face terms depend only on that face and the anchors, so a gallery computes them once
per enrolled face and a search pays for the probe's terms only; `combine` is elementwise, so
pairs, (Q, K) candidate matrices and whole galleries are scored by the same vectorised code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facerank._util.registry import Registry
from facerank.errors import InputError

__all__ = ["Calibrator", "calibrator_names", "check_embeddings", "make_calibrator",
           "register_calibrator"]


def check_embeddings(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """x (N, D) finite float embeddings, as float32; a one-line InputError otherwise."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{what}: expected (N, D) embeddings, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{what}: embeddings of dimension {x.shape[1]}, but the calibrator's "
                         f"anchors have dimension {dim}; use anchors made with the same model")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise InputError(f"{what}: {bad} embedding(s) contain NaN or inf; re-extract them")
    return np.ascontiguousarray(x, dtype=np.float32)


class Calibrator:
    """Base class: per-face terms (N, T) and an elementwise `combine` of cosine and terms."""

    name = "none"
    model_id: str | None = None  # the feature model the anchors / regressor were made with

    def face_terms(self, x: np.ndarray) -> np.ndarray:
        """x (N, D) L2-normalised embeddings -> (N, T) float64 per-face statistics."""
        check_embeddings(x, "faces")
        return np.zeros((len(x), 0))

    def combine(self, cos: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
        """cos (...), ta (..., T), tb (..., T) -> calibrated score (...)."""
        return np.asarray(cos, dtype=np.float64)

    def check_model(self, model_id: str) -> None:
        """Refuse features of another model than the anchors / regressor were made with."""
        if self.model_id is not None and model_id != self.model_id:
            raise InputError(f"calibrator {self.name!r} was made with features of "
                             f"{self.model_id!r}, but the faces come from {model_id!r}; build "
                             "anchors (or train IDA-L) with this model")

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a (P, D), b (P, D) -> (P,) calibrated score of each pair (a[i], b[i])."""
        if np.shape(a) != np.shape(b):
            raise InputError(f"pair embeddings {np.shape(a)} and {np.shape(b)} differ in shape")
        cos = np.einsum("pd,pd->p", np.asarray(a, np.float64), np.asarray(b, np.float64))
        return self.combine(cos, self.face_terms(a), self.face_terms(b))

    def score_matrix(self, q: np.ndarray, g: np.ndarray, candidates: np.ndarray | None = None,
                     q_terms: np.ndarray | None = None, g_terms: np.ndarray | None = None
                     ) -> np.ndarray:
        """Calibrated scores of Q queries against K candidates each -> (Q, K).

        q (Q, D); either g (Q, K, D) the candidates themselves, or g (G, D) a gallery and
        candidates (Q, K) row indices into it. g_terms: the gallery's precomputed terms
        ((G, T), or (Q, K, T) with a 3-D g) so only the queries' terms are computed.
        """
        q = np.asarray(q)
        tq = self.face_terms(q) if q_terms is None else q_terms
        if candidates is None:
            if g.ndim != 3 or g.shape[0] != len(q):
                raise InputError(f"candidates {g.shape} must be (Q, K, D) for {len(q)} queries")
            cos = np.einsum("qd,qkd->qk", q, g)
            tg = (self.face_terms(g.reshape(-1, g.shape[2])).reshape(*g.shape[:2], -1)
                  if g_terms is None else g_terms)
        else:
            if candidates.ndim != 2 or candidates.shape[0] != len(q):
                raise InputError(f"candidate indices {candidates.shape} must be (Q, K) for "
                                 f"{len(q)} queries")
            cos = np.einsum("qd,qkd->qk", q, g[candidates])
            if g_terms is None:
                rows, inv = np.unique(candidates, return_inverse=True)
                tg = self.face_terms(g[rows])[inv.reshape(candidates.shape)]
            else:
                tg = g_terms[candidates]
        return self.combine(cos, tq[:, None, :], tg)

    def describe(self) -> str:
        return "cosine (no calibration)"


def register_calibrator(name: str) -> Callable[[Callable[..., Calibrator]],
                                               Callable[..., Calibrator]]:
    """Decorator: make a calibrator factory available under `name`."""
    return _CALIBRATORS.register(name)


def calibrator_names() -> list[str]:
    """Registered calibrators, plus "none"."""
    return _CALIBRATORS.names()


def make_calibrator(name: str, **options: object) -> Calibrator | None:
    """Build a registered calibrator ("none" -> None); unknown options are an InputError."""
    return _CALIBRATORS.make(name, **options)


def _load_builtin() -> None:
    import facerank.calibrate.asnorm  # noqa: F401 - registers "asnorm"
    import facerank.calibrate.ida  # noqa: F401 - registers "ida-r", "ida-l"


_CALIBRATORS: Registry[Calibrator] = Registry("calibration", _load_builtin)
