"""IJB-B / IJB-C as insightface distributes them (the folder of `evaluation/IJB`):

    <root>/loose_crop/<image>.jpg               loosely cropped faces
    <root>/meta/ijbX_name_5pts_score.txt        "<image> x1 y1 ... x5 y5 score" (5 points in the
                                                crop: eye centres, nose tip, mouth corners)
    <root>/meta/ijbX_face_tid_mid.txt           "<image> <template id> <media id>", same order
    <root>/meta/ijbX_template_pair_label.txt    "<template 1> <template 2> <1|0>"  (1:1)
    <root>/meta/ijbX_1N_gallery_{S1,S2}.csv     IJB-B 1:N galleries  (IJB-C: _G1, _G2)
    <root>/meta/ijbX_1N_probe_mixed.csv         1:N probes; csv columns TEMPLATE_ID,SUBJECT_ID,...

X is b or c (found from the file names). The 1:N files are optional; every problem names the
file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facerank.errors import DataError

GALLERIES = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}


@dataclass
class TemplateList:
    """A 1:N csv: templates and their subjects."""

    path: Path
    templates: np.ndarray  # (T,) int64 template ids, unique
    subjects: np.ndarray  # (T,) int64 subject ids


@dataclass
class IJB:
    """The images, their 5 points, templates and the 1:1 / 1:N protocols of one IJB set."""

    root: Path
    name: str  # "ijbb" | "ijbc"
    images: list[Path]  # (N,) loose crops
    points5: np.ndarray  # (N, 5, 2) float64
    face_scores: np.ndarray  # (N,) detector score of the points
    templates: np.ndarray  # (N,) int64 template id of each image
    media: np.ndarray  # (N,) int64 media id of each image
    pair_t1: np.ndarray  # (P,) int64
    pair_t2: np.ndarray  # (P,) int64
    pair_same: np.ndarray  # (P,) bool
    galleries: dict[str, TemplateList] = field(default_factory=dict)
    probes: TemplateList | None = None


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(f"{path}: file missing; point at the IJB folder that holds meta/ and "
                        "loose_crop/")
    return [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()]


def _ints(path: Path, lineno: int, parts: list[str]) -> list[int]:
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected integers, got {' '.join(parts)!r}") from None


def _which(root: Path) -> str:
    found = [n for n in GALLERIES if (root / "meta" / f"{n}_face_tid_mid.txt").is_file()]
    if len(found) != 1:
        raise DataError(f"{root}: expected exactly one of meta/ijbb_face_tid_mid.txt or "
                        f"meta/ijbc_face_tid_mid.txt, found {len(found)}")
    return found[0]


def read_template_csv(path: Path) -> TemplateList:
    """TEMPLATE_ID,SUBJECT_ID,... rows (header first); one subject per template."""
    if not path.is_file():
        raise DataError(f"{path}: file missing")
    rows = path.read_text().splitlines()
    if not rows or not rows[0].upper().startswith("TEMPLATE_ID"):
        raise DataError(f"{path}:1: expected a header starting TEMPLATE_ID,SUBJECT_ID")
    t: list[int] = []
    s: list[int] = []
    for lineno, line in enumerate(rows[1:], 2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) < 2:
            raise DataError(f"{path}:{lineno}: expected TEMPLATE_ID,SUBJECT_ID,..., got {line!r}")
        a, b = _ints(path, lineno, parts[:2])
        t.append(a)
        s.append(b)
    if not t:
        raise DataError(f"{path}: no templates")
    t_arr, s_arr = np.asarray(t, np.int64), np.asarray(s, np.int64)
    uniq, first = np.unique(t_arr, return_index=True)
    inv = np.unique(t_arr, return_inverse=True)[1]
    if (s_arr != s_arr[first][inv]).any():
        bad = int(t_arr[np.flatnonzero(s_arr != s_arr[first][inv])[0]])
        raise DataError(f"{path}: template {bad} is listed with two subjects")
    return TemplateList(path, uniq, s_arr[first])


def load_ijb(root: str | Path) -> IJB:
    """Read and cross-check an IJB-B or IJB-C folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: IJB folder not found")
    name = _which(root)
    meta = root / "meta"
    pts_file = meta / f"{name}_name_5pts_score.txt"
    tid_file = meta / f"{name}_face_tid_mid.txt"
    pair_file = meta / f"{name}_template_pair_label.txt"
    images: list[Path] = []
    points: list[list[float]] = []
    scores: list[float] = []
    for lineno, parts in _lines(pts_file):
        if len(parts) != 12:
            raise DataError(f"{pts_file}:{lineno}: expected '<image> x1 y1 ... x5 y5 score' "
                            f"(12 fields), got {len(parts)}")
        try:
            vals = [float(p) for p in parts[1:]]
        except ValueError:
            raise DataError(f"{pts_file}:{lineno}: the points and score must be numbers") from None
        images.append(root / "loose_crop" / parts[0])
        points.append(vals[:10])
        scores.append(vals[10])
    tids = _lines(tid_file)
    if len(tids) != len(images):
        raise DataError(f"{tid_file}: {len(tids)} faces but {pts_file.name} lists {len(images)}; "
                        "the two files must list the same faces in the same order")
    templates: list[int] = []
    media: list[int] = []
    for (lineno, parts), img in zip(tids, images, strict=True):
        if len(parts) != 3:
            raise DataError(f"{tid_file}:{lineno}: expected '<image> <template> <media>'")
        if parts[0] != img.name:
            raise DataError(f"{tid_file}:{lineno}: face {parts[0]!r}, but {pts_file.name} has "
                            f"{img.name!r} on that line; the files must be in the same order")
        t, m = _ints(tid_file, lineno, parts[1:])
        templates.append(t)
        media.append(m)
    if not images:
        raise DataError(f"{pts_file}: no faces listed")
    missing = next((p for p in images if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{missing}: image listed in {pts_file.name} is missing; the "
                        "loose_crop folder is incomplete")
    t_arr = np.asarray(templates, np.int64)
    known = set(templates)
    p1: list[int] = []
    p2: list[int] = []
    lab: list[bool] = []
    for lineno, parts in _lines(pair_file):
        if len(parts) != 3:
            raise DataError(f"{pair_file}:{lineno}: expected '<template 1> <template 2> <1|0>'")
        a, b, y = _ints(pair_file, lineno, parts)
        if y not in (0, 1):
            raise DataError(f"{pair_file}:{lineno}: label must be 0 or 1, got {y}")
        for t in (a, b):
            if t not in known:
                raise DataError(f"{pair_file}:{lineno}: template {t} has no face in "
                                f"{tid_file.name}")
        p1.append(a)
        p2.append(b)
        lab.append(bool(y))
    if not p1:
        raise DataError(f"{pair_file}: no template pairs")
    out = IJB(root, name, images, np.asarray(points, np.float64).reshape(-1, 5, 2),
              np.asarray(scores), t_arr, np.asarray(media, np.int64),
              np.asarray(p1, np.int64), np.asarray(p2, np.int64), np.asarray(lab, bool))
    probe_file = meta / f"{name}_1N_probe_mixed.csv"
    if probe_file.is_file():
        for g in GALLERIES[name]:
            out.galleries[g] = _checked(read_template_csv(meta / f"{name}_1N_gallery_{g}.csv"),
                                        known)
        out.probes = _checked(read_template_csv(probe_file), known)
    return out


def _checked(tl: TemplateList, known: set[int]) -> TemplateList:
    absent = [int(t) for t in tl.templates if int(t) not in known]
    if absent:
        raise DataError(f"{tl.path}: {len(absent)} template(s) have no face in face_tid_mid "
                        f"(first: {absent[0]})")
    return tl
