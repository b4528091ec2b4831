"""Detection rate and speed of HOG, MMOD and YuNet on clean and photo-level occluded LFW photos.

    python -m benchmarks.detectors [--n 150]

A seeded sample of LFW-1680 photos (seed 0), each as it is ("clean") and with the seeded mask
and sunglasses of `lfw-mask-photo` / `lfw-sunglasses-photo` drawn on the photo (placed by the
fixed set-up's clean landmarks). For every image the three detectors run back to back (the same
machine load for each), timed with their landmark predictors (what a user photo costs before
alignment). "found": a face whose box centre lies in the clean photo's face box; HOG counts its
retry with 1x upsampling, YuNet its retry with a padded border.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_result
from facerank.eval.photo import occlude_photo
from facerank.eval.protocols import EvalData
from facerank.face.detect import FaceDetector
from facerank.face.imageio import load_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    args = ap.parse_args()
    data = EvalData.load()
    lfw, feats = data.lfw, data.features
    queries = lfw.people_with_at_least(2)
    pick = np.sort(np.random.default_rng(0).choice(queries, args.n, replace=False))
    detectors = {m: FaceDetector(m, policy="center",  # type: ignore[arg-type]
                                 fallback="none", landmarks68=True)
                 for m in ("hog", "yunet", "mmod")}
    kinds = ("clean", "mask", "sunglasses")
    found = {(m, k): 0 for m in detectors for k in kinds}
    seconds = {(m, k): 0.0 for m in detectors for k in kinds}
    for d in detectors.values():  # warm-up
        d.detect_all(load_image(lfw.paths[pick[0]]))
    for i in pick:
        img = load_image(lfw.paths[i])
        rel = str(lfw.paths[i].relative_to(lfw.root))
        box = feats.boxes[i]
        for k in kinds:
            x = img if k == "clean" else occlude_photo(k, img, feats.landmarks68[i], 0, rel)
            for m, d in detectors.items():
                t0 = time.perf_counter()
                faces = d.detect_all(x)
                seconds[m, k] += time.perf_counter() - t0
                c = [(f.box[:2] + f.box[2:]) / 2 for f in faces]
                found[m, k] += any(((p >= box[:2]) & (p <= box[2:])).all() for p in c)
    n = len(pick)
    table = Table(title=f"face found / ms per image (detection + 5/68 landmarks), {n} LFW photos")
    table.add_column("detector")
    for k in kinds:
        table.add_column(f"{k}: found %", justify="right")
        table.add_column("ms", justify="right")
    rows = {}
    for m in detectors:
        rows[m] = {k: {"found": found[m, k] / n, "ms": 1e3 * seconds[m, k] / n} for k in kinds}
        table.add_row(m, *[v for k in kinds for v in (f"{100 * rows[m][k]['found']:.1f}",
                                                       f"{rows[m][k]['ms']:.1f}")])
    Console().print(table)
    print(write_result("detectors", {"n_images": n, "seed": 0, "detectors": rows}))


if __name__ == "__main__":
    main()
