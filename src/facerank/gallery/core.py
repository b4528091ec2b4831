"""`StoredGallery`: enrol faces and search them — a feature store plus a Stage-1 vector index.

    StoredGallery ──► FeatureStore (store.py)  SQLite metadata + immutable array shards, crash-safe
            └─► VectorIndex  (index.py)  faiss flat/hnsw (default) or Milvus (milvus.py)

Extraction happens here (in-process, or on a Ray cluster via `facerank.scale.ray`), so the
store only ever sees finished features; search asks the index for candidate image ids, maps
them to rows of the store's snapshot and hands those to Stage 2.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facerank._util.progress import progress_bar
from facerank.errors import FacerankError, GalleryError, InputError
from facerank.face.features import FaceFeatures, FeatureExtractor, FeatureSet, file_digest
from facerank.face.imageio import list_images
from facerank.gallery.index import INDEX_KINDS, VectorIndex, open_index
from facerank.gallery.store import AddReport, FeatureStore, Snapshot, extractor_meta
from facerank.ranking import Ranking

if TYPE_CHECKING:
    from facerank.calibrate.base import Calibrator
    from facerank.rerank.base import Reranker

__all__ = ["CANDIDATES", "DEFAULT_BATCH", "UNLABELLED", "UNLABELLED_NAMES", "IdentityFrom",
           "IndexKind", "SearchResult", "StoredGallery", "batch_size_from_env", "identity_of",
           "is_unlabelled"]


CANDIDATES = 100  # Stage-1 candidates a calibrated search re-scores (facerank.calibrate)
# a batch's faces -> a reason per face to leave it out (None: keep), e.g. a URL confidence floor
Refuse = Callable[[list[FaceFeatures]], list[str | None]]

DEFAULT_BATCH = 64
IndexKind = Literal["flat", "hnsw", "milvus"]
IdentityFrom = Literal["folder", "filename"]
# A face enrolled under one of these placeholder names (any case) carries no identity label:
# `gallery add --unlabelled` uses UNLABELLED; a folder of photos called "unknown" counts too.
UNLABELLED = "unlabelled"
UNLABELLED_NAMES = frozenset({"unlabelled", "unlabeled", "unknown", "unnamed"})


def is_unlabelled(name: str) -> bool:
    """Whether an identity name is a placeholder (`UNLABELLED_NAMES`, any case) rather than a
    person's name."""
    return str(name).strip().lower() in UNLABELLED_NAMES


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


@dataclass(frozen=True)
class SearchResult:
    """One gallery match of a probe."""

    rank: int  # 1-based
    identity: str
    path: str
    image_id: int
    row: int  # row of `StoredGallery.features()`
    score: float  # the final score that orders the results
    stage_scores: dict[str, float]  # "stage1" (cosine) and each Stage-2 score by name
    confidence: float | None = None  # URL confidence of the gallery face (None: no URL head)
    confidences: list[float] | None = None  # its (K,) sub-embedding confidences
    probability: float | None = None  # match probability of the pair (Stage-1 score)

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
                "confidence": self.confidence, "confidences": self.confidences,
                "match_probability": self.probability}


def _refuse(refuse: Refuse, batch: Sequence[tuple[str, str, str]],
            feats: list[FaceFeatures | None], report: AddReport) -> list[FaceFeatures | None]:
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


# A batch extractor: (paths) -> (features or None per path, failures). In-process by default;
# `facerank.scale.ray.RayExtract` runs the same extractor on a Ray cluster.
class _InProcess:
    def __init__(self, fx: FeatureExtractor) -> None:
        self.fx = fx

    def __call__(self, paths: Sequence[str]) -> tuple[list[FaceFeatures | None],
                                                      list[tuple[str, str]]]:
        """Features of distinct paths, in order (None for a failure); never raises on a file."""
        fx = self.fx
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


class StoredGallery:
    """A persistent, crash-safe gallery. Use `StoredGallery.create` or `StoredGallery.open`."""

    def __init__(self, store: FeatureStore, extractor: FeatureExtractor | None, index: str,
                 load_grids: bool, batch_size: int | None, check_model: bool = True) -> None:
        self.store = store
        self.folder = store.folder
        self._check = check_model
        self._lock = threading.RLock()
        self._extractor = extractor
        meta = store.meta()
        store.journal_enabled = meta.get("index", "faiss") != "faiss"
        self.index: VectorIndex = open_index(store, index, meta)
        self.index_kind = self.index.kind
        self.load_grids = load_grids
        self.batch_size = batch_size or batch_size_from_env()
        self._loaded: Snapshot | None = None
        self._calib_terms: dict[str, Any] = {}  # calibrated search: the gallery's terms
        self._calib_memo: dict[str, Any] = {}

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, extractor: FeatureExtractor | None = None,
               index: IndexKind = "flat", load_grids: bool = True,
               batch_size: int | None = None, milvus_uri: str | None = None,
               milvus_collection: str | None = None) -> StoredGallery:
        """Make a new, empty gallery in `folder` (missing or empty) for `extractor`'s model.

        index "milvus" keeps the embeddings in the Milvus collection at `milvus_uri` (a
        milvus-lite `.db` file or `http://host:19530`); grids and metadata stay in `folder`."""
        if index not in INDEX_KINDS:
            raise InputError(f"unknown index {index!r}; use {', '.join(INDEX_KINDS)}")
        extractor = extractor or FeatureExtractor()
        meta = extractor_meta(extractor)
        if index == "milvus":
            from facerank.gallery.milvus import DEFAULT_COLLECTION, MilvusIndex

            if not milvus_uri:
                raise InputError("--index milvus needs --milvus-uri (a .db file for "
                                 "milvus-lite, or http://host:19530)")
            meta |= MilvusIndex.create_meta(milvus_uri, milvus_collection or DEFAULT_COLLECTION)
        elif milvus_uri:
            raise InputError("--milvus-uri is only for --index milvus")
        store = FeatureStore.create(folder, meta)
        try:
            return cls(store, extractor, index, load_grids, batch_size)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(cls, folder: str | Path, extractor: FeatureExtractor | None = None,
             index: IndexKind = "flat", load_grids: bool = True,
             batch_size: int | None = None, check_model: bool = True) -> StoredGallery:
        """Open an existing gallery; deletes orphan shards left by a crash and applies index
        changes a crash left pending.

        extractor: None builds one from the stored detector settings when first needed.
        check_model: False skips the model check (only for `reextract`).
        index: flat or hnsw for a faiss gallery (a Milvus gallery always uses its collection).
        """
        if index not in INDEX_KINDS:
            raise InputError(f"unknown index {index!r}; use flat or hnsw")
        store = FeatureStore.open(folder)
        try:
            g = cls(store, extractor, index, load_grids, batch_size, check_model)
            if extractor is not None and check_model:
                store.check_model(store.meta(), extractor)
            if store.journal_enabled:
                g.index.sync(None)  # type: ignore[arg-type]
        except BaseException:
            store.close()
            raise
        return g

    def close(self) -> None:
        """Close the database and the index (the in-memory copy is dropped too)."""
        with self._lock:
            self.index.close()
            self.store.close()
            self._loaded = None

    def __enter__(self) -> StoredGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StoredGallery({str(self.folder)!r}, images={len(self)})"

    # ---- model ---------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        """The stored key/value metadata (model id, config digest, versions, grids, detector)."""
        return self.store.meta()

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor of this gallery (built from the stored settings if not given)."""
        with self._lock:
            if self._extractor is None:
                from facerank.face.detect import FaceDetector
                from facerank.face.features import landmark_models
                from facerank.models.backbone import backbone_name

                meta = self.meta()
                built = backbone_name(meta.get("model_id", ""))  # the gallery's backbone
                cfg = json.loads(meta["detector"])
                need68, need5 = landmark_models(built, cfg.get("method", "hog"),
                                                cfg.get("fallback", "none"))
                det = FaceDetector(**cfg, landmarks68=need68, landmarks5=need5)
                self._extractor = FeatureExtractor(backbone=built, detector=det,
                                                   grids=json.loads(meta["grids"]))
                if self._check:
                    self.store.check_model(meta, self._extractor)
            return self._extractor

    # ---- adding --------------------------------------------------------------------------

    def add_files(self, paths: Sequence[str | Path], identities: Sequence[str],
                  progress: bool = True, extract: Any = None,
                  refuse: Refuse | None = None) -> AddReport:
        """Enrol images under identity names; files already present (same bytes) are skipped.

        refuse: given a batch's faces, a reason per face to leave it out (None: keep it), e.g.
        a URL confidence floor; refused faces are reported as failures and not enrolled.

        Bad files are skipped and listed in the report. Each batch of `batch_size` images is
        committed on its own, so an interrupted run keeps its batches and a re-run resumes.
        extract: a batch extractor (default: this process; see `facerank.scale.ray`).
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
        present = self.store.present_sha1s([d for _, _, d in todo])
        report.already_present += sum(d in present for _, _, d in todo)
        todo = [t for t in todo if t[2] not in present]
        fx = self.extractor
        batches = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        extract = extract or _InProcess(fx)
        stream = (extract.stream(batches) if hasattr(extract, "stream")
                  else ((b, *extract([p for p, _, _ in b])) for b in batches))
        with progress_bar(progress, "adding", len(paths)) as advance:
            advance(len(paths) - len(todo))
            for batch, feats, failures in stream:
                report.failures.extend(failures)
                if refuse is not None:
                    feats = _refuse(refuse, batch, feats, report)
                ok = [(t, f) for t, f in zip(batch, feats, strict=True) if f is not None]
                if ok:
                    added = self.store.commit_batch([t for t, _ in ok], [f for _, f in ok], fx)
                    report.added += added
                    report.already_present += len(ok) - added
                    report.identities.update(t[1] for t, _ in ok)
                    report.batches += 1
                    self._sync_index()
                advance(len(batch))
        if report.added:
            self.refresh_cohort()
        report.seconds = time.perf_counter() - t0
        return report

    def add_folder(self, folder: str | Path, identity_from: IdentityFrom = "folder",
                   progress: bool = True, identity: str | None = None,
                   extract: Any = None) -> AddReport:
        """Enrol every image under `folder`; identity = parent folder name (or `identity`)."""
        files = list_images(folder)
        names = [identity or identity_of(f, identity_from) for f in files]
        return self.add_files(files, names, progress=progress, extract=extract)

    def _sync_index(self) -> None:
        """Push journaled changes to an external index right after a commit."""
        if self.store.journal_enabled:
            self.index.sync(None)  # type: ignore[arg-type]

    # ---- editing -------------------------------------------------------------------------

    def remove_identity(self, name: str) -> int:
        """Remove an identity and all its images; returns the number of images removed."""
        n = self.store.remove_identity(name)
        self._sync_index()
        self.refresh_cohort()
        return n

    def remove_image(self, image_id: int) -> None:
        """Remove one image (its identity goes too when it was the last one)."""
        self.store.remove_image(image_id)
        self._sync_index()
        self.refresh_cohort()

    def rename_identity(self, old: str, new: str, merge: bool = False) -> None:
        """Rename an identity; with `merge`, an existing `new` absorbs the images of `old`."""
        self.store.rename_identity(old, new, merge)
        self.refresh_cohort()

    def compact(self, min_live_fraction: float = 0.5) -> int:
        """Drop empty shards and rewrite sparse ones into one new shard; returns shards freed."""
        freed = self.store.compact(min_live_fraction)
        if freed:
            self.refresh_cohort()
        return freed

    def reextract(self, progress: bool = True, drop_failed: bool = False) -> AddReport:
        """Recompute every image's features with the current extractor, atomically.

        All new shards are written and the rows switched in one transaction; a crash or an
        error leaves the gallery as it was. Files that no longer load (or changed since they
        were added) make it fail, unless `drop_failed` removes those images.
        """
        fx = self.extractor
        with self._lock:
            report = self.store.reextract(fx, _InProcess(fx), self.batch_size, progress,
                                          drop_failed)
            self._check = True
            self._loaded = None
            for p in self.folder.glob("calib-*.npy"):  # calibration terms of the old features
                p.unlink(missing_ok=True)
            self._calib_terms.clear()
            self._calib_memo.clear()
        self._sync_index()
        self.refresh_cohort()
        return report

    # ---- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.store)

    def identities(self) -> list[tuple[str, int]]:
        """(name, number of images), sorted by name."""
        return self.store.identities()

    def images(self, identity: str | None = None) -> list[dict[str, Any]]:
        """Image records (id, identity, path, sha1, added_at, det_score, det_source, box)."""
        return self.store.images(identity)

    def features(self, grids: bool | None = None) -> FeatureSet:
        """All enrolled faces as one FeatureSet (rows aligned with `labels()`, `image_ids()`).

        grids: load the patch grids (default: the `load_grids` of `open`). Cached in memory
        until the gallery changes; only new shards are read after an addition.
        """
        return self._load(self.load_grids if grids is None else grids).features

    def labels(self) -> list[str]:
        """Identity name of each row of `features()`."""
        return list(self._load(None).labels)

    def unlabelled_rows(self) -> np.ndarray:
        """(U,) rows of `features()` enrolled without an identity (`is_unlabelled` names)."""
        return np.flatnonzero([is_unlabelled(n) for n in self.labels()]).astype(np.int64)

    def image_ids(self) -> np.ndarray:
        """Image id of each row of `features()`."""
        return self._load(None).image_ids.copy()

    def _load(self, grids: bool | None) -> Snapshot:
        with self._lock:
            old = self._loaded
            want = self.load_grids if grids is None else grids
            # keep grids once loaded unless the caller asked for none explicitly
            want = want or (old is not None and old.with_grids and grids is None)
            self._loaded = self.store.snapshot(bool(want), old)
            return self._loaded

    # ---- search --------------------------------------------------------------------------

    def _calibrate(self, loaded: Snapshot, probes: FeatureSet, ranking: Ranking,
                   cal: Calibrator) -> Ranking:
        """Calibrated scores of the Stage-1 candidates; enrolled faces' terms stored once.
        IDA-R / AS-norm with the bundled anchors use the gallery's own identities as the
        cohort when it has enough of them (`cohort_used`)."""
        from facerank.calibrate.gallery_terms import (
            calibrate_ranking,
            cohort_ranking,
            gallery_terms,
        )

        with self._lock:
            memo = self._calib_memo
            if memo.get("stamp") != loaded.stamp:
                memo.clear()
                memo.update(stamp=loaded.stamp, emb=loaded.features.embeddings, checked=[])
            if not any(c is cal for c in memo["checked"]):
                cal.check_model(self.meta().get("model_id", ""))
                memo["checked"].append(cal)
            emb = memo["emb"]
            cohort = self._cohort(loaded, cal)
            if cohort is None and getattr(cal, "auto", False):
                return ranking  # --calibrate auto abstains: too few identities for a cohort
            if cohort is not None:
                labels = np.asarray(loaded.labels)
            else:
                terms = gallery_terms(self.folder, loaded.stamp, cal, emb, self._calib_terms)
        if cohort is not None:
            return cohort_ranking(cal, cohort, probes.embeddings, emb, labels, ranking)
        return calibrate_ranking(cal, probes.embeddings, emb, terms, ranking)

    def cohort_used(self, cal: Calibrator | None) -> dict | None:
        """Which cohort a calibrated search with `cal` uses: {"cohort": "gallery" | "lfw" |
        "anchors file" | "none", "identities": n, "minimum": m, "note": ...}."""
        if cal is None:
            return None
        from facerank.calibrate.cohort import choose_cohort, minimum_identities

        n = len(self.identities())
        auto = bool(getattr(cal, "auto", False))
        least = minimum_identities(auto)
        if not getattr(cal, "gallery_cohort", False):
            kind = "anchors file" if cal.name in ("ida-r", "asnorm") else "none"
            return {"cohort": kind, "identities": n, "minimum": least, "note": None}
        kind = choose_cohort(n, least)
        if auto:
            return {"cohort": "gallery" if kind == "gallery" else "none", "identities": n,
                    "minimum": least, "calibrator": cal.name if kind == "gallery"
                    else "none", "note": None}
        note = None if kind == "gallery" else (
            f"the gallery has {n} identities, fewer than the {least} its own cohort "
            "needs; using the bundled LFW anchors")
        return {"cohort": kind, "identities": n, "minimum": least, "note": note}

    def calibration_used(self, cal: Calibrator | None) -> Calibrator | None:
        """`cal`, or None where `--calibrate auto` abstains on this gallery (cosine)."""
        used = self.cohort_used(cal)
        return None if used is None or used.get("calibrator") == "none" else cal

    def _cohort(self, loaded: Snapshot, cal: Calibrator) -> Any:
        """The gallery's identity cohort, None to use the calibrator's own anchors. Read from
        the `cohort-<digest>.npz` stored beside the gallery (`facerank.gallery.cohort`) when its
        digest matches the current rows, else rebuilt from the rows and stored again, so a
        crash between a commit and the cohort write cannot leave it out of date."""
        if not getattr(cal, "gallery_cohort", False):
            return None
        from facerank.calibrate.cohort import choose_cohort, minimum_identities
        from facerank.gallery.cohort import cohort_digest, stored_cohort

        least = minimum_identities(bool(getattr(cal, "auto", False)))
        if choose_cohort(len(set(loaded.labels)), least) != "gallery":
            return None
        model_id = self.meta().get("model_id", "")
        key = "cohort-" + cohort_digest(loaded, model_id)
        if key not in self._calib_memo:
            self._calib_memo[key] = stored_cohort(self.folder, loaded, model_id)
        return self._calib_memo[key]

    def refresh_cohort(self) -> Path | None:
        """Store the cohort of the current rows (after add / remove / rename / compact /
        reextract); returns its file, None for fewer than 2 identities."""
        from facerank.gallery.cohort import cohort_digest, cohort_path, stored_cohort

        with self._lock:
            loaded = self.store.snapshot(False, None)
            model_id = self.meta().get("model_id", "")
            if stored_cohort(self.folder, loaded, model_id) is None:
                return None
            return cohort_path(self.folder, cohort_digest(loaded, model_id))

    def stage1(self, probes: FeatureSet, k: int) -> Ranking:
        """Top-k gallery rows by cosine for each probe; k is clipped to the gallery."""
        return self._stage1(self._load(None), probes, k)

    def _stage1(self, loaded: Snapshot, probes: FeatureSet, k: int) -> Ranking:
        n = len(loaded.features)
        if n == 0:
            raise GalleryError(f"gallery {self.folder} is empty; add images with "
                               "`facerank gallery add`")
        if probes.descriptors.ndim != 2 or probes.descriptors.shape[1] != \
                loaded.features.descriptors.shape[1]:
            raise InputError(f"probe descriptors {probes.descriptors.shape} do not match the "
                             f"gallery's dimension {loaded.features.descriptors.shape[1]}")
        k = max(1, min(int(k), n))
        q = np.ascontiguousarray(probes.embeddings, dtype=np.float32)
        with self._lock:
            self.index.sync(loaded)
            scores, ids = self.index.search(q, k)
        # image ids -> rows of the snapshot (ids ascend); ids the snapshot lacks count as gaps
        pos = np.searchsorted(loaded.image_ids, np.maximum(ids, 0))
        pos = np.minimum(pos, n - 1)
        indices = np.where((ids >= 0) & (loaded.image_ids[pos] == ids), pos, -1)
        bad = (indices < 0).any(axis=1)
        if bad.any():  # the index returned fewer than k: answer those probes exactly
            from facerank.face.features import l2_normalize

            emb = l2_normalize(loaded.features.descriptors.astype(np.float32))
            sim = q[bad] @ emb.T
            order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
            indices[bad] = order
            scores[bad] = np.take_along_axis(sim, order, axis=1)
        scores = scores.astype(np.float32)
        return Ranking(indices.astype(np.int64), scores, {"stage1": scores.copy()})

    def search(self, probe: FeatureSet, k: int = 10, stage2: Reranker | None = None,
               calibrate: Calibrator | None = None) -> list[SearchResult]:
        """Best k gallery matches of one probe face: Stage 1 (index), optionally calibrated
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
