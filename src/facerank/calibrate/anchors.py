"""Anchor embedding sets ("real-db" in the IDA paper) and support-set search over them.

An anchor set is a sample of the feature model's embedding distribution made of faces whose
identities are disjoint from the faces being compared; each face's support set is its k
nearest anchors. Search is exact (faiss `IndexFlatIP`) up to `HNSW_ABOVE` anchors and HNSW
beyond, where an exact scan would dominate the cost (the paper's anchor sets stay <= 100k).
An anchor file is an `.npz` with `embeddings` (A, D), `labels` (A,) and a JSON `meta` that
records the feature model id, so anchors of another model are refused before they are used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from facerank.calibrate.base import check_embeddings
from facerank.errors import InputError, ModelFileError

HNSW_ABOVE = 100_000
SMALL_BATCH = 16  # up to this many faces, exact search is a numpy matmul (see search)
DEFAULT_ANCHORS = {"dlib": "lfw-halfA-anchors.npz", "sface": "lfw-halfA-anchors-sface.npz"}
"""Bundled anchors per backbone; each `.npz` has a `.json` beside it with the command that
made it (`facerank train ida-l --backbone B --save-anchors ...`)."""


@dataclass
class AnchorSet:
    """embeddings (A, D) L2-normalised; labels (A,) identity of each anchor (may be empty)."""

    embeddings: np.ndarray
    model_id: str
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if np.asarray(self.embeddings).ndim != 2 or len(self.embeddings) == 0:
            raise InputError(f"the anchor set is empty (shape {np.shape(self.embeddings)}); "
                             "give at least k anchor faces of identities not being compared")
        self.embeddings = check_embeddings(self.embeddings, "anchors")
        norms = np.linalg.norm(self.embeddings, axis=1)
        if (norms < 1e-6).any():
            raise InputError("anchors: zero-length embedding(s); re-extract them")
        self.embeddings /= norms[:, None]

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha1(self.model_id.encode())
        h.update(np.ascontiguousarray(self.embeddings, dtype=np.float16).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        meta = {**self.meta, "model_id": self.model_id, "n": len(self), "dim": self.dim}
        np.savez(Path(path), embeddings=self.embeddings.astype(np.float16),
                 labels=np.asarray(self.labels, dtype=str), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> AnchorSet:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                emb = z["embeddings"].astype(np.float32)
                labels = z["labels"]
                meta = json.loads(str(z["meta"]))
        except FileNotFoundError:
            raise ModelFileError(f"{p}: anchor file not found") from None
        except Exception as e:  # noqa: BLE001 - zip/npz/json raise many types
            raise ModelFileError(f"{p}: not a readable anchor file ({type(e).__name__}); make "
                                 "one with facerank.calibrate.anchors.AnchorSet.save") from None
        if "model_id" not in meta:
            raise ModelFileError(f"{p}: anchor file records no model_id; rebuild it")
        return cls(emb, str(meta["model_id"]), labels, meta)

    @classmethod
    def default(cls, backbone: str = "dlib") -> AnchorSet:
        """The bundled anchors of `backbone` (dlib or sface): one embedding per person of LFW
        identity half A (`identity_fold` True)."""
        if backbone not in DEFAULT_ANCHORS:
            raise InputError(f"no bundled anchors for backbone {backbone!r}; choose "
                             f"{', '.join(DEFAULT_ANCHORS)} or pass --calibrate-with")
        with resources.as_file(resources.files("facerank.calibrate") / "defaults"
                               / DEFAULT_ANCHORS[backbone]) as p:
            return cls.load(p)


class SupportIndex:
    """k-nearest-anchor search: exact inner product, HNSW above `hnsw_above` anchors."""

    def __init__(self, anchors: AnchorSet, hnsw_above: int = HNSW_ABOVE) -> None:
        import faiss

        self.anchors = anchors
        d = anchors.dim
        if len(anchors) > hnsw_above:
            self.index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 200
            self.kind = "hnsw"
        else:
            self.index = faiss.IndexFlatIP(d)
            self.kind = "flat"
        self.index.add(anchors.embeddings)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """x (N, D) -> (similarities (N, k) descending, anchor indices (N, k))."""
        if k < 1 or k > len(self.anchors):
            raise InputError(f"support set size k={k} must be between 1 and the number of "
                             f"anchors ({len(self.anchors)}); lower k or add anchors")
        x = check_embeddings(x, "faces", self.anchors.dim)
        if self.kind == "flat" and len(x) <= SMALL_BATCH:
            # a search's few probes: one small matmul; faiss's threaded scan costs ~40 ms per
            # call on a busy 2-core machine (measured), this ~0.1 ms
            sims = x @ self.anchors.embeddings.T  # (N, A)
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
            idx = np.take_along_axis(part, order, axis=1)
            return np.take_along_axis(sims, idx, axis=1).astype(np.float64), idx
        if self.kind == "hnsw":
            # ef 64 gave identical k=10 sets for only 65 % of faces in the test; 256: 100 %
            self.index.hnsw.efSearch = max(256, 16 * k)
        sims, idx = self.index.search(x, k)
        if (idx < 0).any():  # HNSW can return fewer than k: answer those rows exactly
            bad = (idx < 0).any(axis=1)
            full = x[bad] @ self.anchors.embeddings.T
            order = np.argsort(-full, axis=1)[:, :k]
            idx[bad] = order
            sims[bad] = np.take_along_axis(full, order, axis=1)
        return sims.astype(np.float64), idx


def support_excluding_own(x: np.ndarray, x_labels: np.ndarray, anchors: AnchorSet, k: int,
                          chunk: int = 2048) -> np.ndarray:
    """(N, k) similarities of each face to its k nearest anchors of *another* identity.

    For faces drawn from the anchor set itself (IDA-L's training targets), where the nearest
    anchors would otherwise be the face and its own identity's other images.
    """
    if k < 1 or k > len(anchors):
        raise InputError(f"support set size k={k} must be between 1 and the number of "
                         f"anchors ({len(anchors)})")
    x = check_embeddings(x, "faces", anchors.dim)
    out = np.empty((len(x), k))
    for s in range(0, len(x), chunk):
        sim = x[s : s + chunk] @ anchors.embeddings.T  # (c, A)
        sim[x_labels[s : s + chunk, None] == anchors.labels[None, :]] = -np.inf
        part = -np.partition(-sim, k - 1, axis=1)[:, :k]
        out[s : s + chunk] = -np.sort(-part, axis=1)
    if not np.isfinite(out).all():
        raise InputError(f"fewer than k={k} anchors of other identities for some faces")
    return out
