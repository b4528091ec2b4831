"""Clusters and the user's corrections, persisted crash-safely in one SQLite file.

`ClusterStore.open(folder)` uses `<folder>/clusters.sqlite` (WAL, synchronous=FULL, every
change one transaction, so a kill -9 leaves either the old or the new state). Faces are keyed
by a string (a gallery image id, or a photo's content hash + face index).

  assignment   face -> cluster id (pinned = set by the user: kept by every later run)
  names        cluster id -> a person's name
  banned       (face, cluster): "not this person"; the face never joins that cluster again
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from facerank.errors import GalleryError, InputError

DB_NAME = "clusters.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS assignment (face TEXT PRIMARY KEY, cluster INTEGER NOT NULL,
                                       pinned INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS names (cluster INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS banned (face TEXT NOT NULL, cluster INTEGER NOT NULL,
                                   PRIMARY KEY (face, cluster));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ClusterStore:
    """The clusters of one folder (see the module doc)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, folder: str | Path) -> ClusterStore:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / DB_NAME
        try:
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            conn.execute("SELECT count(*) FROM assignment").fetchone()
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{path}: not a readable cluster database ({e}); move it away "
                               "to start the clusters afresh") from None
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ClusterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # reading
    def assignment(self) -> dict[str, tuple[int, bool]]:
        """face -> (cluster, pinned)."""
        rows = self.conn.execute("SELECT face, cluster, pinned FROM assignment").fetchall()
        return {f: (int(c), bool(p)) for f, c, p in rows}

    def names(self) -> dict[int, str]:
        return {int(c): n for c, n in self.conn.execute("SELECT cluster, name FROM names")}

    def banned(self) -> set[tuple[str, int]]:
        return {(f, int(c)) for f, c in self.conn.execute("SELECT face, cluster FROM banned")}

    def next_cluster(self) -> int:
        row = self.conn.execute("SELECT max(cluster) FROM assignment").fetchone()
        row2 = self.conn.execute("SELECT max(cluster) FROM names").fetchone()
        return max(int(row[0] if row[0] is not None else -1),
                   int(row2[0] if row2[0] is not None else -1)) + 1

    def members(self, cluster: int) -> list[str]:
        return [f for (f,) in self.conn.execute(
            "SELECT face FROM assignment WHERE cluster = ? ORDER BY face", (cluster,))]

    # writing (each call one transaction)
    def assign(self, faces: Sequence[str], clusters: Sequence[int]) -> None:
        """Record a run's assignment of new faces (cluster -1 = unassigned); pinned faces are
        never overwritten."""
        with self.write() as c:
            c.executemany(
                "INSERT INTO assignment (face, cluster, pinned) VALUES (?, ?, 0) "
                "ON CONFLICT(face) DO UPDATE SET cluster = excluded.cluster WHERE pinned = 0",
                [(f, int(k)) for f, k in zip(faces, clusters, strict=True)])

    def _check(self, c: sqlite3.Connection, cluster: int) -> None:
        if c.execute("SELECT 1 FROM assignment WHERE cluster = ? LIMIT 1",
                     (cluster,)).fetchone() is None:
            raise InputError(f"no cluster {cluster}; list them with `facerank cluster` output")

    def merge(self, into: int, other: int) -> None:
        """All faces of `other` join `into`, pinned; `other`'s name goes if `into` has none."""
        if into == other:
            raise InputError(f"cannot merge cluster {into} with itself")
        with self.write() as c:
            self._check(c, into)
            self._check(c, other)
            c.execute("UPDATE assignment SET cluster = ?, pinned = 1 WHERE cluster = ?",
                      (into, other))
            c.execute("UPDATE assignment SET pinned = 1 WHERE cluster = ?", (into,))
            c.execute("INSERT OR IGNORE INTO names (cluster, name) SELECT ?, name FROM names "
                      "WHERE cluster = ?", (into, other))
            c.execute("DELETE FROM names WHERE cluster = ?", (other,))
            c.execute("DELETE FROM banned WHERE cluster = ?", (other,))

    def split(self, cluster: int, faces: Sequence[str]) -> int:
        """Move `faces` of `cluster` to a new cluster (both pinned; each side banned from the
        other); returns the new cluster id."""
        faces = list(dict.fromkeys(faces))
        with self.write() as c:
            self._check(c, cluster)
            mem = {f for (f,) in c.execute("SELECT face FROM assignment WHERE cluster = ?",
                                           (cluster,))}
            bad = [f for f in faces if f not in mem]
            if not faces or bad:
                raise InputError(f"split: {bad[0] if bad else 'no face'} is not in cluster "
                                 f"{cluster}")
            new = self.next_cluster()
            c.executemany("UPDATE assignment SET cluster = ?, pinned = 1 WHERE face = ?",
                          [(new, f) for f in faces])
            c.execute("UPDATE assignment SET pinned = 1 WHERE cluster = ?", (cluster,))
            c.executemany("INSERT OR IGNORE INTO banned VALUES (?, ?)",
                          [(f, cluster) for f in faces])
            c.executemany("INSERT OR IGNORE INTO banned VALUES (?, ?)",
                          [(f, new) for f in mem.difference(faces)])
        return new

    def rename(self, cluster: int, name: str) -> None:
        if not name.strip():
            raise InputError("a cluster name must not be empty")
        with self.write() as c:
            self._check(c, cluster)
            c.execute("INSERT INTO names (cluster, name) VALUES (?, ?) ON CONFLICT(cluster) "
                      "DO UPDATE SET name = excluded.name", (cluster, name.strip()))

    def not_this_person(self, face: str, cluster: int) -> None:
        """The face leaves `cluster` (unassigned, pinned) and never joins it again."""
        with self.write() as c:
            row = c.execute("SELECT cluster FROM assignment WHERE face = ?", (face,)).fetchone()
            if row is None or int(row[0]) != cluster:
                raise InputError(f"face {face} is not in cluster {cluster}")
            c.execute("UPDATE assignment SET cluster = -1, pinned = 1 WHERE face = ?", (face,))
            c.execute("INSERT OR IGNORE INTO banned VALUES (?, ?)", (face, cluster))
