"""The gallery's feature store: SQLite metadata + immutable array shards, crash-safe.

Layout of a gallery folder:

    gallery.db                 SQLite (WAL): identities, images, shards, meta, index journal
    arrays/shard-000001.npz    per-batch arrays (descriptors float32, grids float16, landmarks,
                               chip sharpness; absent in older shards: read as unknown)
    index-hnsw-<stamp>.faiss   optional persisted HNSW index (the flat index lives in memory)
    cohort-<digest>.npz        the identity cohort of the rows with that digest (`cohort.py`)

Crash safety. Every batch of images becomes one new shard file, never modified afterwards:

    1. extract features (no lock held);
    2. BEGIN IMMEDIATE (the one write lock), reserve a shard id by inserting its `shards` row;
    3. write the shard to a temp name, fsync, rename to `shard-<id>.npz`, fsync the folder;
    4. insert the batch's `images` rows (shard id + row within the shard) and COMMIT.

A crash before 4 rolls the transaction back, so the file written in 3 is referenced by no
row: an orphan, deleted the next time the gallery is opened (under the write lock, so never a
file a live writer is about to commit). A crash after 4 loses nothing. Removals delete rows;
shards that lose all their rows are deleted after the commit and sparse ones are rewritten
into a new shard (again: new file, then one transaction), never rewritten in place.

An external vector index (Milvus) is a replica of this store, kept in step by an outbox: the
same transaction that adds, re-extracts or removes images writes one `index_journal` row per
image, and the index applies and clears the journal after the commit (see `index.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facerank import __version__
from facerank._util.progress import progress_bar
from facerank.errors import GalleryError, InputError
from facerank.face.features import FaceFeatures, FeatureExtractor, FeatureSet, file_digest

__all__ = ["ARRAYS", "DB_NAME", "FORMAT_VERSION", "AddReport", "FeatureStore", "Snapshot",
           "extractor_meta", "fsync_dir"]


FORMAT_VERSION = 1
DB_NAME = "gallery.db"
ARRAYS = "arrays"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL,
    n INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id INTEGER NOT NULL REFERENCES identities(id),
    path TEXT NOT NULL,
    sha1 TEXT NOT NULL UNIQUE,
    shard_id INTEGER NOT NULL REFERENCES shards(id),
    row INTEGER NOT NULL,
    added_at REAL NOT NULL,
    det_score REAL,
    det_source TEXT NOT NULL,
    box TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_identity ON images(identity_id);
CREATE INDEX IF NOT EXISTS images_shard ON images(shard_id);
"""
# Added after format 1 shipped; created on open, so older galleries gain it transparently.
_JOURNAL = """
CREATE TABLE IF NOT EXISTS index_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete'))
);
"""


@dataclass
class AddReport:
    """What `add_files` / `reextract` did."""

    added: int = 0
    already_present: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    batches: int = 0
    identities: set[str] = field(default_factory=set)
    seconds: float = 0.0
    refused: int = 0  # faces left out by `add_files(refuse=...)` (also listed in failures)

    @property
    def skipped(self) -> int:
        return len(self.failures)


@dataclass
class Snapshot:
    """The store's rows at one generation, in image-id order, with their arrays."""

    generation: int
    with_grids: bool
    keys: dict[tuple[int, int], int]  # (shard id, row) -> position
    features: FeatureSet
    labels: list[str]
    image_ids: np.ndarray  # (N,) int64, ascending
    stamp: str  # identifies the row set (for a derived index)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _real(x: float) -> float | None:
    """A float for SQLite (which stores NaN as NULL anyway)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _detector_config(fx: FeatureExtractor) -> dict[str, Any]:
    d = fx.detector
    return {"method": d.method, "policy": d.policy, "fallback": d.fallback,
            "upsample": d.upsample, "retry_upsample": d.retry_upsample,
            **({"align5": d.align5} if d.method == "yunet" else {})}


def extractor_meta(fx: FeatureExtractor) -> dict[str, str]:
    """What the store records about the extractor its features come from."""
    return {"model_id": fx.model_id, "config_digest": fx.config_digest,
            "facerank_version": __version__, "grids": json.dumps(list(fx.grid_names)),
            "detector": json.dumps(_detector_config(fx))}


# (paths) -> (features or None per path, failures)
ExtractFn = Callable[[Sequence[str]], tuple[list[FaceFeatures | None], list[tuple[str, str]]]]


class FeatureStore:
    """Metadata and per-face arrays of one gallery folder (no search, no extraction)."""

    def __init__(self, folder: Path, conn: sqlite3.Connection) -> None:
        self.folder = folder
        self._conn = conn
        self.lock = threading.RLock()
        self.journal_enabled = False  # set by the gallery when an external index replicates it

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, meta: dict[str, str]) -> FeatureStore:
        """Make a new, empty store in `folder` (missing or empty)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GalleryError(f"{folder}: exists and is not a folder")
        if (folder / DB_NAME).exists():
            raise GalleryError(f"{folder} is already a gallery; open it or use another folder")
        if folder.is_dir() and any(folder.iterdir()):
            raise GalleryError(f"{folder} is not empty and not a gallery; give a new or empty "
                               "folder")
        (folder / ARRAYS).mkdir(parents=True, exist_ok=True)
        conn = cls._connect(folder / DB_NAME)
        meta = {"format_version": str(FORMAT_VERSION), "created_at": repr(time.time()),
                "generation": "0", **meta}
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + _JOURNAL + "COMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
        fsync_dir(folder)
        return cls(folder, conn)

    @classmethod
    def open(cls, folder: str | Path) -> FeatureStore:
        """Open an existing store; deletes orphan shards left by a crash."""
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            raise GalleryError(f"{folder} is not a facerank gallery (no {DB_NAME}); create one "
                               f"with `facerank gallery create {folder}`")
        try:
            conn = cls._connect(db)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{db}: not a readable gallery database ({e})") from None
        if "format_version" not in meta:
            conn.close()
            raise GalleryError(f"{folder}: gallery metadata missing (was its creation "
                               "interrupted?); delete the folder and create it again")
        if int(meta["format_version"]) > FORMAT_VERSION:
            conn.close()
            raise GalleryError(f"{folder}: gallery format {meta['format_version']} is newer than "
                               f"this facerank ({__version__}) understands; upgrade facerank")
        store = cls(folder, conn)
        try:
            conn.executescript(_JOURNAL)
            (folder / ARRAYS).mkdir(exist_ok=True)
            store._remove_orphans()
        except BaseException:
            conn.close()
            raise
        return store

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(db, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def close(self) -> None:
        with self.lock:
            self._conn.close()

    # ---- metadata ------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        """The stored key/value metadata (model id, config digest, versions, grids, detector)."""
        with self.lock:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        """Insert or replace metadata keys in one transaction (no generation bump)."""
        with self.lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                   values.items())
            self._conn.execute("COMMIT")

    def check_model(self, meta: dict[str, str], fx: FeatureExtractor) -> None:
        if meta.get("model_id") == fx.model_id and meta.get("config_digest") == fx.config_digest:
            return
        raise GalleryError(
            f"gallery {self.folder} was built with model {meta.get('model_id')} (config "
            f"{meta.get('config_digest')}, facerank {meta.get('facerank_version')}, detector "
            f"{meta.get('detector')}) but the extractor in use is {fx.model_id} (config "
            f"{fx.config_digest}); run `facerank gallery reextract {self.folder}` to recompute "
            "its features with the current model")

    # ---- transactions --------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) that bumps the generation."""
        with self.lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise GalleryError(f"gallery {self.folder} is busy ({e}): another facerank "
                                   "process is writing it; try again when it is done") from None
            try:
                yield c
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                          "WHERE key = 'generation'")
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def generation(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def _remove_orphans(self) -> None:
        """Delete array files no committed shard row names (only if no writer is active)."""
        with self.lock:
            c = self._conn
            c.execute("PRAGMA busy_timeout = 200")
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return  # another process is writing; it is not our business now
            finally:
                c.execute("PRAGMA busy_timeout = 30000")
            try:
                known = {r[0] for r in c.execute("SELECT file FROM shards")}
                for p in (self.folder / ARRAYS).iterdir():
                    if p.name not in known:
                        p.unlink(missing_ok=True)
            finally:
                c.execute("COMMIT")

    # ---- index journal (outbox for an external vector index) ------------------------------

    def _journal(self, c: sqlite3.Connection, image_ids: Sequence[int], op: str) -> None:
        if self.journal_enabled:
            c.executemany("INSERT INTO index_journal(image_id, op) VALUES (?, ?)",
                          [(int(i), op) for i in image_ids])

    def journal_all(self) -> int:
        """Queue every stored image for upsert, so the external index is refilled from the
        store (after its copy was lost or could not be read); returns how many were queued."""
        with self.write() as c:
            ids = [int(r[0]) for r in c.execute("SELECT id FROM images ORDER BY id")]
            self._journal(c, ids, "upsert")
        return len(ids)

    def pending(self) -> list[tuple[int, int, str]]:
        """Journal rows not yet applied to the external index: (seq, image id, op)."""
        with self.lock:
            return [(int(s), int(i), str(o)) for s, i, o in self._conn.execute(
                "SELECT seq, image_id, op FROM index_journal ORDER BY seq")]

    def clear_journal(self, up_to_seq: int) -> None:
        """Forget journal rows up to `up_to_seq` once the index holds them."""
        with self.lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM index_journal WHERE seq <= ?", (int(up_to_seq),))
            self._conn.execute("COMMIT")

    def descriptors_of(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids still present (M,), their raw descriptors (M, D)), read from the shards."""
        ids = [int(i) for i in image_ids]
        found: list[int] = []
        parts: list[np.ndarray] = []
        with self.lock:
            rows: list[tuple[Any, ...]] = []
            for s in range(0, len(ids), 500):
                chunk = ids[s: s + 500]
                rows += self._conn.execute(
                    "SELECT i.id, i.row, i.sha1, s.file FROM images i JOIN shards s "
                    f"ON s.id = i.shard_id WHERE i.id IN ({','.join('?' * len(chunk))})",
                    chunk).fetchall()
        by_file: dict[str, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_file.setdefault(r[3], []).append(r)
        for file, rs in by_file.items():
            arr = self.read_shard(file, np.array([r[1] for r in rs]), (), [r[2] for r in rs])
            found += [int(r[0]) for r in rs]
            parts.append(arr["descriptors"])
        d = parts[0].shape[1] if parts else 0
        return (np.array(found, dtype=np.int64),
                np.concatenate(parts) if parts else np.zeros((0, d), np.float32))

    # ---- shards --------------------------------------------------------------------------

    def arrays_dir(self) -> Path:
        return self.folder / ARRAYS

    def new_shard(self, c: sqlite3.Connection, arrays: dict[str, np.ndarray]) -> int:
        """Reserve a shard id in the open transaction and write its file durably."""
        n = len(arrays["sha1"])
        sid = int(c.execute("INSERT INTO shards(file, n, nbytes, created_at) VALUES ('', ?, 0, ?)",
                            (n, time.time())).lastrowid or 0)
        name = f"shard-{sid:06d}.npz"
        final = self.arrays_dir() / name
        tmp = self.arrays_dir() / f".{name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(self.arrays_dir())
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        c.execute("UPDATE shards SET file = ?, nbytes = ? WHERE id = ?",
                  (name, final.stat().st_size, sid))
        return sid

    def read_shard(self, file: str, rows: np.ndarray, grids: Sequence[str],
                   sha1s: Sequence[str]) -> dict[str, np.ndarray]:
        path = self.arrays_dir() / file
        keys = ["descriptors", "landmarks5", "landmarks68", "chip_landmarks68",
                *(f"grid_{g}" for g in grids)]
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = z["sha1"][rows]
                out = {k: z[k][rows] for k in keys}
                # shards written before sharpness was stored: unknown (NaN)
                out["sharpness"] = (z["sharpness"][rows].astype(np.float64)
                                    if "sharpness" in z.files else np.full(len(rows), np.nan))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise GalleryError(f"{path}: damaged gallery shard ({e}); remove the affected images "
                               f"or run `facerank gallery reextract {self.folder}`") from None
        if list(stored) != list(sha1s):
            raise GalleryError(f"{path}: shard rows do not match the database; run "
                               f"`facerank gallery reextract {self.folder}`")
        return out

    @staticmethod
    def shard_arrays(items: Sequence[FaceFeatures], sha1s: Sequence[str],
                     grid_names: Sequence[str]) -> dict[str, np.ndarray]:
        fs = FeatureSet.stack(items, grid_names=grid_names)
        return {"sha1": np.array(sha1s, dtype=str), "descriptors": fs.descriptors,
                "landmarks5": fs.landmarks5, "landmarks68": fs.landmarks68,
                "chip_landmarks68": fs.chip_landmarks68, "sharpness": fs.sharpness,
                **{f"grid_{k}": v for k, v in fs.grids.items()}}

    # ---- adding --------------------------------------------------------------------------

    def present_sha1s(self, sha1s: Sequence[str]) -> set[str]:
        present: set[str] = set()
        with self.lock:
            for s in range(0, len(sha1s), 500):
                chunk = list(sha1s[s : s + 500])
                q = f"SELECT sha1 FROM images WHERE sha1 IN ({','.join('?' * len(chunk))})"
                present.update(r[0] for r in self._conn.execute(q, chunk))
        return present

    def commit_batch(self, batch: Sequence[tuple[str, str, str]],
                     feats: Sequence[FaceFeatures], fx: FeatureExtractor) -> int:
        """Write one shard and its rows in one transaction; returns the rows inserted.

        batch: (absolute path, identity name, sha1) per face, `feats` aligned with it.
        """
        with self.write() as c:
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            self.check_model(meta, fx)
            present = self.present_sha1s([d for _, _, d in batch])
            keep = [i for i, (_, _, d) in enumerate(batch) if d not in present]
            if not keep:
                return 0
            arrays = self.shard_arrays([feats[i] for i in keep], [batch[i][2] for i in keep],
                                       fx.grid_names)
            sid = self.new_shard(c, arrays)
            now = time.time()
            new_ids = []
            for row, i in enumerate(keep):
                path, name, digest = batch[i]
                f = feats[i]
                ident = self._identity_id(c, name, create=True)
                cur = c.execute(
                    "INSERT INTO images(identity_id, path, sha1, shard_id, row, added_at, "
                    "det_score, det_source, box) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ident, path, digest, sid, row, now, _real(f.det_score), f.det_source,
                     json.dumps([float(x) for x in np.asarray(f.box).ravel()])))
                new_ids.append(int(cur.lastrowid or 0))
            self._journal(c, new_ids, "upsert")
            return len(keep)

    @staticmethod
    def _identity_id(c: sqlite3.Connection, name: str, create: bool = False) -> int:
        row = c.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            raise GalleryError(f"no identity named {name!r} in the gallery")
        cur = c.execute("INSERT INTO identities(name, created_at) VALUES (?, ?)",
                        (name, time.time()))
        return int(cur.lastrowid or 0)

    # ---- editing -------------------------------------------------------------------------

    def remove_identity(self, name: str) -> int:
        """Remove an identity and all its images; returns the number of images removed."""
        with self.write() as c:
            ident = self._identity_id(c, name)
            ids = [r[0] for r in c.execute("SELECT id FROM images WHERE identity_id = ?",
                                           (ident,))]
            n = c.execute("DELETE FROM images WHERE identity_id = ?", (ident,)).rowcount
            c.execute("DELETE FROM identities WHERE id = ?", (ident,))
            self._journal(c, ids, "delete")
        self.compact()
        return n

    def remove_image(self, image_id: int) -> None:
        """Remove one image (its identity goes too when it was the last one)."""
        with self.write() as c:
            row = c.execute("SELECT identity_id FROM images WHERE id = ?",
                            (int(image_id),)).fetchone()
            if row is None:
                raise GalleryError(f"no image with id {image_id} in gallery {self.folder}")
            c.execute("DELETE FROM images WHERE id = ?", (int(image_id),))
            c.execute("DELETE FROM identities WHERE id = ? AND NOT EXISTS "
                      "(SELECT 1 FROM images WHERE identity_id = ?)", (row[0], row[0]))
            self._journal(c, [int(image_id)], "delete")
        self.compact()

    def rename_identity(self, old: str, new: str, merge: bool = False) -> None:
        """Rename an identity; with `merge`, an existing `new` absorbs the images of `old`.

        Names live only here (an external index holds image ids and vectors), so a rename
        touches no index."""
        new = new.strip()
        if not new:
            raise InputError("the new identity name is empty")
        with self.write() as c:
            ident = self._identity_id(c, old)
            row = c.execute("SELECT id FROM identities WHERE name = ?", (new,)).fetchone()
            if row is None:
                c.execute("UPDATE identities SET name = ? WHERE id = ?", (new, ident))
            elif int(row[0]) == ident:
                return
            elif not merge:
                raise GalleryError(f"identity {new!r} already exists; pass --merge to move the "
                                   f"images of {old!r} into it")
            else:
                c.execute("UPDATE images SET identity_id = ? WHERE identity_id = ?",
                          (int(row[0]), ident))
                c.execute("DELETE FROM identities WHERE id = ?", (ident,))

    def compact(self, min_live_fraction: float = 0.5) -> int:
        """Drop empty shards and rewrite sparse ones into one new shard; returns shards freed."""
        doomed: list[str] = []
        stats_q = ("SELECT s.id, s.file, s.n, COUNT(i.id) FROM shards s "
                   "LEFT JOIN images i ON i.shard_id = s.id GROUP BY s.id")
        with self.lock:
            stats = self._conn.execute(stats_q).fetchall()
            if not any(r[3] < min_live_fraction * r[2] for r in stats):
                return 0
            with self.write() as c:
                sparse = [r for r in c.execute(stats_q) if r[3] < min_live_fraction * r[2]]
                empty = [(sid, f) for sid, f, _, live in sparse if live == 0]
                partial = [(sid, f) for sid, f, _, live in sparse if live > 0]
                if partial:
                    self._merge_shards(c, partial)
                for sid, f in empty + partial:
                    c.execute("DELETE FROM shards WHERE id = ?", (sid,))
                    doomed.append(f)
            for f in doomed:
                (self.arrays_dir() / f).unlink(missing_ok=True)
        return len(doomed)

    def _merge_shards(self, c: sqlite3.Connection, shards: Sequence[tuple[int, str]]) -> int:
        """Copy the live rows of `shards` into one new shard and point the images at it."""
        grid_names = json.loads(dict(c.execute("SELECT key, value FROM meta").fetchall())
                                ["grids"])
        parts: list[dict[str, np.ndarray]] = []
        moved: list[int] = []
        for sid, f in shards:
            rows = c.execute("SELECT id, row, sha1 FROM images WHERE shard_id = ? ORDER BY id",
                             (sid,)).fetchall()
            arr = self.read_shard(f, np.array([r[1] for r in rows]), grid_names,
                                   [r[2] for r in rows])
            arr["sha1"] = np.array([r[2] for r in rows], dtype=str)
            parts.append(arr)
            moved.extend(r[0] for r in rows)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        new = self.new_shard(c, merged)
        c.executemany("UPDATE images SET shard_id = ?, row = ? WHERE id = ?",
                      [(new, row, iid) for row, iid in enumerate(moved)])
        return new

    def reextract(self, fx: FeatureExtractor, extract: ExtractFn, batch_size: int,
                  progress: bool = True, drop_failed: bool = False) -> AddReport:
        """Recompute every image's features with the current extractor, atomically.

        All new shards are written and the rows switched in one transaction; a crash or an
        error leaves the gallery as it was. Files that no longer load (or changed since they
        were added) make it fail, unless `drop_failed` removes those images.
        """
        t0 = time.perf_counter()
        report = AddReport()
        new_files: list[str] = []
        with self.lock:
            with self.write() as c:
                try:
                    rows = c.execute("SELECT i.id, i.path, i.sha1, n.name FROM images i "
                                     "JOIN identities n ON n.id = i.identity_id "
                                     "ORDER BY i.id").fetchall()
                    old = [r[0] for r in c.execute("SELECT file FROM shards")]
                    failed_ids: list[int] = []
                    with progress_bar(progress, "re-extracting", len(rows)) as advance:
                        for s in range(0, len(rows), batch_size):
                            batch = rows[s : s + batch_size]
                            good = self._reextract_batch(c, fx, extract, batch, report,
                                                         failed_ids, new_files)
                            report.added += good
                            report.identities.update(r[3] for r in batch)
                            advance(len(batch))
                    if failed_ids and not drop_failed:
                        first = "; ".join(m for _, m in report.failures[:3])
                        raise GalleryError(
                            f"{len(failed_ids)} of {len(rows)} gallery image(s) could not be "
                            f"re-extracted ({first}); nothing was changed. Restore the files or "
                            "re-run with --drop-failed to remove those images")
                    for iid in failed_ids:
                        c.execute("DELETE FROM images WHERE id = ?", (iid,))
                    self._journal(c, [r[0] for r in rows if r[0] not in set(failed_ids)],
                                  "upsert")
                    self._journal(c, failed_ids, "delete")
                    c.execute("DELETE FROM identities WHERE id NOT IN "
                              "(SELECT identity_id FROM images)")
                    c.execute("DELETE FROM shards WHERE id NOT IN (SELECT shard_id FROM images)")
                    c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                  extractor_meta(fx).items())
                except BaseException:
                    # before the rollback, while no other writer can reserve these names
                    for f in new_files:
                        (self.arrays_dir() / f).unlink(missing_ok=True)
                    raise
            known = {r[0] for r in self._conn.execute("SELECT file FROM shards")}
            for f in old:
                if f not in known:
                    (self.arrays_dir() / f).unlink(missing_ok=True)
        report.seconds = time.perf_counter() - t0
        return report

    def _reextract_batch(self, c: sqlite3.Connection, fx: FeatureExtractor, extract: ExtractFn,
                         batch: Sequence[tuple[Any, ...]], report: AddReport,
                         failed_ids: list[int], new_files: list[str]) -> int:
        paths = list(dict.fromkeys(r[1] for r in batch))
        feats, failures = extract(paths)
        report.failures.extend(failures)
        by_path = dict(zip(paths, feats, strict=True))
        ok: list[tuple[int, str, FaceFeatures]] = []
        for iid, path, sha1, _ in batch:
            f = by_path[path]
            if f is not None:
                try:
                    same = file_digest(Path(path).read_bytes()) == sha1
                except OSError:
                    same = False
                if not same:
                    report.failures.append((path, f"{path}: file changed since it was added"))
                    f = None
            if f is None:
                failed_ids.append(iid)
            else:
                ok.append((iid, sha1, f))
        if not ok:
            return 0
        arrays = self.shard_arrays([f for _, _, f in ok], [s for _, s, _ in ok],
                                    fx.grid_names)
        sid = self.new_shard(c, arrays)
        new_files.append(f"shard-{sid:06d}.npz")
        for row, (iid, _, f) in enumerate(ok):
            c.execute("UPDATE images SET shard_id = ?, row = ?, det_score = ?, det_source = ?, "
                      "box = ? WHERE id = ?",
                      (sid, row, _real(f.det_score), f.det_source,
                       json.dumps([float(x) for x in np.asarray(f.box).ravel()]), iid))
        return len(ok)

    # ---- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        with self.lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def identities(self) -> list[tuple[str, int]]:
        """(name, number of images), sorted by name."""
        with self.lock:
            return [(str(n), int(k)) for n, k in self._conn.execute(
                "SELECT n.name, COUNT(i.id) FROM identities n LEFT JOIN images i "
                "ON i.identity_id = n.id GROUP BY n.id ORDER BY n.name")]

    def images(self, identity: str | None = None) -> list[dict[str, Any]]:
        """Image records (id, identity, path, sha1, added_at, det_score, det_source, box)."""
        q = ("SELECT i.id, n.name, i.path, i.sha1, i.added_at, i.det_score, i.det_source, i.box "
             "FROM images i JOIN identities n ON n.id = i.identity_id")
        args: tuple[str, ...] = ()
        if identity is not None:
            q += " WHERE n.name = ?"
            args = (identity,)
        with self.lock:
            rows = self._conn.execute(q + " ORDER BY i.id", args).fetchall()
        keys = ("id", "identity", "path", "sha1", "added_at", "det_score", "det_source", "box")
        return [dict(zip(keys, r[:7], strict=False)) | {"box": json.loads(r[7])} for r in rows]

    def snapshot(self, want_grids: bool, old: Snapshot | None = None) -> Snapshot:
        """The rows at the current generation; arrays of rows already in `old` are reused,
        only new shards are read. Retries when a concurrent compaction moved a shard."""
        with self.lock:
            for attempt in range(3):
                try:
                    return self._snapshot_once(want_grids, old)
                except FileNotFoundError as e:
                    if attempt == 2:
                        raise GalleryError(f"{e.filename}: gallery shard missing; run "
                                           f"`facerank gallery reextract {self.folder}`") from None
                    old = None  # a concurrent compaction: read the new state
        raise AssertionError("unreachable")

    def _snapshot_once(self, want: bool, old: Snapshot | None) -> Snapshot:
        c = self._conn
        c.execute("BEGIN")  # one snapshot for the generation and the rows
        try:
            gen = self.generation()
            if old is not None and old.generation == gen and (old.with_grids or not want):
                return old
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            rows = c.execute(
                "SELECT i.id, n.name, i.path, i.sha1, i.shard_id, i.row, i.det_score, "
                "i.det_source, i.box, s.file FROM images i "
                "JOIN identities n ON n.id = i.identity_id JOIN shards s ON s.id = i.shard_id "
                "ORDER BY i.id").fetchall()
        finally:
            c.execute("COMMIT")
        grid_names = json.loads(meta["grids"]) if want else []
        n = len(rows)
        keys = [(int(r[4]), int(r[5])) for r in rows]
        reuse = old if old is not None and (old.with_grids or not want) else None
        arrays: dict[str, np.ndarray] = {}
        filled = np.zeros(n, dtype=bool)
        if reuse is not None and n:
            src = np.array([reuse.keys.get(k, -1) for k in keys], dtype=np.int64)
            filled = src >= 0
            f = reuse.features
            fields = {"descriptors": f.descriptors, "landmarks5": f.landmarks5,
                      "landmarks68": f.landmarks68, "chip_landmarks68": f.chip_landmarks68,
                      "sharpness": f.sharpness,
                      **{f"grid_{g}": f.grids[g] for g in grid_names if g in f.grids}}
            for k, v in fields.items():
                arrays[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
                arrays[k][filled] = v[src[filled]]
        by_shard: dict[str, list[int]] = {}
        for pos in np.flatnonzero(~filled):
            by_shard.setdefault(rows[pos][9], []).append(int(pos))
        for file, positions in by_shard.items():
            part = self.read_shard(file, np.array([rows[p][5] for p in positions]), grid_names,
                                    [rows[p][3] for p in positions])
            for k, v in part.items():
                if k not in arrays:
                    arrays[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
                arrays[k][positions] = v
        if n == 0:
            fs = FeatureSet.stack([], grid_names=grid_names)
        else:
            fs = FeatureSet(
                paths=[r[2] for r in rows], descriptors=arrays["descriptors"],
                grids={g: arrays[f"grid_{g}"] for g in grid_names},
                landmarks5=arrays["landmarks5"], landmarks68=arrays["landmarks68"],
                chip_landmarks68=arrays["chip_landmarks68"],
                boxes=np.array([json.loads(r[8]) for r in rows], dtype=np.float64),
                det_scores=np.array([np.nan if r[6] is None else r[6] for r in rows],
                                    dtype=np.float64),
                det_sources=[r[7] for r in rows], sharpness=arrays["sharpness"])
        stamp = hashlib.sha1(np.array(keys, dtype=np.int64).tobytes()).hexdigest()[:16]
        return Snapshot(generation=gen, with_grids=bool(want),
                               keys={k: i for i, k in enumerate(keys)}, features=fs,
                               labels=[r[1] for r in rows],
                               image_ids=np.array([r[0] for r in rows], dtype=np.int64),
                               stamp=stamp)

