"""Phone-sized photos: decoding only the pixels the face needs vs decoding every pixel.

    python -m benchmarks.photo_decode [--n 150] [--seed 0]

LFW has no large photos, so each of `--n` LFW images (every len/n-th file) is pasted, resized
with Lanczos to a seeded side of 500, 800, 1200, 1800 or 2600 pixels, at a seeded place into a
plain 4032 x 3024 (or 3024 x 4032) scene, and saved as a quality-92 JPEG. Each photo then goes
through the SFace extractor twice, alternately and timed: "full" decodes every pixel
(`load_image` + `FeatureExtractor.align`, the path before), "reduced" is
`FeatureExtractor.align_file` (libjpeg's DCT scaling where the face allows it). Both embed the
chip. Reported per pasted size: how close each path's descriptor is to the descriptor of the
original 250 x 250 LFW image (mean cosine), the smallest cosine between the two paths, and the
median milliseconds (decode + detect + align + embed). Photos where either path finds no face
are counted and left out. JSON: benchmarks/results/photo_decode.json, with the machine's load.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
from PIL import Image

from benchmarks.common import write_result
from facerank._util.paths import lfw_root
from facerank.errors import NoFaceError
from facerank.face.features import make_extractor
from facerank.face.imageio import load_image

SIDES = (500, 800, 1200, 1800, 2600)


def _unit(d: np.ndarray) -> np.ndarray:
    return d / np.linalg.norm(d)


def _photo(im: Image.Image, rng: np.random.Generator) -> tuple[int, bytes]:
    side = int(rng.choice(SIDES))
    w, h = (4032, 3024) if rng.random() < 0.5 else (3024, 4032)
    scene = Image.new("RGB", (w, h), tuple(int(x) for x in rng.integers(60, 200, 3)))
    scene.paste(im.resize((side, side), Image.LANCZOS),
                (int(rng.integers(0, w - side)), int(rng.integers(0, h - side))))
    buf = io.BytesIO()
    scene.save(buf, "JPEG", quality=92)
    return side, buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fx = make_extractor(backbone="sface", cache=False)
    files = sorted((lfw_root() / "images").glob("*/*.jpg"))
    files = files[:: len(files) // args.n][: args.n]
    rng = np.random.default_rng(args.seed)
    rows, missed = [], {s: 0 for s in SIDES}
    load = [os.getloadavg()]
    for f in files:
        im = Image.open(f).convert("RGB")
        side, data = _photo(im, rng)
        try:
            ref = _unit(fx.embed_chips(fx.align(np.asarray(im), str(f)).chip[None])[0][0])
            t0 = time.perf_counter()
            full = _unit(fx.embed_chips(fx.align(load_image(data), "photo").chip[None])[0][0])
            t1 = time.perf_counter()
            red = _unit(fx.embed_chips(fx.align_file(data, "photo").chip[None])[0][0])
            t2 = time.perf_counter()
        except NoFaceError:
            missed[side] += 1
            continue
        rows.append((side, float(full @ ref), float(red @ ref), float(full @ red),
                     1000 * (t1 - t0), 1000 * (t2 - t1)))
    load.append(os.getloadavg())
    r = np.array(rows)
    out = {}
    for side in SIDES:
        x = r[r[:, 0] == side]
        if not len(x):
            continue
        out[str(side)] = {"photos": len(x), "no_face": missed[side],
                          "cos_to_original_full": float(x[:, 1].mean()),
                          "cos_to_original_reduced": float(x[:, 2].mean()),
                          "cos_full_vs_reduced_min": float(x[:, 3].min()),
                          "ms_full_p50": float(np.median(x[:, 4])),
                          "ms_reduced_p50": float(np.median(x[:, 5])),
                          "full_over_reduced_p50": float(np.median(x[:, 4]) / np.median(x[:, 5]))}
        print(side, out[str(side)])
    out["all"] = {"photos": len(r), "cos_to_original_full": float(r[:, 1].mean()),
                  "cos_to_original_reduced": float(r[:, 2].mean()),
                  "ms_full_p50": float(np.median(r[:, 4])),
                  "ms_reduced_p50": float(np.median(r[:, 5])),
                  "full_over_reduced_p50": float(np.median(r[:, 4]) / np.median(r[:, 5]))}
    print("all", out["all"])
    write_result("photo_decode", {"n": args.n, "seed": args.seed, "by_side": out,
                                  "loadavg_before_after": load})


if __name__ == "__main__":
    main()
