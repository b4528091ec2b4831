"""The LFW data set on disk: image index, identities and `pairs.txt`, with strict checks.

Every problem names the file (and line) at fault, so a partly copied data folder or an edited
`pairs.txt` is caught before an evaluation runs for minutes on the wrong data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerank._util.paths import lfw_root
from facerank.errors import DataError


@dataclass
class LFW:
    """All images, sorted by (name, number); labels index `names`."""

    root: Path
    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def index_of(self, name: str, number: int) -> int:
        """Position of `<name>/<name>_<number:04d>.jpg`."""
        key = (name, number)
        if key not in self._lookup:
            raise KeyError(key)
        return self._lookup[key]

    def __post_init__(self) -> None:
        self._lookup = {
            (self.names[lab], int(p.stem.rsplit("_", 1)[1])): i
            for i, (p, lab) in enumerate(zip(self.paths, self.labels, strict=True))
        }

    def people_with_at_least(self, n: int) -> np.ndarray:
        """Indices of images whose person has >= n images (n=2: the 9,164 of LFW-1680)."""
        counts = np.bincount(self.labels, minlength=len(self.names))
        return np.flatnonzero(counts[self.labels] >= n)


def load_lfw(root: Path | None = None) -> LFW:
    """Index `<root>/images` and check it against `<root>/lfw-names.txt`."""
    root = Path(root) if root is not None else lfw_root()
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images}: LFW image folder missing; set FACERANK_DATA to the folder "
                        "that holds lfw/images")
    names_file = root / "lfw-names.txt"
    expected: dict[str, int] = {}
    if names_file.is_file():
        for lineno, line in enumerate(names_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"{names_file}:{lineno}: expected 'name count', got {line!r}")
            expected[parts[0]] = int(parts[1])
    names = sorted(d.name for d in images.iterdir() if d.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        files = sorted((images / name).glob(f"{name}_[0-9][0-9][0-9][0-9].jpg"))
        if name in expected and len(files) != expected[name]:
            raise DataError(f"{images / name}: {len(files)} images, but {names_file} lists "
                            f"{expected[name]}; the data folder is incomplete — copy it again")
        paths.extend(files)
        labels.extend([label] * len(files))
    missing = sorted(set(expected) - set(names))
    if missing:
        raise DataError(f"{images}: {len(missing)} people listed in {names_file} have no folder "
                        f"(first: {missing[0]}); the data folder is incomplete — copy it again")
    if not paths:
        raise DataError(f"{images}: no LFW images found")
    return LFW(root=root, paths=paths, labels=np.array(labels, dtype=np.int64), names=names)


@dataclass
class Pairs:
    """`pairs.txt`: P pairs of image indices, same/different, fold number."""

    a: np.ndarray  # (P,) int64
    b: np.ndarray  # (P,) int64
    same: np.ndarray  # (P,) bool
    fold: np.ndarray  # (P,) int64


def load_pairs(lfw: LFW, path: Path | None = None) -> Pairs:
    """Parse the 10-fold verification protocol; every error names the file and line."""
    path = Path(path) if path is not None else lfw.root / "pairs.txt"
    if not path.is_file():
        raise DataError(f"{path}: pairs file missing")
    lines = path.read_text().splitlines()
    if not lines:
        raise DataError(f"{path}:1: file is empty; expected a header 'folds pairs_per_class'")
    head = lines[0].split()
    if len(head) != 2 or not all(h.isdigit() for h in head):
        raise DataError(f"{path}:1: expected a header 'folds pairs_per_class', got {lines[0]!r}")
    n_folds, per = int(head[0]), int(head[1])
    a: list[int] = []
    b: list[int] = []
    same: list[bool] = []
    fold: list[int] = []
    lineno = 1
    for f in range(n_folds):
        for kind in (True, False):
            for _ in range(per):
                lineno += 1
                if lineno > len(lines):
                    raise DataError(f"{path}:{lineno}: file ends early; the header promises "
                                    f"{n_folds} folds x {2 * per} pairs")
                parts = lines[lineno - 1].split()
                try:
                    if kind and len(parts) == 3:
                        ia = lfw.index_of(parts[0], int(parts[1]))
                        ib = lfw.index_of(parts[0], int(parts[2]))
                    elif not kind and len(parts) == 4:
                        ia = lfw.index_of(parts[0], int(parts[1]))
                        ib = lfw.index_of(parts[2], int(parts[3]))
                    else:
                        want = "matched pair 'name i j'" if kind else (
                            "mismatched pair 'name1 i name2 j'")
                        raise DataError(f"{path}:{lineno}: expected a {want}, got "
                                        f"{lines[lineno - 1]!r}")
                except ValueError:
                    raise DataError(f"{path}:{lineno}: image numbers must be integers, got "
                                    f"{lines[lineno - 1]!r}") from None
                except KeyError as e:
                    raise DataError(f"{path}:{lineno}: no image {e.args[0][0]} #{e.args[0][1]} "
                                    f"in {lfw.root / 'images'}") from None
                a.append(ia)
                b.append(ib)
                same.append(kind)
                fold.append(f)
    return Pairs(np.array(a), np.array(b), np.array(same), np.array(fold))
