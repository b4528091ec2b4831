"""Milvus as a gallery's Stage-1 engine: embeddings in a Milvus collection, everything else
(identities, paths, patch grids, landmarks) in the gallery's feature store.

    URI                      engine
    /path/faces.db           milvus-lite, embedded in this process (tests, one machine)
    http://host:19530        a Milvus standalone server or cluster (many machines)

The collection holds (image id INT64 primary key, unit vector FLOAT_VECTOR), metric IP, so its
scores are the same cosines faiss gives. It is a replica of the store, never the source of
truth: every change of the store's rows writes journal rows in the same SQLite transaction
(an outbox), and `sync` replays the journal into Milvus (upsert and delete are idempotent)
before each search and on open, then clears it. So a process killed between the SQLite
commit and the Milvus write leaves journal rows that the next open applies; Milvus is written
only after a commit, so it never holds an image the store does not know. Renames touch only
the store. Requires the `scale` extra: `pip install 'facerank[scale]'`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from facerank.errors import GalleryError, InputError
from facerank.face.features import l2_normalize
from facerank.gallery.store import FeatureStore, Snapshot

__all__ = ["DEFAULT_COLLECTION", "MilvusIndex", "connect", "disconnect", "normalise_uri",
           "scale_extra_missing"]

log = logging.getLogger(__name__)


DEFAULT_COLLECTION = "facerank_faces"
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix://")


def scale_extra_missing(what: str, e: ImportError) -> InputError:
    return InputError(f"{what} needs the optional engines: pip install 'facerank[scale]' "
                      f"({e.name or e} is not installed)")


def normalise_uri(uri: str) -> str:
    """A server URI as given; a milvus-lite file made absolute (it must end in `.db`)."""
    uri = uri.strip()
    if not uri:
        raise InputError("--milvus-uri is empty; give a file like gallery/faces.db (milvus-lite) "
                         "or http://host:19530 (a Milvus server)")
    if uri.startswith(_SERVER_SCHEMES):
        return uri
    if "://" in uri:
        raise InputError(f"--milvus-uri {uri!r}: unknown scheme; use a local .db file "
                         "(milvus-lite) or http://host:19530")
    path = Path(uri).expanduser().absolute()
    if path.suffix != ".db":
        raise InputError(f"--milvus-uri {uri!r}: a milvus-lite file must end in .db "
                         "(e.g. faces.db)")
    if not path.parent.is_dir():
        raise InputError(f"--milvus-uri {uri!r}: folder {path.parent} does not exist")
    return str(path)


def _is_lite(uri: str) -> bool:
    return not uri.startswith(_SERVER_SCHEMES)


def connect(uri: str) -> Any:
    """A `pymilvus.MilvusClient`, or one GalleryError line naming the URI."""
    # gRPC's C core prints keep-alive chatter (GOAWAY "too_many_pings" from milvus-lite's
    # server) to stderr; errors that matter reach us as exceptions, so keep the CLI clean
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise scale_extra_missing("a Milvus gallery", e) from None
    # milvus-lite logs a traceback of its own when it cannot open a file; our one line says it
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri, timeout=10)
    except Exception as e:  # noqa: BLE001 - pymilvus raises several types for one failure
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if _is_lite(uri):
            raise GalleryError(f"cannot open milvus-lite file {uri} ({msg}): it serves one "
                               "process at a time, so close the other facerank process using "
                               "this gallery (or use a Milvus server)") from None
        raise GalleryError(f"cannot reach Milvus at {uri} ({msg}); start the server or fix "
                           "--milvus-uri") from None


def disconnect(client: Any, uri: str) -> None:
    """Close the client; for milvus-lite also stop its in-process server, releasing the file
    lock so another process can open the gallery."""
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a dead connection is not an error
        pass
    if _is_lite(uri):
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:
            return
        server_manager_instance.release_server(uri)


class MilvusIndex:
    """A gallery's vectors in one Milvus collection, kept in step with the store's journal.
    Reads use Strong consistency: a Milvus server's default (Bounded) can miss faces added a
    moment before (measured: a search right after `add` saw none of 32 new faces)."""

    kind = "milvus"

    def __init__(self, store: FeatureStore, uri: str, collection: str) -> None:
        self._store = store
        self.uri = uri
        self.collection = collection
        self._client = connect(uri)
        try:
            present = self._client.has_collection(collection)
            if present:
                self._client.load_collection(collection)  # a reopened collection is released
        except Exception as e:  # noqa: BLE001
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if not _is_lite(uri):  # a server's trouble may pass; never drop its data
                self.close()
                raise GalleryError(f"Milvus at {uri}: cannot load collection {collection!r} "
                                   f"({why}); check the server, then reopen") from None
            present = False
            self._drop_unreadable(why)
        if not present and self._store.journal_enabled and len(self._store):
            # the collection is a replica: lost or unreadable, it is refilled from the store
            # by the next sync (upserts are idempotent, so rows already queued do no harm)
            n = self._store.journal_all()
            log.warning("Milvus collection %r at %s is missing; refilling it with the "
                        "gallery's %d stored faces", collection, uri, n)

    def _drop_unreadable(self, why: str) -> None:
        """Drop a milvus-lite collection that cannot be read (a process killed inside
        milvus-lite's own write can leave a truncated segment file)."""
        log.warning("milvus-lite collection %r at %s cannot be read (%s); dropping it to "
                    "rebuild it from the gallery", self.collection, self.uri, why)
        try:
            self._client.drop_collection(self.collection)
        except Exception as e:  # noqa: BLE001
            self.close()
            raise GalleryError(
                f"milvus-lite collection {self.collection!r} in {self.uri} cannot be read "
                f"({why}) nor dropped ({str(e).splitlines()[0][:120]}); delete "
                f"{Path(self.uri) / 'collections' / self.collection} and reopen the gallery, "
                "which rebuilds it from its stored faces") from None

    @classmethod
    def from_meta(cls, store: FeatureStore, meta: dict[str, str]) -> MilvusIndex:
        return cls(store, meta["milvus_uri"], meta.get("milvus_collection", DEFAULT_COLLECTION))

    @staticmethod
    def create_meta(uri: str, collection: str = DEFAULT_COLLECTION) -> dict[str, str]:
        """The store metadata of a new Milvus gallery (checks the URI and connects once)."""
        uri = normalise_uri(uri)
        client = connect(uri)
        try:
            if client.has_collection(collection):
                raise GalleryError(f"Milvus at {uri} already has a collection {collection!r}; "
                                   "use another --milvus-collection or drop it")
        finally:
            disconnect(client, uri)
        return {"index": "milvus", "milvus_uri": uri, "milvus_collection": collection}

    def _ensure_collection(self, dim: int) -> None:
        if self._client.has_collection(self.collection):
            return
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self._client.create_collection(self.collection, schema=schema, index_params=params,
                                       consistency_level="Strong")

    def sync(self, snapshot: Snapshot | None = None) -> None:
        """Apply the store's journal to the collection, then clear it (idempotent)."""
        pending = self._store.pending()
        if not pending:
            return
        last: dict[int, str] = {}
        for _, image_id, op in pending:  # the last operation on an image wins
            last[image_id] = op
        ups = [i for i, op in last.items() if op == "upsert"]
        dels = [i for i, op in last.items() if op == "delete"]
        try:
            for s in range(0, len(ups), 2048):
                ids, desc = self._store.descriptors_of(ups[s : s + 2048])
                gone = sorted(set(ups[s : s + 2048]) - set(ids.tolist()))
                dels += gone  # removed again before this sync
                if len(ids):
                    self._ensure_collection(desc.shape[1])
                    emb = l2_normalize(desc.astype(np.float32))
                    self._client.upsert(self.collection, [
                        {"id": int(i), "vector": v} for i, v in zip(ids, emb, strict=True)])
            if dels and self._client.has_collection(self.collection):
                self._client.delete(self.collection, ids=[int(i) for i in dels])
            if _is_lite(self.uri) and self._client.has_collection(self.collection):
                # milvus-lite searches a sealed segment ~25x faster than a growing one
                # (13k faces: 110 vs 2,900 ms per query, measured); a server seals by itself
                self._client.flush(self.collection)
        except GalleryError:
            raise
        except Exception as e:  # noqa: BLE001 - network / server errors
            raise GalleryError(f"Milvus at {self.uri}: could not apply {len(pending)} pending "
                               f"change(s) ({str(e).splitlines()[0][:200]}); they stay queued "
                               "and are retried on the next open or search") from None
        self._store.clear_journal(pending[-1][0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if not len(q) or not self._client.has_collection(self.collection):
            return scores, ids
        try:
            hits = self._client.search(self.collection, data=[v.tolist() for v in q], limit=k,
                                       search_params={"metric_type": "IP"},
                                       output_fields=["id"], consistency_level="Strong")
        except Exception as e:  # noqa: BLE001
            raise GalleryError(f"Milvus search at {self.uri} failed "
                               f"({str(e).splitlines()[0][:200]})") from None
        for i, row in enumerate(hits):
            for j, h in enumerate(row[:k]):
                ids[i, j] = int(h["id"])
                scores[i, j] = float(h["distance"])
        return scores, ids

    def ids(self) -> np.ndarray:
        """Every image id in the collection (for consistency checks)."""
        if not self._client.has_collection(self.collection):
            return np.zeros(0, dtype=np.int64)
        out: list[int] = []
        it = self._client.query_iterator(self.collection, filter="id >= 0",
                                         output_fields=["id"], batch_size=4096,
                                         consistency_level="Strong")
        while True:
            batch = it.next()
            if not batch:
                it.close()
                break
            out += [int(r["id"]) for r in batch]
        return np.array(sorted(out), dtype=np.int64)

    def count(self) -> int:
        return len(self.ids())

    def describe(self) -> str:
        return f"milvus {self.collection} at {self.uri}"

    def close(self) -> None:
        disconnect(self._client, self.uri)
