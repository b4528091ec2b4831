"""An insightface-style LFW `.bin` built from facerank's own LFW data, read back by
`facerank eval bin:` and checked against `facerank eval lfw-pairs` (same 6,000 pairs).

    python -m benchmarks.lfw_bin build --out /tmp/lfwbin/lfw.bin    # 112x112 ArcFace crops
    python -m benchmarks.lfw_bin check --bin /tmp/lfwbin/lfw.bin --backbone sface

`build` cuts each pair's two photos with the product's ArcFace-112 alignment at the SFace
evaluation set-up's detected points (`eval.external.lfw_bin_images`), JPEG 95, and writes
`(bins, issame_list)` as insightface does. `check` embeds the .bin's distinct crops (as
`--aligned arcface112`: SFace uses them as they are, dlib cuts its chip from the template's
points) and reports its 10-fold accuracy next to lfw-pairs on the whole photos (cached
features); the .bin's folds are 600 consecutive pairs, as pairs.txt's. Calibrated (IDA-R),
both sides alike: anchors = one image per person of LFW identity half True (the bundled
anchors' recipe, `identity_fold`), scored on the pairs whose two people are both in the other
half (anchors never share a pair's identity), 10-fold within those pairs. Results:
benchmarks/results/lfw_bin_<backbone>.json. The .bin never goes into the repository.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.common import write_result
from facerank.calibrate.ida import IDAR
from facerank.eval.external import bin_extractor, embed_bin, lfw_bin_images, run_bin
from facerank.eval.protocols import EvalData, lfw_extractor, run_pairs, verification_metrics
from facerank.eval.readers.insightface_bin import read_bin, write_bin
from facerank.eval.readers.lfw import load_pairs
from facerank.eval.studies.calibration_protocols import anchors_from_rows, half_anchor_rows
from facerank.train.split import identity_fold


def build(out: Path) -> Path:
    data = EvalData.load(lfw_extractor(backbone="sface"))
    images, same = lfw_bin_images(data, load_pairs(data.lfw))
    return write_bin(out, images, same)


def check(bin_path: Path, backbone: str) -> dict:
    t0 = time.perf_counter()
    vb = read_bin(bin_path)
    feats, rows = embed_bin(vb, bin_extractor(backbone))
    t1 = time.perf_counter()
    res = run_bin(vb, feats, rows)
    data = EvalData.load(lfw_extractor(backbone=backbone))
    ref = run_pairs(data)
    pairs = load_pairs(data.lfw)
    if len(pairs.a) != len(vb) or (pairs.same != vb.same).any():
        raise SystemExit(f"{bin_path}: its pairs are not pairs.txt's; build it with `build`")
    # calibrated, both sides alike (module docstring)
    labels = data.lfw.labels
    half = identity_fold(labels, 0)
    cal = IDAR(anchors_from_rows(data, half_anchor_rows(data, True)))
    keep = ~half[labels[pairs.a]] & ~half[labels[pairs.b]]
    sub = SimpleNamespace(same=pairs.same[keep], fold=pairs.fold[keep])
    emb_bin, emb = feats.embeddings, data.features.embeddings
    calibrated = {}
    for name, a, b in (("bin", emb_bin[rows[vb.a]], emb_bin[rows[vb.b]]),
                       ("lfw_pairs", emb[pairs.a], emb[pairs.b])):
        cos = np.einsum("pd,pd->p", a[keep], b[keep])
        calibrated[name] = {"cosine": verification_metrics(cos, sub),
                            "ida-r": verification_metrics(cal.score_pairs(a[keep], b[keep]),
                                                          sub)}
    return {"backbone": backbone, "bin": str(bin_path), "bin_stage1": res["stage1"],
            "lfw_pairs_stage1": ref["stage1"],
            "accuracy_difference_points": 100 * (res["stage1"]["accuracy"]
                                                 - ref["stage1"]["accuracy"]),
            "calibrated_half_false_pairs": {"n_pairs": int(keep.sum()), **calibrated},
            "settings": res["settings"], "seconds_embed": t1 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("--bin", type=Path, required=True)
    c.add_argument("--backbone", default="sface")
    args = ap.parse_args()
    if args.cmd == "build":
        print(f"wrote {build(args.out)}")
        return
    payload = check(args.bin, args.backbone)
    s, r = payload["bin_stage1"], payload["lfw_pairs_stage1"]
    print(f"{args.backbone}: .bin accuracy {100 * s['accuracy']:.2f} % vs lfw-pairs "
          f"{100 * r['accuracy']:.2f} % (difference {payload['accuracy_difference_points']:+.2f}"
          f" points); TAR@FAR=1e-3 {100 * s['tar_at_far_1e-3']:.2f} vs "
          f"{100 * r['tar_at_far_1e-3']:.2f}")
    c = payload["calibrated_half_false_pairs"]
    for side in ("bin", "lfw_pairs"):
        print(f"  {c['n_pairs']} half-False pairs, {side}: cosine "
              f"{100 * c[side]['cosine']['accuracy']:.2f} %, IDA-R "
              f"{100 * c[side]['ida-r']['accuracy']:.2f} %")
    print(f"wrote {write_result(f'lfw_bin_{args.backbone}', payload)}")


if __name__ == "__main__":
    main()
