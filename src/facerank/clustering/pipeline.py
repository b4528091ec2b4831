"""Photos (or a gallery's faces) -> clusters of people, with JSON, contact sheets and a store.

One face per photo (the largest), through the same extractor and cache as the rest of facerank.
The default method is `ProbabilityCluster` with the probability map and thresholds fitted on
half of LFW's identities for each backbone (DEFAULTS; the other half is the reported test).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerank.clustering.algorithms import ProbabilityCluster
from facerank.clustering.probability import LogisticProb
from facerank.errors import FacerankError, InputError

if TYPE_CHECKING:
    from facerank.clustering.store import ClusterStore
    from facerank.face.features import FeatureSet

# fitted on LFW identity fold True (benchmarks/cluster.py; results in benchmarks/results/)
DEFAULTS: dict[str, dict[str, Any]] = {
    "dlib": {"prob": LogisticProb(219.18, -206.26), "p_link": 0.6, "min_confidence": 0.7},
    "sface": {"prob": LogisticProb(47.83, -23.66), "p_link": 0.5, "min_confidence": None},
}


def default_method(backbone: str) -> ProbabilityCluster:
    """facerank's clustering with the fitted defaults of a backbone name ("dlib", "sface") or
    model id ("dlib_resnet_v1", "sface@...")."""
    name = "dlib" if backbone.startswith("dlib") else backbone.split("@")[0].split("_")[0]
    if name not in DEFAULTS:
        raise InputError(f"no clustering defaults for backbone {backbone!r}; use dlib or sface")
    d = DEFAULTS[name]
    return ProbabilityCluster(d["prob"], p_link=d["p_link"], min_confidence=d["min_confidence"])


@dataclass
class Clusters:
    """The answer: per face its path, key, cluster (-1 = unassigned) and cluster names."""

    paths: list[str]
    keys: list[str]
    labels: np.ndarray  # (N,) int64
    names: dict[int, str] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def groups(self) -> dict[int, list[str]]:
        """cluster id -> paths, biggest first; unassigned faces under -1."""
        out: dict[int, list[str]] = {}
        order = np.argsort(-np.bincount(self.labels[self.labels >= 0]), kind="stable") \
            if (self.labels >= 0).any() else []
        for c in order:
            out[int(c)] = [p for p, lab in zip(self.paths, self.labels, strict=True) if lab == c]
        out = {c: v for c, v in out.items() if v}
        left = [p for p, lab in zip(self.paths, self.labels, strict=True) if lab < 0]
        if left:
            out[-1] = left
        return out

    def __len__(self) -> int:
        return len({int(x) for x in self.labels if x >= 0})

    def to_dict(self) -> dict[str, Any]:
        """JSON form: clusters (id, name, size, faces as {path, key}), unassigned, skipped."""
        key_of = dict(zip(self.paths, self.keys, strict=True))
        g = self.groups()

        def faces(ps: list[str]) -> list[dict[str, str]]:
            return [{"path": p, "key": key_of[p]} for p in ps]

        return {"clusters": [{"id": c, "name": self.names.get(c), "size": len(v),
                              "faces": faces(v)} for c, v in g.items() if c >= 0],
                "unassigned": faces(g.get(-1, [])), "faces": len(self.paths),
                "skipped": [{"path": p, "reason": m} for p, m in self.failures]}


def face_keys(fs: FeatureSet) -> list[str]:
    """A stable key per face: its file's content hash (the same photo twice is one face)."""
    from facerank.face.features import file_digest

    keys = []
    for p in fs.paths:
        try:
            keys.append(file_digest(Path(p).read_bytes()))
        except OSError:
            keys.append(str(p))
    return keys


def confidence_of(fs: FeatureSet, model_id: str) -> np.ndarray | None:
    """Relative URL confidence per face (None when the backbone has no head)."""
    from facerank.uncertainty.confidence import confidences, default_head, relative

    found = default_head(model_id)
    if found is None or len(fs) == 0:
        return None
    try:
        return relative(confidences(fs, found[0]).face, found[1])
    except FacerankError:
        return None


def cluster_features(fs: FeatureSet, model_id: str, keys: Sequence[str] | None = None,
                     store: ClusterStore | None = None,
                     method: ProbabilityCluster | None = None) -> Clusters:
    """Cluster a FeatureSet; with `store`, incrementally (known faces keep their cluster, the
    user's corrections hold) and recorded."""
    from facerank.clustering.incremental import update

    method = method or default_method(model_id)
    keys = list(keys) if keys is not None else face_keys(fs)
    x = fs.descriptors.astype(np.float32)
    if store is not None:
        labels = update(store, keys, x, method)
        names = store.names()
    else:
        # duplicates of one file are one face
        uniq, first, inv = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
        conf = confidence_of(fs, model_id) if method.min_confidence is not None else None
        lab_u = method.fit(x[first], None if conf is None else conf[first])
        labels = lab_u[inv]
        names = {}
    return Clusters([str(p) for p in fs.paths], keys, np.asarray(labels, np.int64), names,
                    list(fs.failures))


def cluster_paths(paths: Sequence[str | Path], backbone: str = "dlib", detector: str = "yunet",
                  store: str | Path | None = None, progress: bool = False) -> Clusters:
    """Photos or folders -> Clusters (one face per photo; photos without one are listed in
    `failures`). store: a folder keeping clusters and corrections between runs."""
    from facerank.clustering.store import ClusterStore
    from facerank.face.features import make_extractor
    from facerank.face.imageio import expand_images

    files = expand_images([Path(p) for p in paths])
    fx = make_extractor(detector, "largest", "none", backbone=backbone)
    fs = fx.extract_paths(files, progress=progress, description="faces")
    if store is None:
        return cluster_features(fs, fx.model_id)
    with ClusterStore.open(store) as st:
        return cluster_features(fs, fx.model_id, store=st)


def write_outputs(result: Clusters, out: str | Path, boxes: np.ndarray | None = None,
                  thumb: int = 96, per_row: int = 8, max_faces: int = 64) -> Path:
    """<out>/clusters.json and <out>/cluster-<id>.png (a contact sheet of up to `max_faces`
    face crops per cluster; `boxes` (N, 4) crops the faces, else whole photos)."""
    from PIL import Image

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "clusters.json").write_text(json.dumps(result.to_dict(), indent=2))
    row_of = {p: i for i, p in enumerate(result.paths)}
    for c, members in result.groups().items():
        if c < 0:
            continue
        tiles = []
        for p in members[:max_faces]:
            try:
                im = Image.open(p).convert("RGB")
            except OSError:
                continue
            if boxes is not None:
                x0, y0, x1, y1 = boxes[row_of[p]]
                if x1 > x0 and y1 > y0:
                    im = im.crop((int(x0), int(y0), int(x1), int(y1)))
            tiles.append(im.resize((thumb, thumb)))
        if not tiles:
            continue
        cols = min(per_row, len(tiles))
        rows = (len(tiles) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * thumb, rows * thumb), "white")
        for i, t in enumerate(tiles):
            sheet.paste(t, ((i % cols) * thumb, (i // cols) * thumb))
        sheet.save(out / f"cluster-{c}.png")
    return out / "clusters.json"
