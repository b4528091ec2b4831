"""Feature extraction speed: dlib-bin vs facerank's port on the same 256 LFW images, one run.

    python -m benchmarks.extract [--n 256]

Stages are timed separately (detection + landmarks, alignment, network) and end to end.
Both pipelines use dlib's HOG detector and keep the face nearest the image centre. dlib-bin is
run as face_recognition runs it (one upsampling pass); facerank is timed twice: with the same
setting, and with its default (no upsampling, one retry at 1x when no face is found). facerank
also runs the 68-point predictor (it needs the landmarks for occlusion and LMK weighting).
Alignment and network are timed on identical inputs; both models warm up on one batch first.
The user-photo chain (YuNet box + dlib's 5/68-point predictors, `FaceDetector("yunet")`) is
timed on the same images in the same run: "before" is facerank's HOG default, "after" YuNet.
"""

from __future__ import annotations

import argparse

import dlib
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import Timer, write_result
from facerank._util.paths import DLIB_RESNET, DLIB_SHAPE5, bundled_model, lfw_root
from facerank.face.align.dlib_chip import extract_chip
from facerank.face.detect import FaceDetector
from facerank.face.imageio import load_image
from facerank.models.dlib_resnet import DlibResNet


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
            h, w = img.shape[:2]
            rect = min(rects, key=lambda r: (r.center().x - w / 2) ** 2
                       + (r.center().y - h / 2) ** 2) if rects else dlib.rectangle(77, 86, 181, 189)
            shapes.append(sp(img, rect))
    with Timer() as t_align_a:
        chips_a = [dlib.get_face_chip(img, s, 150, 0.25)
                   for img, s in zip(images, shapes, strict=True)]
    fr.compute_face_descriptor(chips_a[0])  # warm-up
    with Timer() as t_net_a:
        desc_a = np.array([np.asarray(fr.compute_face_descriptor(c)) for c in chips_a])

    # (b) facerank, same detector setting, then its default
    same = FaceDetector(policy="center", fallback="center", upsample=1, retry_upsample=False,
                        landmarks68=True)
    default = FaceDetector(policy="center", fallback="center", landmarks68=True)
    net = DlibResNet.from_dat()
    with Timer() as t_det_b:
        dets = [same.detect(img) for img in images]
    with Timer() as t_det_d:
        [default.detect(img) for img in images]
    yunet = FaceDetector("yunet", policy="center", fallback="center", landmarks68=True)
    yunet.detect(images[0])  # warm-up (OpenCV builds the network on first use)
    with Timer() as t_det_y:
        [yunet.detect(img) for img in images]
    landmarks = [np.array([(p.x, p.y) for p in s.parts()], dtype=np.float64) for s in shapes]
    with Timer() as t_align_b:
        chips_b = np.stack([extract_chip(img, lm) for img, lm in
                            zip(images, landmarks, strict=True)])
    net.embed_chips(chips_b[:64], batch_size=64)  # warm-up
    with Timer() as t_net_b:
        desc_b, _ = net.embed_chips(chips_b, batch_size=64, grids=("l2", "l1"))

    n = len(images)
    rows = {}
    for stage, ta, tb in (("detection+landmarks (same setting)", t_det_a, t_det_b),
                          ("detection+landmarks (facerank default)", t_det_a, t_det_d),
                          ("detection+landmarks (facerank yunet)", t_det_a, t_det_y),
                          ("alignment", t_align_a, t_align_b), ("network", t_net_a, t_net_b)):
        rows[stage] = {"dlib_chips_per_s": n / ta.seconds, "facerank_chips_per_s": n / tb.seconds,
                       "speedup": ta.seconds / tb.seconds}
    total_a = t_det_a.seconds + t_align_a.seconds + t_net_a.seconds
    for name, t_det in (("same setting", t_det_b), ("facerank default", t_det_d),
                        ("facerank yunet", t_det_y)):
        total_b = t_det.seconds + t_align_b.seconds + t_net_b.seconds
        rows[f"end to end ({name})"] = {"dlib_chips_per_s": n / total_a,
                                        "facerank_chips_per_s": n / total_b,
                                        "speedup": total_a / total_b}
    same_box = float(np.mean([np.allclose(d.landmarks5, lm) for d, lm in
                              zip(dets, landmarks, strict=True)]))
    same_chip = float(np.mean(chips_b == np.stack(chips_a)))
    table = Table(title=f"extraction, {n} LFW images (both pipelines in this one run)")
    for col in ("stage", "dlib-bin chips/s", "facerank chips/s", "speed-up"):
        table.add_column(col, justify="right")
    for stage, r in rows.items():
        table.add_row(stage, f"{r['dlib_chips_per_s']:.1f}", f"{r['facerank_chips_per_s']:.1f}",
                      f"{r['speedup']:.1f}x")
    Console().print(table)
    print(f"identical chip pixels: {100 * same_chip:.3f} %; max descriptor difference "
          f"{np.abs(desc_a - desc_b).max():.2e}; facerank picked the same face in "
          f"{100 * same_box:.1f} % of images")
    max_diff = float(np.abs(desc_a - desc_b).max())
    before, after = (t_det_d.seconds + t_align_b.seconds + t_net_b.seconds,
                     t_det_y.seconds + t_align_b.seconds + t_net_b.seconds)
    rows["yunet vs hog default"] = {"before_images_per_s": n / before,
                                    "after_images_per_s": n / after, "ratio": before / after}
    print(f"end to end, HOG default {n / before:.1f} images/s -> YuNet {n / after:.1f} images/s "
          f"(x{before / after:.2f})")
    path = write_result("extract_yunet", {"n_images": n, "stages": rows, "same_face": same_box,
                                    "identical_chip_pixels": same_chip,
                                    "max_descriptor_difference": max_diff})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
