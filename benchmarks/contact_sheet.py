"""docs/img/occlusions.png: 8 LFW queries x (original, crop, mask, sunglasses).

    python -m benchmarks.contact_sheet [--seed 0] [--out docs/img/occlusions.png]

The 8 people are a seeded choice among the 1,680 with >= 2 images (their first image each);
chips and landmarks come from the evaluation extractor, occlusions from `facerank.eval.occlusion`
with the same ids (paths relative to the LFW root) the protocols use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from facerank.eval.occlusion import VERSION, occlude
from facerank.eval.protocols import lfw_extractor
from facerank.eval.readers.lfw import load_lfw
from facerank.face.imageio import load_image, save_image

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "occlusions.png"
KINDS = ("crop", "mask", "sunglasses")
N_PEOPLE = 8
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(img, text, org, FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def grid(rows: list[tuple[str, np.ndarray]], titles: list[str], caption: str,
         pad: int = 4, label_w: int = 104, header_h: int = 22) -> np.ndarray:
    """(H, W, 3) uint8 sheet: one labelled row per (name, (N, S, S, 3) chips), titled columns."""
    n, s = rows[0][1].shape[:2]
    footer_h = 20
    h = header_h + len(rows) * (s + pad) + pad + footer_h
    w = label_w + n * (s + pad) + pad
    sheet = np.full((h, w, 3), 255, np.uint8)
    for c, title in enumerate(titles):
        x = label_w + pad + c * (s + pad)
        (tw, _), _ = cv2.getTextSize(title, FONT, 0.4, 1)
        _text(sheet, title, (x + max(0, (s - tw) // 2), header_h - 7), 0.4)
    for r, (name, imgs) in enumerate(rows):
        y = header_h + pad + r * (s + pad)
        _text(sheet, name, (6, y + s // 2 + 5), 0.5)
        for c, img in enumerate(imgs):
            x = label_w + pad + c * (s + pad)
            sheet[y : y + s, x : x + s] = img
    _text(sheet, caption, (6, h - 6), 0.38)
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the people and the occlusions")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    lfw = load_lfw()
    multi = lfw.people_with_at_least(2)
    people = np.unique(lfw.labels[multi])
    chosen = np.random.default_rng(args.seed).choice(people, N_PEOPLE, replace=False)
    index = [int(multi[lfw.labels[multi] == p][0]) for p in chosen]
    fx = lfw_extractor(cache=False)
    aligned = [fx.align(load_image(lfw.paths[i]), str(lfw.paths[i])) for i in index]
    chips = np.stack([a.chip for a in aligned])  # (8, 150, 150, 3)
    lm = np.stack([a.chip_landmarks68 for a in aligned])  # (8, 68, 2)
    ids = [str(lfw.paths[i].relative_to(lfw.root)) for i in index]
    rows = [("original", chips)] + [(k, occlude(k, chips, lm, args.seed, ids)) for k in KINDS]
    titles = [lfw.names[lfw.labels[i]].replace("_", " ")[:20] for i in index]
    caption = (f"facerank.eval.occlusion v{VERSION}, seed {args.seed}: 70% crop resized back; "
               "mask and sunglasses drawn from the 68 dlib landmarks on the 150x150 chip")
    save_image(args.out, grid(rows, titles, caption))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
