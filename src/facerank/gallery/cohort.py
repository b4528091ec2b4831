"""The gallery's own identity cohort (IDA-R's anchors), stored beside the gallery.

`gallery add`, `remove`, `rename`, `compact` and `reextract` rebuild it after their commit:
one anchor per enrolled identity, the normalised mean of that identity's faces
(`facerank.calibrate.cohort.identity_cohort`). It is written like a shard: to a temporary
name, fsync'd, renamed to `cohort-<digest>.npz`, then the folder fsync'd; older cohort files
are deleted afterwards.

The digest is a hash of the rows it was built from (the snapshot's row-set stamp, every row's
identity name, the feature model). A search reads only the file whose digest matches the
gallery's current rows, so a process killed between a commit and the cohort write (or a file
that was damaged, or left by an older version) is never used: the cohort is rebuilt from the
rows and written again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from facerank.calibrate.anchors import AnchorSet
from facerank.calibrate.cohort import identity_cohort
from facerank.gallery.store import Snapshot, fsync_dir

__all__ = ["PREFIX", "cohort_digest", "cohort_path", "load_cohort", "stored_cohort",
           "write_cohort"]

PREFIX = "cohort-"


def cohort_digest(snapshot: Snapshot, model_id: str) -> str:
    """Hash of the rows a cohort is built from: row-set stamp, identity names, model."""
    h = hashlib.sha1(f"{snapshot.stamp}\n{model_id}\n".encode())
    h.update("\n".join(snapshot.labels).encode())
    return h.hexdigest()[:20]


def cohort_path(folder: Path, digest: str) -> Path:
    return Path(folder) / f"{PREFIX}{digest}.npz"


def load_cohort(folder: Path, digest: str, model_id: str) -> AnchorSet | None:
    """The stored cohort built from the rows with this digest; None if absent, unreadable, or
    made from other rows or another model (never trusted then)."""
    path = cohort_path(folder, digest)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = z["embeddings"].astype(np.float32)
            labels = z["labels"]
            meta = json.loads(str(z["meta"]))
        if meta.get("digest") != digest or meta.get("model_id") != model_id \
                or emb.ndim != 2 or len(emb) != len(labels) or len(emb) < 1:
            return None
        return AnchorSet(emb, model_id, labels, meta)
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, whatever broke
        return None


def write_cohort(folder: Path, cohort: AnchorSet, digest: str) -> Path | None:
    """Write durably (temp file, fsync, rename, fsync the folder) and delete other cohorts.
    Returns the path, or None if the folder is not writable (the cohort is only a cache of
    the rows, so a read-only gallery still searches)."""
    folder = Path(folder)
    final = cohort_path(folder, digest)
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    meta = {**cohort.meta, "digest": digest, "model_id": cohort.model_id, "n": len(cohort)}
    try:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=cohort.embeddings.astype(np.float32),
                     labels=np.asarray(cohort.labels, dtype=str),
                     meta=np.array(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(folder)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    for p in folder.glob(f"{PREFIX}*.npz"):
        if p != final:
            p.unlink(missing_ok=True)
    return final


def stored_cohort(folder: Path, snapshot: Snapshot, model_id: str) -> AnchorSet | None:
    """The cohort of the snapshot's rows: the stored file if its digest matches, else built
    from the rows and stored. None for a gallery of fewer than 2 identities."""
    if len(set(snapshot.labels)) < 2:
        return None
    digest = cohort_digest(snapshot, model_id)
    cohort = load_cohort(folder, digest, model_id)
    if cohort is None:
        cohort = identity_cohort(snapshot.features.embeddings, np.asarray(snapshot.labels),
                                 model_id, digest=digest)
        write_cohort(folder, cohort, digest)
    return cohort
