"""Feature extraction speed: dlib-bin vs facerank's port on the same 256 LFW images, one run.

    python -m benchmarks.extract [--n 256]

Stages are timed separately (detection + landmarks, alignment, network) and end to end.
Both pipelines use dlib's HOG detector; facerank also runs the 68-point predictor (it needs
the landmarks for occlusion and LMK weighting), so its detection stage does more work.
"""

from __future__ import annotations

import argparse

import dlib
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import Timer, write_result
from facerank.align import extract_chip
from facerank.detect import FaceDetector
from facerank.imageio import load_image
from facerank.models.dlib_resnet import DlibResNet
from facerank.paths import DLIB_RESNET, DLIB_SHAPE5, bundled_model, lfw_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    files = sorted((lfw_root() / "images").glob("*/*.jpg"))
    files = files[:: len(files) // args.n][: args.n]
    images = [load_image(f) for f in files]

    # (a) dlib-bin
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE5)))
    fr = dlib.face_recognition_model_v1(str(bundled_model(DLIB_RESNET)))
    with Timer() as t_det_a:
        shapes = []
        for img in images:
            rects = det(img, 1)
            rect = rects[0] if rects else dlib.rectangle(70, 70, 180, 180)
            shapes.append(sp(img, rect))
    with Timer() as t_align_a:
        chips_a = [dlib.get_face_chip(img, s, 150, 0.25)
                   for img, s in zip(images, shapes, strict=True)]
    with Timer() as t_net_a:
        desc_a = np.array([np.asarray(fr.compute_face_descriptor(c)) for c in chips_a])

    # (b) facerank
    detector = FaceDetector(policy="center", fallback="center", upsample=1, retry_upsample=False)
    net = DlibResNet.from_dat()
    with Timer() as t_det_b:
        dets = [detector.detect(img) for img in images]
    with Timer() as t_align_b:
        chips_b = np.stack([extract_chip(img, d.landmarks5) for img, d in
                            zip(images, dets, strict=True)])
    with Timer() as t_net_b:
        desc_b, _ = net.embed_chips(chips_b, batch_size=64, grids=("l2", "l1"))

    n = len(images)
    rows = {}
    for stage, ta, tb in (("detection+landmarks", t_det_a, t_det_b),
                          ("alignment", t_align_a, t_align_b), ("network", t_net_a, t_net_b)):
        rows[stage] = {"dlib_chips_per_s": n / ta.seconds, "facerank_chips_per_s": n / tb.seconds,
                       "speedup": ta.seconds / tb.seconds}
    total_a = t_det_a.seconds + t_align_a.seconds + t_net_a.seconds
    total_b = t_det_b.seconds + t_align_b.seconds + t_net_b.seconds
    rows["end to end"] = {"dlib_chips_per_s": n / total_a, "facerank_chips_per_s": n / total_b,
                          "speedup": total_a / total_b}
    same_chip = float(np.mean(chips_b == np.stack(chips_a)))
    table = Table(title=f"extraction, {n} LFW images (both pipelines in this one run)")
    for col in ("stage", "dlib-bin chips/s", "facerank chips/s", "speed-up"):
        table.add_column(col, justify="right")
    for stage, r in rows.items():
        table.add_row(stage, f"{r['dlib_chips_per_s']:.1f}", f"{r['facerank_chips_per_s']:.1f}",
                      f"{r['speedup']:.1f}x")
    Console().print(table)
    print(f"identical chip pixels: {100 * same_chip:.3f} %; max descriptor difference "
          f"{np.abs(desc_a - desc_b).max():.2e} (differs only where the two chips differ)")
    path = write_result("extract", {"n_images": n, "stages": rows,
                                    "identical_chip_pixels": same_chip})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
