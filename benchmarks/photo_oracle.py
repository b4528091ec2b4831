"""How much of lfw-mask-photo's gap to lfw-mask is alignment: chips cut with the clean landmarks.

    python -m benchmarks.photo_oracle [--limit 1000]

The same seeded subsample as `facerank eval lfw-mask-photo --limit N` (seed 0): the mask is drawn
on the photo as that protocol draws it, but the chip is cut with the clean photo's 5 landmarks
(as the chip-level `lfw-mask` does) instead of the ones found on the masked photo. Stage 1 only,
same gallery rule. The difference to the protocol's Stage 1 is the cost of aligning a masked face.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import write_result
from facerank.eval.photo import occlude_photo
from facerank.eval.protocols import EvalData, identification
from facerank.face.align.dlib_chip import extract_chip
from facerank.face.imageio import load_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=1000)
    args = ap.parse_args()
    d = EvalData.load(progress=False)
    lfw, f = d.lfw, d.features
    allq = lfw.people_with_at_least(2)
    pick = np.sort(np.random.default_rng(0).choice(np.arange(len(allq)), args.limit,
                                                   replace=False))
    qi = allq[pick]
    chips = []
    for i in qi:
        img = load_image(lfw.paths[i])
        x = occlude_photo("mask", img, f.landmarks68[i], 0, str(lfw.paths[i].relative_to(lfw.root)))
        chips.append(extract_chip(x, f.landmarks5[i]))
    desc, _ = d.extractor.embed_chips(np.stack(chips))
    q = f.take(qi)
    q.descriptors = desc.astype(np.float32)
    m1, _, _ = identification(q, lfw.labels[qi], f, lfw.labels, qi.copy(), None, progress=False)
    print(f"masked photos, chips from the clean landmarks: Stage 1 P@1 {100 * m1['p_at_1']:.2f} "
          f"RP {100 * m1['r_precision']:.2f} MAP@R {100 * m1['map_at_r']:.2f} ({len(qi)} queries)")
    print(write_result("photo_oracle", {"n_queries": len(qi), "stage1": m1}))


if __name__ == "__main__":
    main()
