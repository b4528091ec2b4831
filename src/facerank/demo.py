"""`make demo`: the main job end to end on bundled LFW data."""

from __future__ import annotations

from itertools import combinations

import numpy as np
from rich.console import Console
from rich.table import Table

from facerank.cli import DLIB_THRESHOLD, make_extractor
from facerank.paths import lfw_root


def pick_identities(n: int, min_images: int = 3) -> list[tuple[str, list[str]]]:
    """The first `n` LFW people (alphabetical) with at least `min_images` images."""
    root = lfw_root() / "images"
    people = []
    for d in sorted(root.iterdir()):
        files = sorted(str(f) for f in d.glob("*.jpg"))
        if len(files) >= min_images:
            people.append((d.name, files[:min_images]))
        if len(people) == n:
            break
    return people


def run_demo(identities: int = 6, console: Console | None = None) -> None:
    """Extract a few LFW identities, compare matching and non-matching pairs, print a table."""
    console = console or Console()
    people = pick_identities(identities)
    paths = [p for _, files in people for p in files]
    labels = [name for name, files in people for _ in files]
    console.print(f"LFW data: {lfw_root()}  ({len(people)} identities, {len(paths)} images)")
    fx = make_extractor(faces="center", no_face="center")
    fs = fx.extract_paths(paths, progress=True)
    index = {p: i for i, p in enumerate(fs.paths)}
    emb, desc = fs.embeddings, fs.descriptors

    table = Table(title="facerank compare: matching and non-matching LFW pairs")
    for col in ("image A", "image B", "truth", "cosine", "dlib dist", "verdict", "ok"):
        table.add_column(col)
    correct = total = 0
    for a, b in combinations(range(len(paths)), 2):
        same = labels[a] == labels[b]
        if not same and (b - a) % 5:  # keep a readable sample of non-matching pairs
            continue
        ia, ib = index.get(paths[a]), index.get(paths[b])
        if ia is None or ib is None:
            continue
        cos = float(emb[ia] @ emb[ib])
        dist = float(np.linalg.norm(desc[ia] - desc[ib]))
        verdict = dist < DLIB_THRESHOLD
        ok = verdict == same
        correct += ok
        total += 1
        table.add_row(_short(paths[a]), _short(paths[b]), "same" if same else "diff",
                      f"{cos:.3f}", f"{dist:.3f}", "same" if verdict else "diff",
                      "[green]yes[/]" if ok else "[red]no[/]")
    console.print(table)
    console.print(f"{correct}/{total} pairs decided correctly by dlib's 0.6 rule")


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]
