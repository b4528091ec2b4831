"""Calibrated gallery search: each enrolled face's terms are computed once and stored beside
the gallery, so a calibrated search costs one support-set lookup (or one IDA-L forward) for
the probe only.

The terms file `calib-<calibrator digest>-<row-set stamp>.npy` is keyed by the calibrator's
anchors/parameters and by the gallery's row set: adding, removing or re-extracting images
changes the stamp, so the terms are recomputed on the next calibrated search (and the stale
files of that calibrator removed; `reextract` removes all of them). A file that does not load
or has the wrong shape is recomputed, never trusted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from facerank.calibrate.anchors import AnchorSet
from facerank.calibrate.base import Calibrator
from facerank.ranking import Ranking


def _digest(cal: Calibrator) -> str:
    d = getattr(cal, "digest", None)
    return d() if callable(d) else cal.name


def gallery_terms(folder: Path, stamp: str, cal: Calibrator, embeddings: np.ndarray,
                  memo: dict[str, Any]) -> np.ndarray:
    """(N, T) terms of the gallery rows `embeddings` (memoised, then on disk, then computed)."""
    key = f"calib-{_digest(cal)}-{stamp}"
    if key in memo:
        return memo[key]
    path = Path(folder) / f"{key}.npy"
    terms = None
    if path.is_file():
        try:
            terms = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            terms = None
        if terms is not None and (terms.ndim != 2 or len(terms) != len(embeddings)):
            terms = None
    if terms is None:
        terms = cal.face_terms(embeddings) if len(embeddings) else np.zeros((0, 0))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, terms)
            os.replace(tmp, path)
            for p in Path(folder).glob(f"calib-{_digest(cal)}-*.npy"):
                if p != path:
                    p.unlink(missing_ok=True)
        except OSError:
            tmp.unlink(missing_ok=True)  # the terms are only a cache
    for old in [k for k in memo if not k.endswith(f"-{stamp}")]:
        del memo[old]  # terms of a previous row set
    memo[key] = terms
    return terms


def calibrate_ranking(cal: Calibrator, probes: np.ndarray, gallery: np.ndarray,
                      g_terms: np.ndarray, ranking: Ranking) -> Ranking:
    """Re-order each row's candidates by calibrated score (stored as stage "calibrated")."""
    return order_by(ranking, cal.score_matrix(probes, gallery, ranking.indices, g_terms=g_terms))


def order_by(ranking: Ranking, scores: np.ndarray) -> Ranking:
    """Re-order each row's candidates by `scores` (Q, K) (stored as stage "calibrated")."""
    scores = np.asarray(scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")
    return ranking.reorder(order, np.take_along_axis(scores, order, axis=1), "calibrated",
                           scores)


def cohort_ranking(cal: Calibrator, cohort: AnchorSet, probes: np.ndarray,
                   gallery: np.ndarray, labels: np.ndarray, ranking: Ranking) -> Ranking:
    """Re-order by `cal`'s score with the gallery's own identities as the cohort, each
    candidate's identity left out (`facerank.calibrate.cohort`)."""
    from facerank.calibrate.cohort import cohort_scores

    cand = ranking.indices
    opts = ({"k": cal.k, "tau": cal.tau} if cal.name == "ida-r"
            else {"top_n": getattr(cal, "top_n", 400)})
    return order_by(ranking, cohort_scores(cal.name, cohort, probes, gallery[cand],
                                           labels[cand], **opts))
