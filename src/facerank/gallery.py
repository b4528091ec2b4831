"""A persistent gallery of enrolled faces in one folder: SQLite metadata + array shards + index.

Layout of a gallery folder:

    gallery.db                 SQLite (WAL): identities, images, shards, meta
    arrays/shard-000001.npz    per-batch arrays (descriptors float32, grids float16, landmarks)
    index-hnsw-<stamp>.faiss   optional persisted HNSW index (the flat index lives in memory)

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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facerank import __version__
from facerank.errors import FacerankError, GalleryError, InputError
from facerank.features import FaceFeatures, FeatureExtractor, FeatureSet, file_digest, l2_normalize
from facerank.progress import progress_bar
from facerank.search import Ranking

if TYPE_CHECKING:
    from facerank.calibrate.base import Calibrator
    from facerank.rerank.base import Reranker

CANDIDATES = 100  # Stage-1 candidates a calibrated search re-scores (facerank.calibrate)

FORMAT_VERSION = 1
DB_NAME = "gallery.db"
ARRAYS = "arrays"
DEFAULT_BATCH = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
IndexKind = Literal["flat", "hnsw"]
IdentityFrom = Literal["folder", "filename"]

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


def batch_size_from_env() -> int:
    """Images per committed batch: `$FACERANK_GALLERY_BATCH`, default 64."""
    raw = os.environ.get("FACERANK_GALLERY_BATCH", "")
    if not raw:
        return DEFAULT_BATCH
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"FACERANK_GALLERY_BATCH={raw!r}: must be a positive integer")
    return n


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def identity_of(path: str | Path, identity_from: IdentityFrom = "folder") -> str:
    """Identity name of an image: its parent folder name, or its file stem without `_0001`."""
    path = Path(path)
    if identity_from == "folder":
        name = path.absolute().parent.name
    elif identity_from == "filename":
        name = re.sub(r"[_\-\s]*\d+$", "", path.stem) or path.stem
    else:
        raise InputError(f"unknown identity source {identity_from!r}; use folder or filename")
    return name


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


@dataclass(frozen=True)
class SearchResult:
    """One gallery match of a probe."""

    rank: int  # 1-based
    identity: str
    path: str
    image_id: int
    row: int  # row of `Gallery.features()`
    score: float  # the final score that orders the results
    stage_scores: dict[str, float]  # "stage1" (cosine) and each Stage-2 score by name
    confidence: float | None = None  # URL confidence of the gallery face (None: no URL head)
    confidences: list[float] | None = None  # its (K,) sub-embedding confidences

    @property
    def stage1(self) -> float:
        return self.stage_scores["stage1"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""
        def clean(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        return {"rank": self.rank, "identity": self.identity, "path": self.path,
                "image_id": self.image_id, "score": clean(self.score),
                "stage_scores": {k: clean(v) for k, v in self.stage_scores.items()},
                "confidence": self.confidence, "confidences": self.confidences}


@dataclass
class _Loaded:
    """The in-memory copy of the gallery at one generation."""

    generation: int
    with_grids: bool
    keys: dict[tuple[int, int], int]  # (shard id, row) -> position
    features: FeatureSet
    labels: list[str]
    image_ids: np.ndarray  # (N,) int64
    stamp: str  # identifies the row set (for the index)


def _fsync_dir(path: Path) -> None:
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


def _refuse(refuse: Callable[[list[FaceFeatures]], list[str | None]],
            batch: Sequence[tuple[str, str, str]], feats: list[FaceFeatures | None],
            report: AddReport) -> list[FaceFeatures | None]:
    """feats with the faces `refuse` gives a reason for replaced by None (and reported)."""
    live = [i for i, f in enumerate(feats) if f is not None]
    reasons = refuse([feats[i] for i in live]) if live else []  # type: ignore[misc]
    out = list(feats)
    for i, why in zip(live, reasons, strict=True):
        if why is not None:
            out[i] = None
            report.refused += 1
            report.failures.append((batch[i][0], f"{batch[i][0]}: {why}"))
    return out


def _detector_config(fx: FeatureExtractor) -> dict[str, Any]:
    d = fx.detector
    return {"method": d.method, "policy": d.policy, "fallback": d.fallback,
            "upsample": d.upsample, "retry_upsample": d.retry_upsample,
            **({"align5": d.align5} if d.method == "yunet" else {})}


class Gallery:
    """A persistent, crash-safe gallery. Use `Gallery.create` or `Gallery.open`."""

    def __init__(self, folder: Path, conn: sqlite3.Connection,
                 extractor: FeatureExtractor | None, index: IndexKind, load_grids: bool,
                 batch_size: int | None, check_model: bool = True) -> None:
        self.folder = folder
        self._check = check_model
        self._conn = conn
        self._lock = threading.RLock()
        self._extractor = extractor
        self.index_kind = index
        self.load_grids = load_grids
        self.batch_size = batch_size or batch_size_from_env()
        self._loaded: _Loaded | None = None
        self._index: tuple[str, Any] | None = None
        self._calib_terms: dict[str, Any] = {}  # calibrated search: the gallery's terms
        self._calib_memo: dict[str, Any] = {}

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, extractor: FeatureExtractor | None = None,
               index: IndexKind = "flat", load_grids: bool = True,
               batch_size: int | None = None) -> Gallery:
        """Make a new, empty gallery in `folder` (missing or empty) for `extractor`'s model."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GalleryError(f"{folder}: exists and is not a folder")
        if (folder / DB_NAME).exists():
            raise GalleryError(f"{folder} is already a gallery; open it or use another folder")
        if folder.is_dir() and any(folder.iterdir()):
            raise GalleryError(f"{folder} is not empty and not a gallery; give a new or empty "
                               "folder")
        extractor = extractor or FeatureExtractor()
        (folder / ARRAYS).mkdir(parents=True, exist_ok=True)
        conn = cls._connect(folder / DB_NAME)
        now = time.time()
        meta = {
            "format_version": str(FORMAT_VERSION), "created_at": repr(now), "generation": "0",
            **cls._extractor_meta(extractor),
        }
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
        _fsync_dir(folder)
        return cls(folder, conn, extractor, index, load_grids, batch_size)

    @classmethod
    def open(cls, folder: str | Path, extractor: FeatureExtractor | None = None,
             index: IndexKind = "flat", load_grids: bool = True,
             batch_size: int | None = None, check_model: bool = True) -> Gallery:
        """Open an existing gallery; deletes orphan shards left by a crash.

        extractor: None builds one from the stored detector settings when first needed.
        check_model: False skips the model check (only for `reextract`).
        """
        folder = Path(folder)
        if index not in ("flat", "hnsw"):
            raise InputError(f"unknown index {index!r}; use flat or hnsw")
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
            raise GalleryError(f"{folder}: gallery metadata missing (was its creation "
                               "interrupted?); delete the folder and create it again")
        if int(meta["format_version"]) > FORMAT_VERSION:
            raise GalleryError(f"{folder}: gallery format {meta['format_version']} is newer than "
                               f"this facerank ({__version__}) understands; upgrade facerank")
        g = cls(folder, conn, extractor, index, load_grids, batch_size, check_model)
        try:
            if extractor is not None and check_model:
                g._check_model(meta, extractor)
            (folder / ARRAYS).mkdir(exist_ok=True)
            g._remove_orphans()
        except BaseException:
            conn.close()
            raise
        return g

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(db, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def close(self) -> None:
        """Close the database (the in-memory copy is dropped too)."""
        with self._lock:
            self._conn.close()
            self._loaded = None
            self._index = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self.folder)!r}, images={len(self)})"

    # ---- model ---------------------------------------------------------------------------

    @staticmethod
    def _extractor_meta(fx: FeatureExtractor) -> dict[str, str]:
        return {"model_id": fx.model_id, "config_digest": fx.config_digest,
                "facerank_version": __version__, "grids": json.dumps(list(fx.grid_names)),
                "detector": json.dumps(_detector_config(fx))}

    def meta(self) -> dict[str, str]:
        """The stored key/value metadata (model id, config digest, versions, grids, detector)."""
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def _check_model(self, meta: dict[str, str], fx: FeatureExtractor) -> None:
        if meta.get("model_id") == fx.model_id and meta.get("config_digest") == fx.config_digest:
            return
        raise GalleryError(
            f"gallery {self.folder} was built with model {meta.get('model_id')} (config "
            f"{meta.get('config_digest')}, facerank {meta.get('facerank_version')}, detector "
            f"{meta.get('detector')}) but the extractor in use is {fx.model_id} (config "
            f"{fx.config_digest}); run `facerank gallery reextract {self.folder}` to recompute "
            "its features with the current model")

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor of this gallery (built from the stored settings if not given)."""
        with self._lock:
            if self._extractor is None:
                from facerank.detect import FaceDetector

                meta = self.meta()
                det = FaceDetector(**json.loads(meta["detector"]))
                from facerank.models.backbone import backbone_name

                self._extractor = FeatureExtractor(  # the backbone the gallery was built with
                    backbone=backbone_name(meta.get("model_id", "")), detector=det,
                    grids=json.loads(meta["grids"]))
                if self._check:
                    self._check_model(meta, self._extractor)
            return self._extractor

    # ---- transactions --------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) that bumps the generation."""
        with self._lock:
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

    def _generation(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def _remove_orphans(self) -> None:
        """Delete array files no committed shard row names (only if no writer is active)."""
        with self._lock:
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

    # ---- shards --------------------------------------------------------------------------

    def _arrays_dir(self) -> Path:
        return self.folder / ARRAYS

    def _new_shard(self, c: sqlite3.Connection, arrays: dict[str, np.ndarray]) -> int:
        """Reserve a shard id in the open transaction and write its file durably."""
        n = len(arrays["sha1"])
        sid = int(c.execute("INSERT INTO shards(file, n, nbytes, created_at) VALUES ('', ?, 0, ?)",
                            (n, time.time())).lastrowid or 0)
        name = f"shard-{sid:06d}.npz"
        final = self._arrays_dir() / name
        tmp = self._arrays_dir() / f".{name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self._arrays_dir())
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        c.execute("UPDATE shards SET file = ?, nbytes = ? WHERE id = ?",
                  (name, final.stat().st_size, sid))
        return sid

    def _read_shard(self, file: str, rows: np.ndarray, grids: Sequence[str],
                    sha1s: Sequence[str]) -> dict[str, np.ndarray]:
        path = self._arrays_dir() / file
        keys = ["descriptors", "landmarks5", "landmarks68", "chip_landmarks68",
                *(f"grid_{g}" for g in grids)]
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = z["sha1"][rows]
                out = {k: z[k][rows] for k in keys}
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
    def _shard_arrays(items: Sequence[FaceFeatures], sha1s: Sequence[str],
                      grid_names: Sequence[str]) -> dict[str, np.ndarray]:
        fs = FeatureSet.stack(items, grid_names=grid_names)
        return {"sha1": np.array(sha1s, dtype=str), "descriptors": fs.descriptors,
                "landmarks5": fs.landmarks5, "landmarks68": fs.landmarks68,
                "chip_landmarks68": fs.chip_landmarks68,
                **{f"grid_{k}": v for k, v in fs.grids.items()}}

    # ---- adding --------------------------------------------------------------------------

    def _extract(self, paths: Sequence[str]) -> tuple[list[FaceFeatures | None],
                                                       list[tuple[str, str]]]:
        """Features of distinct paths, in order (None for a failure); never raises on a file."""
        fx = self.extractor
        try:
            fs = fx.extract_paths(paths, progress=False)
        except Exception:  # an unexpected error on some file: isolate it file by file
            out: list[FaceFeatures | None] = []
            failures: list[tuple[str, str]] = []
            for p in paths:
                try:
                    out.append(fx.extract_file(p))
                except FacerankError as e:
                    out.append(None)
                    failures.append((p, str(e)))
                except Exception as e:  # noqa: BLE001 - reported, never fatal for the batch
                    out.append(None)
                    failures.append((p, f"{p}: {type(e).__name__}: {e}"))
            return out, failures
        failed = {p for p, _ in fs.failures}
        it = iter(range(len(fs)))
        return [None if p in failed else fs[next(it)] for p in paths], list(fs.failures)

    def add_files(self, paths: Sequence[str | Path], identities: Sequence[str],
                  progress: bool = True,
                  refuse: Callable[[list[FaceFeatures]], list[str | None]] | None = None
                  ) -> AddReport:
        """Enrol images under identity names; files already present (same bytes) are skipped.

        refuse: given a batch's faces, a reason per face to leave it out (None: keep it), e.g.
        a URL confidence floor; refused faces are reported as failures and not enrolled.

        Bad files are skipped and listed in the report. Each batch of `batch_size` images is
        committed on its own, so an interrupted run keeps its batches and a re-run resumes.
        """
        if len(paths) != len(identities):
            raise InputError(f"{len(paths)} paths but {len(identities)} identities")
        t0 = time.perf_counter()
        report = AddReport()
        todo: list[tuple[str, str, str]] = []  # (path, identity, sha1)
        seen: set[str] = set()
        for p, name in zip(paths, identities, strict=True):
            name = str(name).strip()
            if not name:
                raise InputError(f"{p}: empty identity name")
            p = str(Path(p).absolute())
            try:
                digest = file_digest(Path(p).read_bytes())
            except OSError as e:
                report.failures.append((p, f"{p}: cannot read ({e.strerror or e})"))
                continue
            if digest in seen:
                report.already_present += 1
                continue
            seen.add(digest)
            todo.append((p, name, digest))
        with self._lock:
            present = self._present_sha1s([d for _, _, d in todo])
        report.already_present += sum(d in present for _, _, d in todo)
        todo = [t for t in todo if t[2] not in present]
        with progress_bar(progress, "adding", len(paths)) as advance:
            advance(len(paths) - len(todo))
            for s in range(0, len(todo), self.batch_size):
                batch = todo[s : s + self.batch_size]
                feats, failures = self._extract([p for p, _, _ in batch])
                report.failures.extend(failures)
                if refuse is not None:
                    feats = _refuse(refuse, batch, feats, report)
                ok = [(t, f) for t, f in zip(batch, feats, strict=True) if f is not None]
                if ok:
                    added = self._commit_batch([t for t, _ in ok], [f for _, f in ok])
                    report.added += added
                    report.already_present += len(ok) - added
                    report.identities.update(t[1] for t, _ in ok)
                    report.batches += 1
                advance(len(batch))
        report.seconds = time.perf_counter() - t0
        return report

    def add_folder(self, folder: str | Path, identity_from: IdentityFrom = "folder",
                   progress: bool = True, identity: str | None = None) -> AddReport:
        """Enrol every image under `folder`; identity = parent folder name (or `identity`)."""
        files = list_images(folder)
        names = [identity or identity_of(f, identity_from) for f in files]
        return self.add_files(files, names, progress=progress)

    def _present_sha1s(self, sha1s: Sequence[str]) -> set[str]:
        present: set[str] = set()
        for s in range(0, len(sha1s), 500):
            chunk = list(sha1s[s : s + 500])
            q = f"SELECT sha1 FROM images WHERE sha1 IN ({','.join('?' * len(chunk))})"
            present.update(r[0] for r in self._conn.execute(q, chunk))
        return present

    def _commit_batch(self, batch: Sequence[tuple[str, str, str]],
                      feats: Sequence[FaceFeatures]) -> int:
        """Write one shard and its rows in one transaction; returns the rows inserted."""
        fx = self.extractor
        with self._write() as c:
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            self._check_model(meta, fx)
            present = self._present_sha1s([d for _, _, d in batch])
            keep = [i for i, (_, _, d) in enumerate(batch) if d not in present]
            if not keep:
                return 0
            arrays = self._shard_arrays([feats[i] for i in keep], [batch[i][2] for i in keep],
                                        fx.grid_names)
            sid = self._new_shard(c, arrays)
            now = time.time()
            for row, i in enumerate(keep):
                path, name, digest = batch[i]
                f = feats[i]
                ident = self._identity_id(c, name, create=True)
                c.execute(
                    "INSERT INTO images(identity_id, path, sha1, shard_id, row, added_at, "
                    "det_score, det_source, box) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ident, path, digest, sid, row, now, _real(f.det_score), f.det_source,
                     json.dumps([float(x) for x in np.asarray(f.box).ravel()])))
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
        with self._write() as c:
            ident = self._identity_id(c, name)
            n = c.execute("DELETE FROM images WHERE identity_id = ?", (ident,)).rowcount
            c.execute("DELETE FROM identities WHERE id = ?", (ident,))
        self.compact()
        return n

    def remove_image(self, image_id: int) -> None:
        """Remove one image (its identity goes too when it was the last one)."""
        with self._write() as c:
            row = c.execute("SELECT identity_id FROM images WHERE id = ?",
                            (int(image_id),)).fetchone()
            if row is None:
                raise GalleryError(f"no image with id {image_id} in gallery {self.folder}")
            c.execute("DELETE FROM images WHERE id = ?", (int(image_id),))
            c.execute("DELETE FROM identities WHERE id = ? AND NOT EXISTS "
                      "(SELECT 1 FROM images WHERE identity_id = ?)", (row[0], row[0]))
        self.compact()

    def rename_identity(self, old: str, new: str, merge: bool = False) -> None:
        """Rename an identity; with `merge`, an existing `new` absorbs the images of `old`."""
        new = new.strip()
        if not new:
            raise InputError("the new identity name is empty")
        with self._write() as c:
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
        with self._lock:
            stats = self._conn.execute(stats_q).fetchall()
            if not any(r[3] < min_live_fraction * r[2] for r in stats):
                return 0
            with self._write() as c:
                sparse = [r for r in c.execute(stats_q) if r[3] < min_live_fraction * r[2]]
                empty = [(sid, f) for sid, f, _, live in sparse if live == 0]
                partial = [(sid, f) for sid, f, _, live in sparse if live > 0]
                if partial:
                    self._merge_shards(c, partial)
                for sid, f in empty + partial:
                    c.execute("DELETE FROM shards WHERE id = ?", (sid,))
                    doomed.append(f)
            for f in doomed:
                (self._arrays_dir() / f).unlink(missing_ok=True)
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
            arr = self._read_shard(f, np.array([r[1] for r in rows]), grid_names,
                                   [r[2] for r in rows])
            arr["sha1"] = np.array([r[2] for r in rows], dtype=str)
            parts.append(arr)
            moved.extend(r[0] for r in rows)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        new = self._new_shard(c, merged)
        c.executemany("UPDATE images SET shard_id = ?, row = ? WHERE id = ?",
                      [(new, row, iid) for row, iid in enumerate(moved)])
        return new

    def reextract(self, progress: bool = True, drop_failed: bool = False) -> AddReport:
        """Recompute every image's features with the current extractor, atomically.

        All new shards are written and the rows switched in one transaction; a crash or an
        error leaves the gallery as it was. Files that no longer load (or changed since they
        were added) make it fail, unless `drop_failed` removes those images.
        """
        fx = self.extractor
        t0 = time.perf_counter()
        report = AddReport()
        new_files: list[str] = []
        with self._lock:
            with self._write() as c:
                try:
                    rows = c.execute("SELECT i.id, i.path, i.sha1, n.name FROM images i "
                                     "JOIN identities n ON n.id = i.identity_id "
                                     "ORDER BY i.id").fetchall()
                    old = [r[0] for r in c.execute("SELECT file FROM shards")]
                    failed_ids: list[int] = []
                    with progress_bar(progress, "re-extracting", len(rows)) as advance:
                        for s in range(0, len(rows), self.batch_size):
                            batch = rows[s : s + self.batch_size]
                            good = self._reextract_batch(c, batch, report, failed_ids, new_files)
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
                    c.execute("DELETE FROM identities WHERE id NOT IN "
                              "(SELECT identity_id FROM images)")
                    c.execute("DELETE FROM shards WHERE id NOT IN (SELECT shard_id FROM images)")
                    c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                  self._extractor_meta(fx).items())
                except BaseException:
                    # before the rollback, while no other writer can reserve these names
                    for f in new_files:
                        (self._arrays_dir() / f).unlink(missing_ok=True)
                    raise
            known = {r[0] for r in self._conn.execute("SELECT file FROM shards")}
            for f in old:
                if f not in known:
                    (self._arrays_dir() / f).unlink(missing_ok=True)
            self._check = True
            self._loaded = None
            self._index = None
            for p in self.folder.glob("calib-*.npy"):  # calibration terms of the old features
                p.unlink(missing_ok=True)
            self._calib_terms.clear()
            self._calib_memo.clear()
        report.seconds = time.perf_counter() - t0
        return report

    def _reextract_batch(self, c: sqlite3.Connection, batch: Sequence[tuple[Any, ...]],
                         report: AddReport, failed_ids: list[int], new_files: list[str]) -> int:
        paths = list(dict.fromkeys(r[1] for r in batch))
        feats, failures = self._extract(paths)
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
        arrays = self._shard_arrays([f for _, _, f in ok], [s for _, s, _ in ok],
                                    self.extractor.grid_names)
        sid = self._new_shard(c, arrays)
        new_files.append(f"shard-{sid:06d}.npz")
        for row, (iid, _, f) in enumerate(ok):
            c.execute("UPDATE images SET shard_id = ?, row = ?, det_score = ?, det_source = ?, "
                      "box = ? WHERE id = ?",
                      (sid, row, _real(f.det_score), f.det_source,
                       json.dumps([float(x) for x in np.asarray(f.box).ravel()]), iid))
        return len(ok)

    # ---- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def identities(self) -> list[tuple[str, int]]:
        """(name, number of images), sorted by name."""
        with self._lock:
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
        with self._lock:
            rows = self._conn.execute(q + " ORDER BY i.id", args).fetchall()
        keys = ("id", "identity", "path", "sha1", "added_at", "det_score", "det_source", "box")
        return [dict(zip(keys, r[:7], strict=False)) | {"box": json.loads(r[7])} for r in rows]

    def features(self, grids: bool | None = None) -> FeatureSet:
        """All enrolled faces as one FeatureSet (rows aligned with `labels()`, `image_ids()`).

        grids: load the patch grids (default: the `load_grids` of `open`). Cached in memory
        until the gallery changes; only new shards are read after an addition.
        """
        return self._load(self.load_grids if grids is None else grids).features

    def labels(self) -> list[str]:
        """Identity name of each row of `features()`."""
        return list(self._load(None).labels)

    def image_ids(self) -> np.ndarray:
        """Image id of each row of `features()`."""
        return self._load(None).image_ids.copy()

    def _load(self, grids: bool | None) -> _Loaded:
        with self._lock:
            for attempt in range(3):
                try:
                    return self._load_once(grids)
                except FileNotFoundError as e:
                    if attempt == 2:
                        raise GalleryError(f"{e.filename}: gallery shard missing; run "
                                           f"`facerank gallery reextract {self.folder}`") from None
                    self._loaded = None  # a concurrent compaction: read the new state
        raise AssertionError("unreachable")

    def _load_once(self, grids: bool | None) -> _Loaded:
        c = self._conn
        c.execute("BEGIN")  # one snapshot for the generation and the rows
        try:
            gen = self._generation()
            old = self._loaded
            want = self.load_grids if grids is None else grids
            if old is not None and old.generation == gen and (old.with_grids or not want):
                return old
            want = want or (old is not None and old.with_grids and grids is None)
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
                      **{f"grid_{g}": f.grids[g] for g in grid_names if g in f.grids}}
            for k, v in fields.items():
                arrays[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
                arrays[k][filled] = v[src[filled]]
        by_shard: dict[str, list[int]] = {}
        for pos in np.flatnonzero(~filled):
            by_shard.setdefault(rows[pos][9], []).append(int(pos))
        for file, positions in by_shard.items():
            part = self._read_shard(file, np.array([rows[p][5] for p in positions]), grid_names,
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
                det_sources=[r[7] for r in rows])
        stamp = hashlib.sha1(np.array(keys, dtype=np.int64).tobytes()).hexdigest()[:16]
        self._loaded = _Loaded(generation=gen, with_grids=bool(want),
                               keys={k: i for i, k in enumerate(keys)}, features=fs,
                               labels=[r[1] for r in rows],
                               image_ids=np.array([r[0] for r in rows], dtype=np.int64),
                               stamp=stamp)
        return self._loaded

    # ---- search --------------------------------------------------------------------------

    def _faiss_index(self, loaded: _Loaded) -> Any:
        """The faiss index over the rows of `loaded` (rebuilt when the row set changed)."""
        if self._index is not None and self._index[0] == loaded.stamp:
            return self._index[1]
        import faiss

        emb = np.ascontiguousarray(l2_normalize(loaded.features.descriptors.astype(np.float32)))
        d = emb.shape[1]
        if self.index_kind == "flat":
            index = faiss.IndexFlatIP(d)
            index.add(emb)
        else:
            path = self.folder / f"index-hnsw-{loaded.stamp}.faiss"
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
                self._save_index(index, path)
        self._index = (loaded.stamp, index)
        return index

    def _save_index(self, index: Any, path: Path) -> None:
        import faiss

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)
            for p in self.folder.glob("index-hnsw-*.faiss"):
                if p != path:
                    p.unlink(missing_ok=True)
        except (OSError, RuntimeError):
            tmp.unlink(missing_ok=True)  # the index is only a cache

    def _calibrate(self, loaded: _Loaded, probes: FeatureSet, ranking: Ranking,
                   cal: Calibrator) -> Ranking:
        """Calibrated scores of the Stage-1 candidates; enrolled faces' terms stored once."""
        from facerank.calibrate.gallery_terms import calibrate_ranking, gallery_terms

        with self._lock:
            memo = self._calib_memo
            if memo.get("stamp") != loaded.stamp:
                memo.clear()
                memo.update(stamp=loaded.stamp, emb=loaded.features.embeddings, checked=[])
            if not any(c is cal for c in memo["checked"]):
                cal.check_model(self.meta().get("model_id", ""))
                memo["checked"].append(cal)
            emb = memo["emb"]
            terms = gallery_terms(self.folder, loaded.stamp, cal, emb, self._calib_terms)
        return calibrate_ranking(cal, probes.embeddings, emb, terms, ranking)

    def stage1(self, probes: FeatureSet, k: int) -> Ranking:
        """Top-k gallery rows by cosine for each probe (faiss); k is clipped to the gallery."""
        return self._stage1(self._load(None), probes, k)

    def _stage1(self, loaded: _Loaded, probes: FeatureSet, k: int) -> Ranking:
        n = len(loaded.features)
        if n == 0:
            raise GalleryError(f"gallery {self.folder} is empty; add images with "
                               "`facerank gallery add`")
        if probes.descriptors.ndim != 2 or probes.descriptors.shape[1] != \
                loaded.features.descriptors.shape[1]:
            raise InputError(f"probe descriptors {probes.descriptors.shape} do not match the "
                             f"gallery's dimension {loaded.features.descriptors.shape[1]}")
        k = max(1, min(int(k), n))
        with self._lock:
            index = self._faiss_index(loaded)
        q = np.ascontiguousarray(probes.embeddings, dtype=np.float32)
        if self.index_kind == "hnsw":
            index.hnsw.efSearch = max(64, 2 * k)
        scores, indices = index.search(q, k)
        bad = (indices < 0).any(axis=1)
        if bad.any():  # HNSW returned fewer than k: answer those probes exactly
            emb = l2_normalize(loaded.features.descriptors.astype(np.float32))
            sim = q[bad] @ emb.T
            order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
            indices[bad] = order
            scores[bad] = np.take_along_axis(sim, order, axis=1)
        scores = scores.astype(np.float32)
        return Ranking(indices.astype(np.int64), scores, {"stage1": scores.copy()})

    def search(self, probe: FeatureSet, k: int = 10, stage2: Reranker | None = None,
               calibrate: Calibrator | None = None) -> list[SearchResult]:
        """Best k gallery matches of one probe face: Stage 1 (faiss), optionally calibrated
        (`facerank.calibrate`), then optional Stage 2."""
        if len(probe) != 1:
            raise InputError(f"search takes one probe face, got {len(probe)}; use search_many")
        return self.search_many(probe, k, stage2, calibrate)[0]

    def search_many(self, probes: FeatureSet, k: int = 10, stage2: Reranker | None = None,
                    calibrate: Calibrator | None = None) -> list[list[SearchResult]]:
        """`search` for each probe row."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        if self._extractor is None and self._check:
            self.extractor  # noqa: B018 - builds the stored extractor and checks the model
        loaded = self._load(True if stage2 is not None else None)
        depth = max(k, int(stage2.k)) if stage2 is not None else k
        if calibrate is not None:  # calibrated Stage 1: re-score the top candidates
            depth = max(depth, CANDIDATES)
        ranking = self._stage1(loaded, probes, depth)
        if calibrate is not None:
            ranking = self._calibrate(loaded, probes, ranking, calibrate)
        if stage2 is not None:
            ranking = stage2.rerank(probes, loaded.features, ranking)
        k = min(k, ranking.k)
        out: list[list[SearchResult]] = []
        for q in range(ranking.num_queries):
            res = []
            for j in range(k):
                row = int(ranking.indices[q, j])
                res.append(SearchResult(
                    rank=j + 1, identity=loaded.labels[row], path=loaded.features.paths[row],
                    image_id=int(loaded.image_ids[row]), row=row,
                    score=float(ranking.scores[q, j]),
                    stage_scores={n: float(s[q, j]) for n, s in ranking.stage_scores.items()}))
            out.append(res)
        return out
