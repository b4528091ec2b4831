"""Stage 1 vs EMD under each gate, per LFW protocol and photo variant, on one identity half.

    python -m benchmarks.gate_variants --backbone sface \
        --gates bundled benchmarks/results/gate_sface_benefit_gate.json

The groups are those `facerank train gate` fits on (`facerank.train.gate.gate_groups`: 500
seeded queries per LFW protocol, 300 per identity half and photo variant through YuNet; EMD
scores cached), reported on `--half` (B = the people the benefit gate was not fitted on). A gate
is "bundled" (the gate `--stage2 emd` uses on this backbone), "none" (EMD on every query) or a
gate JSON. With `--checkpoint`, the Stage 2 is that Face-ViT (at its gated alpha) instead of EMD,
and "bundled" is the gate `--stage2 vit` uses with it (the benefit gate beside it, else the one
its checkpoint stores). A gate with a pre-gate beside it runs as the product runs it: Stage 2
only for the queries the pre-gate passes. The bundled SFace EMD gate was fitted on both halves
of the chip-level protocols, so only its photo-variant rows are held out. `--protocols` and
`--variants` choose the groups (e.g. one protocol, all its queries, with a large
`--protocol-limit` and no variants).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import write_result
from facerank.eval.photo_variants import PHOTO_VARIANTS
from facerank.eval.protocols import IDENTIFICATION
from facerank.rerank.gate import FEATURES, PreGate, QualityGate, bundled_gate_path
from facerank.train.gate import PRE_COLUMNS, gate_groups


def bundled_vit_gate(checkpoint: str) -> QualityGate | None:
    """The gate `--stage2 vit` uses with this checkpoint (`gate="auto"`)."""
    from facerank._util.checkpoint import read_config
    from facerank.rerank.vit.reranker import auto_gate

    return auto_gate(checkpoint, read_config(checkpoint))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="sface")
    ap.add_argument("--gates", nargs="+", default=["bundled"])
    ap.add_argument("--half", default="B", choices=["A", "B"])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--protocol-limit", type=int, default=500)
    ap.add_argument("--checkpoint", default=None, help="a Face-ViT checkpoint (default: EMD)")
    ap.add_argument("--name", default=None, help="result name (default from the options)")
    ap.add_argument("--protocols", nargs="*", default=list(IDENTIFICATION))
    ap.add_argument("--variants", nargs="*", default=["clean", *PHOTO_VARIANTS])
    a = ap.parse_args(argv)
    groups, _, rr = gate_groups(a.backbone, a.n, protocol_limit=a.protocol_limit,
                                progress=False, checkpoint=a.checkpoint,
                                protocols=tuple(a.protocols), variants=tuple(a.variants))
    a.alpha = rr.alpha
    groups = [g.take(g.fold == (a.half == "A")) for g in groups]
    out: dict = {"setup": vars(a), "rows": []}
    gates = {}
    for name in a.gates:
        if name == "bundled" and a.checkpoint:
            gates[name] = bundled_vit_gate(a.checkpoint)
            continue
        gates[name] = (None if name == "none" else QualityGate.load(
            bundled_gate_path("l2", "apc", a.backbone) if name == "bundled" else name))
    for g in groups:
        s1, plain = g.p_at_1()
        row = {"group": g.name, "queries": len(g.fold), "p1_stage1": s1, "p1_emd": plain}
        for name, gate in gates.items():
            # GateGroup.x holds FEATURES then EXTRA_FEATURES; a plain gate reads the first
            x = g.x if gate is None or gate.extras else g.x[:, : len(FEATURES)]
            sent = np.ones(len(g.fold), bool) if gate is None else gate.use_stage2(x)
            pre = None if gate is None else PreGate.for_gate(gate)
            if pre is not None:  # the product's cascade: Stage 2 scores what the pre-gate passes
                passed = pre.maybe_stage2(g.x[:, PRE_COLUMNS])
                sent &= passed
                row[f"pre_passed_{name}"] = float(passed.mean())
            row[f"p1_{name}"] = g.p_at_1(sent)[1]
            row[f"sent_{name}"] = float(sent.mean())
        out["rows"].append(row)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)
    name = a.name or (f"gate_variants_{a.backbone}_half{a.half}"
                      + ("" if a.n == 300 else f"_n{a.n}"))
    print(f"wrote {write_result(name, out)}")
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
