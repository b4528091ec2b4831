"""LFW pairs (10 folds) on SFace with the product's own alignment (YuNet and its five points),
cosine against AS-norm and IDA-R with identity-disjoint LFW anchors per fold
(`facerank.eval.studies.calibration`: anchors from the people absent from the fold).

    python -m benchmarks.sface_pairs_calibrated

`facerank eval lfw-pairs --calibrate ...` scores the evaluation set-up's features (HOG-68
points); this scores the chain `benchmarks.sface_chain` calls "YuNet" (features cached by it).
Writes benchmarks/results/sface_pairs_calibrated.json.
"""

from __future__ import annotations

from benchmarks.common import write_result
from facerank.eval.protocols import EvalData, chain_extractor
from facerank.eval.studies.calibration import eval_protocol


def main() -> dict:
    data = EvalData.load(chain_extractor("yunet", "points", backbone="sface"), progress=True)
    out = {}
    for name in ("asnorm", "ida-r"):
        payload, md = eval_protocol(data, "lfw-pairs", name, 0, None)
        out[name] = payload
        print(md, flush=True)
    print(f"wrote {write_result('sface_pairs_calibrated', out)}")
    return out


if __name__ == "__main__":
    main()
