"""The clusters view's data: a gallery's faces grouped into people, corrections, explanations.

Clusters and corrections live in the gallery folder (`clusters.sqlite`, see
`facerank.clustering.store`); faces are keyed "img<image id>".
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from facerank.clustering.incremental import explain
from facerank.clustering.pipeline import cluster_features, default_method
from facerank.clustering.store import ClusterStore
from facerank.errors import InputError
from facerank.gallery import StoredGallery


class ClusterView:
    """Cluster a gallery's faces on demand and apply the user's merge / split / not-this."""

    def __init__(self, gallery: StoredGallery) -> None:
        self.gallery = gallery
        self.lock = threading.Lock()

    def _run(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
        """The unlabelled faces (as `facerank gallery cluster`), or every face when the
        gallery holds none."""
        fs = self.gallery.features(grids=False)
        ids = self.gallery.image_ids()
        rows = self.gallery.unlabelled_rows()
        if len(rows):
            fs, ids = fs.take(rows), ids[rows]
        with ClusterStore.open(self.gallery.store.folder) as st:
            res = cluster_features(fs, self.gallery.extractor.model_id,
                                   [f"img{int(i)}" for i in ids], store=st)
        return fs.descriptors.astype(np.float32), ids, res.labels, res.names

    def clusters(self, limit: int = 200) -> dict[str, Any]:
        """{"clusters": [{id, name, size, images: [image ids]}], "unassigned": [ids]}."""
        with self.lock:
            _, ids, lab, names = self._run()
        out = []
        for c in np.unique(lab[lab >= 0]):
            members = ids[lab == c]
            out.append({"id": int(c), "name": names.get(int(c)), "size": int(len(members)),
                        "images": [int(i) for i in members[:48]]})
        out.sort(key=lambda d: -d["size"])
        return {"clusters": out[:limit], "total": len(out),
                "unassigned": [int(i) for i in ids[lab < 0][:200]]}

    def why(self, image_id: int) -> dict[str, Any]:
        """Why a face is in its cluster: its nearest members and their match probabilities."""
        with self.lock:
            x, ids, lab, _ = self._run()
            where = np.flatnonzero(ids == image_id)
            if len(where) == 0:
                raise InputError(f"no gallery image with id {image_id}")
            method = default_method(self.gallery.extractor.model_id)
            near = explain(x, lab, int(where[0]), method)
        for d in near:
            d["image"] = int(ids[d.pop("row")])
        return {"image": image_id, "cluster": int(lab[where[0]]), "nearest": near}

    def merge(self, into: int, other: int) -> None:
        with self.lock, ClusterStore.open(self.gallery.store.folder) as st:
            st.merge(into, other)

    def split(self, cluster: int, image_ids: list[int]) -> int:
        with self.lock, ClusterStore.open(self.gallery.store.folder) as st:
            return st.split(cluster, [f"img{i}" for i in image_ids])

    def not_this(self, image_id: int, cluster: int) -> None:
        with self.lock, ClusterStore.open(self.gallery.store.folder) as st:
            st.not_this_person(f"img{image_id}", cluster)

    def rename(self, cluster: int, name: str) -> None:
        with self.lock, ClusterStore.open(self.gallery.store.folder) as st:
            st.rename(cluster, name)
