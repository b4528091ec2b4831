"""Fill a backbone's LFW feature cache from the detections already cached for dlib.

    python -m benchmarks.warm_backbone --backbone sface [--part 0 --parts 2]

The evaluation set-up (`lfw_extractor()`: HOG, centre face, central-box fallback) detects the
same faces whatever the backbone, so the detections stored with dlib's LFW features (box, score,
dlib 5 points, 68 points, source) are reused instead of running HOG again (13 of 55 CPU-ms per
image on this machine); each entry written is what `FeatureExtractor.extract_paths` writes for
that file. `--check N` first recomputes N images through the full path and asserts equality.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facerank.eval.protocols import EvalData, lfw_extractor
from facerank.eval.readers.lfw import load_lfw
from facerank.face.detect import Detection
from facerank.face.features import file_digest
from facerank.face.imageio import load_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--parts", type=int, default=1)
    ap.add_argument("--check", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    lfw = load_lfw()
    dlib = EvalData.load(lfw_extractor(), progress=False).features  # cached (packed)
    fx = lfw_extractor(backbone=args.backbone)
    rows = np.arange(args.part, len(lfw.paths), args.parts)
    todo, digests = [], {}
    for i in rows:
        data = lfw.paths[i].read_bytes()
        d = file_digest(data)
        if fx._cache_get(d, str(lfw.paths[i])) is None:
            todo.append(int(i))
            digests[int(i)] = d
    print(f"{len(todo)} of {len(rows)} images to extract", flush=True)

    def det_of(i: int) -> Detection:
        return Detection(dlib.boxes[i], float(dlib.det_scores[i]), dlib.landmarks5[i],
                         dlib.landmarks68[i], dlib.det_sources[i])

    for i in todo[: args.check]:  # the shortcut must equal the full path
        path = str(lfw.paths[i])
        full = fx.extract(load_image(path), path)
        a = fx.align_detection(load_image(path), det_of(i))
        desc, grids = fx.embed_chips(a.chip[None])
        assert np.array_equal(full.landmarks5, a.points), path
        assert np.array_equal(full.descriptor, desc[0]), path
    t0 = time.perf_counter()
    for s in range(0, len(todo), args.batch):
        batch = todo[s : s + args.batch]
        aligned = [fx.align_detection(load_image(str(lfw.paths[i])), det_of(i)) for i in batch]
        desc, grids = fx.embed_chips(np.stack([a.chip for a in aligned]))
        for j, (i, a) in enumerate(zip(batch, aligned, strict=True)):
            f = fx._features(a, desc[j], {k: v[j] for k, v in grids.items()}, str(lfw.paths[i]))
            fx._cache_put(digests[i], f)
        done = s + len(batch)
        rate = done / (time.perf_counter() - t0)
        print(f"{done}/{len(todo)} {rate:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
