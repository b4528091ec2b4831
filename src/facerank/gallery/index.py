"""Stage-1 vector indexes behind a gallery: one small interface, two engines.

    VectorIndex.search(queries (Q, D) unit vectors, k) -> (scores (Q, k), image ids (Q, k))
    .sync(snapshot)  bring the index in step with the store's rows (after any change)
    .count()         vectors the index holds
    .describe()      one line for the UI

`FaissIndex` (the default) is derived from the store: rebuilt in memory from the rows of the
current snapshot whenever the row set changes (flat: exact; hnsw: approximate, persisted next
to the store by row-set stamp). `facerank.gallery.milvus.MilvusIndex` is a replica kept in a
Milvus collection (milvus-lite file or a server), synchronised through the store's journal.
Both return gallery image ids, so Stage 2, calibration and the web page do not care which
engine found the candidates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from facerank.errors import InputError
from facerank.face.features import l2_normalize
from facerank.gallery.store import FeatureStore, Snapshot

__all__ = ["INDEX_KINDS", "FaissIndex", "VectorIndex", "open_index"]


FaissKind = Literal["flat", "hnsw"]
INDEX_KINDS = ("flat", "hnsw", "milvus")


class VectorIndex(Protocol):
    """What a gallery needs from a Stage-1 engine."""

    kind: str

    def sync(self, snapshot: Snapshot) -> None:
        """Make the index hold exactly the snapshot's rows (cheap when nothing changed)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) float32 unit vectors -> scores (Q, k) float32 (inner product) and
        image ids (Q, k) int64, best first; -1 where fewer than k were found."""
        ...

    def count(self) -> int:
        ...

    def describe(self) -> str:
        ...

    def close(self) -> None:
        ...


class FaissIndex:
    """faiss over the snapshot's rows: `IndexFlatIP` (exact) or `IndexHNSWFlat` (approximate)."""

    def __init__(self, store: FeatureStore, kind: FaissKind = "flat") -> None:
        if kind not in ("flat", "hnsw"):
            raise InputError(f"unknown faiss index {kind!r}; use flat or hnsw")
        self.kind = kind
        self._store = store
        self._built: tuple[str, Any, np.ndarray] | None = None  # (stamp, index, image ids)

    def sync(self, snapshot: Snapshot) -> None:
        if self._built is not None and self._built[0] == snapshot.stamp:
            return
        import faiss

        emb = np.ascontiguousarray(l2_normalize(
            snapshot.features.descriptors.astype(np.float32)))
        d = emb.shape[1]
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
            index.add(emb)
        else:
            path = self._store.folder / f"index-hnsw-{snapshot.stamp}.faiss"
            index = None
            if path.is_file():
                try:
                    index = faiss.read_index(str(path))
                except RuntimeError:
                    index = None
            if index is None or index.ntotal != len(emb):
                index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = 80
                index.add(emb)
                self._save(index, path)
        self._built = (snapshot.stamp, index, snapshot.image_ids.copy())

    def _save(self, index: Any, path: Path) -> None:
        import faiss

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)
            for p in self._store.folder.glob("index-hnsw-*.faiss"):
                if p != path:
                    p.unlink(missing_ok=True)
        except (OSError, RuntimeError):
            tmp.unlink(missing_ok=True)  # the index is only a cache

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._built is not None, "sync() first"
        _, index, ids = self._built
        if self.kind == "hnsw":
            index.hnsw.efSearch = max(64, 2 * k)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with _threads_for(q.shape[0] * int(index.ntotal) * q.shape[1]):
            scores, rows = index.search(q, k)
        return scores.astype(np.float32), np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)

    def count(self) -> int:
        return 0 if self._built is None else int(self._built[1].ntotal)

    def describe(self) -> str:
        return f"faiss {self.kind}"

    def close(self) -> None:
        self._built = None


def open_index(store: FeatureStore, kind: str, meta: dict[str, str]) -> VectorIndex:
    """The index a gallery was created with (`meta['index']`), or faiss `kind` for a faiss one.

    A faiss gallery can be searched flat or hnsw (the choice is per process); a Milvus gallery
    always searches its collection."""
    if meta.get("index", "faiss") == "milvus":
        from facerank.gallery.milvus import MilvusIndex

        return MilvusIndex.from_meta(store, meta)
    if kind == "milvus":
        raise InputError(f"gallery {store.folder} keeps its vectors in faiss; a Milvus gallery "
                         "is made with `facerank gallery create DIR --index milvus`")
    return FaissIndex(store, kind)  # type: ignore[arg-type]


SMALL_SEARCH_MACS = 50_000_000  # below this (~ a few ms on one core), faiss runs on one thread


@contextmanager
def _threads_for(macs: int) -> Iterator[None]:
    """One OpenMP thread for a small search (one probe against a gallery of ~100k faces or
    fewer): faiss's thread team costs more than it saves there, and far more on a busy machine
    (measured: 0.33 ms on one thread vs 32 ms on two for one probe against 13k faces, at load
    8 on 2 cores). Larger searches keep faiss's own thread count. Results are identical."""
    import faiss

    if macs > SMALL_SEARCH_MACS:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
