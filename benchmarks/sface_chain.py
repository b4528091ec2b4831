"""SFace's Stage 1 on LFW through two detection chains, with and without cheap additions.

    python -m benchmarks.sface_chain [--fusion 0.2]

Chains (every LFW image, 13,233, through each; features cached in FACERANK_CACHE):
    fixed    the evaluation set-up (`lfw_extractor(backbone="sface")`: HOG, face nearest the
             centre, central box; ArcFace points from dlib's 68 landmarks)
    product  the product's default chain (`chain_extractor("yunet", "points")`: YuNet, its own
             five points, face nearest the centre, central box)
Additions, each on both chains:
    flip     test-time flip: descriptor = unit(d(chip)) + unit(d(mirrored chip)), the chip cut
             again at the stored points (costs a second SFace pass per face)
    fusion   score fusion with dlib's descriptor of the same image (fixed set-up):
             (1 - w) * cos_SFace + w * cos_dlib (costs a dlib pass per face)
Reported: LFW-1680 P@1 / RP / MAP@R (9,164 queries), pairs 10-fold accuracy and TAR@FAR 1e-3,
open set TPIR@FPIR 1 % / 10 % (seed 0). JSON: benchmarks/results/sface_chain.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib

import numpy as np

from benchmarks.common import write_result
from facerank._util.paths import cache_root
from facerank.eval.protocols import (
    EvalData,
    chain_extractor,
    lfw_extractor,
    run_identification,
    run_openset,
    run_pairs,
)
from facerank.face.align.arcface import arcface_chip
from facerank.face.features import l2_normalize
from facerank.face.imageio import load_image
from facerank.models.backbone import make_backbone


def flipped_descriptors(data: EvalData) -> np.ndarray:
    """(N, 128) SFace descriptors of the mirrored chips at each image's stored points (cached
    under `<cache>/benchmarks/`)."""
    fs = data.features
    key = hashlib.sha1(("flip" + data.extractor.config_digest + "".join(fs.paths)).encode())
    path = cache_root() / "benchmarks" / f"sface-flip-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    net = make_backbone("sface")
    out = []
    for s in range(0, len(fs), 64):
        chips = np.stack([arcface_chip(load_image(p), fs.landmarks5[i])
                          for i, p in enumerate(fs.paths[s : s + 64], start=s)])
        out.append(net.embed_chips(chips[:, :, ::-1], 64, ())[0])
    desc = np.concatenate(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, desc)
    return desc


def stage1(data: EvalData, emb: np.ndarray) -> dict:
    """LFW-1680, pairs and open set of Stage 1 on unit rows `emb` (row i: image i)."""
    fs = dataclasses.replace(data.features, descriptors=emb.astype(np.float32), grids={})
    d = dataclasses.replace(data, features=fs)
    r = run_identification(d, "lfw-1680", progress=False).stage1
    p = run_pairs(d)["stage1"]
    o = run_openset(d, progress=False)["stage1"]
    return {"lfw1680_p_at_1": 100 * r["p_at_1"], "lfw1680_rp": 100 * r["r_precision"],
            "lfw1680_map_at_r": 100 * r["map_at_r"], "pairs_accuracy": 100 * p["accuracy"],
            "pairs_std": 100 * p["accuracy_std"], "pairs_tar_at_far_1e-3":
            100 * p["tar_at_far_1e-3"], "openset_tpir_1e-2": 100 * o["tpir_at_fpir_1e-2"],
            "openset_tpir_1e-1": 100 * o["tpir_at_fpir_1e-1"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fusion", type=float, default=0.2, help="dlib's weight w in the fusion")
    args = ap.parse_args()
    dlib = EvalData.load(lfw_extractor(backbone="dlib"), progress=False).features.embeddings
    w = args.fusion
    rows = {}
    for chain, fx in (("fixed", lfw_extractor(backbone="sface")),
                      ("product", chain_extractor("yunet", "points", backbone="sface"))):
        data = EvalData.load(fx, progress=True)
        plain = data.features.embeddings
        flip = l2_normalize(plain + l2_normalize(flipped_descriptors(data)))
        for name, emb in (("plain", plain), ("flip", flip)):
            rows[f"{chain}/{name}"] = stage1(data, emb)
            fused = np.concatenate([np.sqrt(1 - w) * emb, np.sqrt(w) * dlib], axis=1)
            rows[f"{chain}/{name}+dlib{w:g}"] = stage1(data, fused)
        rows[f"{chain}/detections"] = {s: data.features.det_sources.count(s)
                                       for s in sorted(set(data.features.det_sources))}
    for name, row in rows.items():
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
    write_result("sface_chain", {"fusion_weight": w, "rows": rows})


if __name__ == "__main__":
    main()
