"""docs/img/occlusions.png: 8 LFW queries x (original, crop, mask, sunglasses).

    python -m benchmarks.contact_sheet [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from facerank.eval.lfw import load_lfw
from facerank.eval.occlusion import occlude
from facerank.eval.protocols import lfw_extractor
from facerank.imageio import load_image, save_image

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "occlusions.png"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lfw = load_lfw()
    multi = lfw.people_with_at_least(2)
    people = np.unique(lfw.labels[multi])
    chosen = np.random.default_rng(args.seed).choice(people, 8, replace=False)
    index = [int(multi[lfw.labels[multi] == p][0]) for p in chosen]
    fx = lfw_extractor(cache=False)
    aligned = [fx.align(load_image(lfw.paths[i]), str(lfw.paths[i])) for i in index]
    chips = np.stack([a.chip for a in aligned])
    lm = np.stack([a.chip_landmarks68 for a in aligned])
    ids = [str(lfw.paths[i].relative_to(lfw.root)) for i in index]
    rows = [("original", chips)] + [(k, occlude(k, chips, lm, args.seed, ids))
                                    for k in ("crop", "mask", "sunglasses")]
    label_w, pad = 110, 4
    sheet = np.full((len(rows) * (150 + pad) + pad, label_w + 8 * (150 + pad) + pad, 3), 255,
                    np.uint8)
    for r, (name, imgs) in enumerate(rows):
        y = pad + r * (150 + pad)
        cv2.putText(sheet, name, (6, y + 80), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for c, img in enumerate(imgs):
            x = label_w + pad + c * (150 + pad)
            sheet[y : y + 150, x : x + 150] = img
    save_image(OUT, sheet)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
