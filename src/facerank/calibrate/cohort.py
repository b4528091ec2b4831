"""Cohorts from the user's own data: anchors = the gallery's enrolled identities.

A cohort holds one embedding per identity (the L2-normalised mean of that identity's
faces). Scoring a probe against a candidate leaves the candidate's identity out of both
faces' neighbourhoods: the gallery face's support never contains its own identity
(`support_excluding_own`), and the probe's support is its nearest cohort identities other
than the candidate's. Below `MIN_IDENTITIES` identities the cohort is too small to describe a
neighbourhood and the bundled LFW anchors are used instead (`choose_cohort` says which).

Anchor files from any folder of identity folders: `facerank calibrate anchors FOLDER`.
"""

from __future__ import annotations

import numpy as np

from facerank.calibrate.anchors import AnchorSet, support_excluding_own
from facerank.calibrate.asnorm import DEFAULT_TOP_N
from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU, log_density
from facerank.errors import InputError

MIN_IDENTITIES = 200
"""Below this many identities a gallery uses the bundled LFW anchors: on LFW's open set (dlib,
one image per enrolled person) the gallery's own cohort lost 9.1 / 0.8 TPIR@FPIR 1 % points
to cosine with 50 / 100 people enrolled and gained 0.2 / 10.6 with 200 / 400
(`python -m benchmarks.probability --openset-only`, docs/results.md)."""


AUTO_MIN_IDENTITIES = 400
"""`--calibrate auto` uses the gallery's own cohort (dlib) from this many identities and
abstains (cosine) below: photo-level probes (occluders, low light, low resolution drawn before
detection; dlib, TPIR@FPIR 1 % on LFW's open set) lost up to 6.1 points to cosine with 200
people enrolled and 3.3 with 300, and at most 1-2 probes (0.25 points) with all 419-421
people of an identity half (`python -m benchmarks.probability --photo-openset`,
docs/results.md)."""


def minimum_identities(auto: bool) -> int:
    """The identities a gallery needs for its own cohort: `AUTO_MIN_IDENTITIES` for
    `--calibrate auto`, `MIN_IDENTITIES` for a calibrator the user named."""
    return AUTO_MIN_IDENTITIES if auto else MIN_IDENTITIES


def identity_cohort(embeddings: np.ndarray, labels: np.ndarray, model_id: str,
                    **meta: object) -> AnchorSet:
    """One anchor per identity: the normalised mean of its (N, D) embeddings -> AnchorSet."""
    labels = np.asarray(labels).astype(str)
    names, inv = np.unique(labels, return_inverse=True)
    x = np.asarray(embeddings, np.float64)
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, inv, x)
    return AnchorSet(sums.astype(np.float32), model_id, names,
                     {"source": "identity means", **meta})


def check_anchor_file(anchors: AnchorSet, model_id: str | None = None,
                      dim: int | None = None) -> AnchorSet:
    """Refuse anchors of another model, of fewer than 2 identities, or of the wrong size."""
    if model_id is not None and anchors.model_id != model_id:
        raise InputError(f"anchors were made with {anchors.model_id!r} features, not "
                         f"{model_id!r}; build them with the same --backbone")
    n_ids = len(np.unique(anchors.labels)) if len(anchors.labels) else len(anchors)
    if n_ids < 2:
        raise InputError(f"anchors hold {n_ids} identity; a cohort needs at least 2")
    if dim is not None and anchors.dim != dim:
        raise InputError(f"anchors have dimension {anchors.dim}, the faces {dim}; use "
                         "anchors made with the same backbone")
    return anchors


def _probe_support(sims: np.ndarray, cohort_labels: np.ndarray, cand_labels: np.ndarray,
                   k: int) -> np.ndarray:
    """sims (Q, A) probe-cohort cosines, cand_labels (Q, K) -> (Q, K, k) top-k cosines of
    each probe to cohort anchors of identities other than the candidate's."""
    if k + 1 > sims.shape[1]:
        raise InputError(f"the cohort has {sims.shape[1]} identities; leaving one out needs "
                         f"more than k={k}")
    part = np.argpartition(-sims, k, axis=1)[:, : k + 1]  # (Q, k+1) unsorted
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    top = np.take_along_axis(part, order, axis=1)  # (Q, k+1) descending
    top_s = np.take_along_axis(sims, top, axis=1)
    own = cohort_labels[top][:, None, :] == np.asarray(cand_labels)[:, :, None]  # (Q,K,k+1)
    # drop the candidate's anchor if among the top k+1, else the (k+1)-th
    drop = np.where(own.any(axis=2), own.argmax(axis=2), k)  # (Q, K)
    keep = np.arange(k + 1)[None, None, :] != drop[:, :, None]
    vals = np.broadcast_to(top_s[:, None, :], keep.shape)[keep]
    return vals.reshape(*cand_labels.shape, k)


def cohort_scores(method: str, cohort: AnchorSet, q: np.ndarray, g: np.ndarray,
                  g_labels: np.ndarray, k: int = DEFAULT_K, tau: float = DEFAULT_TAU,
                  top_n: int = DEFAULT_TOP_N, probe: str = "candidate") -> np.ndarray:
    """Calibrated scores of Q probes against K candidates each, candidate identity left out.

    q (Q, D) probes; g (Q, K, D) candidates; g_labels (Q, K) their identities. method: ida-r
    or asnorm (same formulas as `IDAR` / `ASNorm`) -> (Q, K) float64.
    probe: whose identity leaves the probe's support: "candidate" (each candidate's, so
    the probe's support differs per candidate) or "nearest" (the probe's nearest cohort
    identity, one support per probe: every candidate of a probe, mated or not, is treated
    alike).
    """
    if method not in ("ida-r", "asnorm"):
        raise InputError(f"a gallery cohort serves ida-r and asnorm, not {method!r}")
    q = np.asarray(q, np.float32)
    qk, kk, d = g.shape
    n = k if method == "ida-r" else min(top_n, len(cohort) - 1)
    cos = np.einsum("qd,qkd->qk", q.astype(np.float64), g.astype(np.float64))
    labels = np.asarray(cohort.labels).astype(str)
    gl = np.asarray(g_labels).astype(str)
    sg = support_excluding_own(g.reshape(-1, d), gl.reshape(-1), cohort, n).reshape(qk, kk, n)
    sims = q @ cohort.embeddings.T
    if probe == "nearest":
        near = labels[sims.argmax(axis=1)]  # (Q,)
        sq = _probe_support(sims, labels, np.broadcast_to(near[:, None], gl.shape), n)
    elif probe == "candidate":
        sq = _probe_support(sims, labels, gl, n)
    else:
        raise InputError(f"probe support {probe!r}: use candidate or nearest")
    if method == "ida-r":
        ug, uq = log_density(sg.reshape(-1, n), tau), log_density(sq.reshape(-1, n), tau)
        return (tau * cos + np.logaddexp(uq, ug).reshape(qk, kk) + np.log(k / 2.0)) / tau
    mg, dg = sg.mean(axis=2), np.maximum(sg.std(axis=2), 1e-6)
    mq, dq = sq.mean(axis=2), np.maximum(sq.std(axis=2), 1e-6)
    return 0.5 * ((cos - mq) / dq + (cos - mg) / dg)


def choose_cohort(n_identities: int, minimum: int | None = None) -> str:
    """"gallery" when the gallery has enough identities for its own cohort (`minimum`,
    default `MIN_IDENTITIES`), else "lfw"."""
    return "gallery" if n_identities >= (MIN_IDENTITIES if minimum is None else minimum) \
        else "lfw"
