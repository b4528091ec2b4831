"""TinyFace's test set (native low-resolution faces) from its folder layout:

    <root>/Testing_Set/Probe/<id>_<n>.jpg               probes
    <root>/Testing_Set/Gallery_Match/<id>_<n>.jpg       their mates
    <root>/Testing_Set/Gallery_Distractor/<any>.jpg     distractors (no identity)

`root` may also be the Testing_Set folder itself. The identity is the file name up to its
first underscore. Every probe identity must have a mate in Gallery_Match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerank.errors import DataError
from facerank.face.imageio import list_images


@dataclass
class TinyFace:
    """Probe and gallery images; gallery labels -1 for distractors."""

    root: Path
    probes: list[Path]
    probe_labels: np.ndarray  # (Q,) int64
    gallery: list[Path]  # Gallery_Match then Gallery_Distractor
    gallery_labels: np.ndarray  # (G,) int64, -1 = distractor
    identities: list[str]


def _identity(path: Path) -> str:
    return path.stem.split("_", 1)[0]


def load_tinyface(root: str | Path) -> TinyFace:
    """Read a TinyFace test set (see the module docstring)."""
    root = Path(root)
    test = root if (root / "Probe").is_dir() else root / "Testing_Set"
    for sub in ("Probe", "Gallery_Match"):
        if not (test / sub).is_dir():
            raise DataError(f"{test / sub}: folder missing; point at the TinyFace folder that "
                            "holds Testing_Set/Probe and Testing_Set/Gallery_Match")
    probes = sorted(list_images(test / "Probe"))
    match = sorted(list_images(test / "Gallery_Match"))
    distract = (sorted(list_images(test / "Gallery_Distractor"))
                if (test / "Gallery_Distractor").is_dir() else [])
    if not probes or not match:
        raise DataError(f"{test}: no probe or no gallery images")
    names = sorted({_identity(p) for p in probes} | {_identity(p) for p in match})
    index = {n: i for i, n in enumerate(names)}
    p_lab = np.asarray([index[_identity(p)] for p in probes], np.int64)
    m_lab = np.asarray([index[_identity(p)] for p in match], np.int64)
    lonely = np.setdiff1d(p_lab, m_lab)
    if len(lonely):
        raise DataError(f"{test / 'Probe'}: {len(lonely)} probe identit(y/ies) have no image "
                        f"in Gallery_Match (first: {names[lonely[0]]!r})")
    labels = np.concatenate([m_lab, np.full(len(distract), -1, np.int64)])
    return TinyFace(root, probes, p_lab, match + distract, labels, names)
