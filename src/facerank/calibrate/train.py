"""IDA-L training (`facerank train ida-l`): fit IDA-L's support-set regressor on one LFW
identity half.

The anchors are one seeded image per person of the training half; every training-half image
is a training face, its target the density term of its k nearest anchors of *other* people
(its own identity removed, as for a face the anchors have never seen). R^2 is reported on the
other half's faces against their IDA-R density term with the same anchors: how well the
regressor reproduces IDA-R on people it never saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facerank.calibrate.anchors import AnchorSet, SupportIndex, support_excluding_own
from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU, IDAL
from facerank.calibrate.ssr import KIND, r2, train_ssr


def density_targets(x: np.ndarray, labels: np.ndarray, anchors: AnchorSet, k: int,
                    tau: float) -> np.ndarray:
    """(N,) v = logsumexp(tau s) / tau over each face's k nearest other-identity anchors."""
    from scipy.special import logsumexp

    s = support_excluding_own(x, labels, anchors, k)
    return logsumexp(tau * s, axis=1) / tau


def fit_idal(anchors: AnchorSet, x: np.ndarray, labels: np.ndarray, k: int = DEFAULT_K,
             tau: float = DEFAULT_TAU, hidden: int = 256, epochs: int = 300, seed: int = 0,
             progress: bool = False) -> tuple[IDAL, dict[str, Any]]:
    """Train an SSR on faces x (N, D) with identity `labels` against `anchors`."""
    v = density_targets(x, labels, anchors, k, tau)
    model, losses = train_ssr(x, v, hidden=hidden, epochs=epochs, seed=seed, progress=progress)
    config = {"kind": KIND, "backbone": anchors.model_id, "dim": int(x.shape[1]),
              "hidden": hidden, "tau": tau, "k": k, "seed": seed, "epochs": epochs,
              "n_train_faces": len(x), "n_anchors": len(anchors),
              "r2_train": r2(model.predict(x), v), "final_loss": losses[-1]}
    return IDAL.from_model(model, config), config


def heldout_r2(cal: IDAL, anchors: AnchorSet, x: np.ndarray) -> float:
    """R^2 of IDA-L's v against IDA-R's (same anchors, k, tau) on faces disjoint from them."""
    from scipy.special import logsumexp

    s = SupportIndex(anchors).search(x, cal.k)[0]
    return r2(cal.model.predict(x), logsumexp(cal.tau * s, axis=1) / cal.tau)
