"""Where HOG draws its box relative to YuNet's box on the same face (`detect.YUNET_TO_HOG`).

    python -m benchmarks.yunet_box [--n 300]

dlib's 5- and 68-point predictors were trained on HOG boxes; YuNet's box is taller and covers
forehead and chin. On a seeded sample of LFW people with a single image (never a query of the
identification protocols) where both find the centred face, this prints the medians of
(HOG centre - YuNet centre) / (w, h) and HOG side / w, side / h.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import write_result
from facerank.eval.readers.lfw import load_lfw
from facerank.face.detect import FaceDetector
from facerank.face.imageio import load_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    lfw = load_lfw()
    counts = np.bincount(lfw.labels)
    single = np.flatnonzero(counts[lfw.labels] == 1)
    pick = np.random.default_rng(0).choice(single, args.n, replace=False)
    hog = FaceDetector(policy="center", fallback="none", landmarks68=False)
    yn = FaceDetector(method="yunet", policy="center", fallback="none", landmarks68=False,
                      retry_upsample=False)
    rows = []
    for i in pick:
        img = load_image(lfw.paths[i])
        c = np.array([img.shape[1] / 2, img.shape[0] / 2])
        hs, ys = hog.detect_all(img), yn._yunet_raw(img, 0.0)
        if not hs or not len(ys) or not hs[0].source == "hog":
            continue
        h = min(hs, key=lambda d: np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - c)).box
        x, y, w, hh = min(ys, key=lambda f: np.linalg.norm(f[:2] + f[2:4] / 2 - c))[:4]
        side = h[2] - h[0]
        hc = (h[:2] + h[2:]) / 2
        rows.append([(hc[0] - x - w / 2) / w, (hc[1] - y - hh / 2) / hh, side / w, side / hh])
    r = np.array(rows)
    med = np.median(r, axis=0)
    print(f"{len(r)} faces found by both; median dx/w {med[0]:.3f} dy/h {med[1]:.3f} "
          f"side/w {med[2]:.3f} side/h {med[3]:.3f} (spread {r.std(axis=0).round(3)})")
    print(write_result("yunet_box", {"n": len(r), "median": med.tolist(),
                                     "std": r.std(axis=0).tolist()}))


if __name__ == "__main__":
    main()
