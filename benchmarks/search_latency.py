"""Search latency on a real gallery: Stage 1 only vs Stage 1 + EMD re-ranking of the top 100.

    python -m benchmarks.search_latency [--gallery demo-out/gallery] [--probes 100]

The gallery is the one `make demo` builds (13,231 LFW images). Probes are the features of
seeded LFW images (one search call each, as the CLI and web page make them); probe feature
extraction is timed separately on image files. Reports p50 / p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_result
from facerank.face.features import FeatureExtractor
from facerank.gallery import StoredGallery
from facerank.rerank.base import make_stage2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gallery", type=Path, default=Path("demo-out/gallery"))
    ap.add_argument("--probes", type=int, default=100)
    args = ap.parse_args()
    console = Console()
    gallery = StoredGallery.open(args.gallery)
    feats = gallery.features()
    rows = np.random.default_rng(0).choice(len(feats), args.probes, replace=False)
    probes = [feats.take([int(r)]) for r in rows]
    gallery.search(probes[0], k=10)  # build the index, warm up
    timings = {}
    for name, stage2 in (("Stage 1 only", None),
                         ("Stage 1 + EMD top-100 (l2, APC)", make_stage2("emd", k=100))):
        ms = []
        for p in probes:
            t0 = time.perf_counter()
            gallery.search(p, k=10, stage2=stage2)
            ms.append(1000 * (time.perf_counter() - t0))
        timings[name] = {"p50_ms": float(np.percentile(ms, 50)),
                         "p95_ms": float(np.percentile(ms, 95))}
    g = gallery.extractor
    fx = FeatureExtractor(backbone=g.backbone, detector=g.detector, grids=g.grid_names,
                          cache=False)
    files = [Path(feats.paths[int(r)]) for r in rows[:20]]
    fx.extract_file(files[0])
    ex = []
    for f in files:
        t0 = time.perf_counter()
        fx.extract_file(f)
        ex.append(1000 * (time.perf_counter() - t0))
    timings["probe feature extraction (detect+align+network)"] = {
        "p50_ms": float(np.percentile(ex, 50)), "p95_ms": float(np.percentile(ex, 95))}
    table = Table(title=f"search latency, gallery of {len(gallery):,} images, "
                        f"{args.probes} probes")
    for col in ("step", "p50 ms", "p95 ms"):
        table.add_column(col, justify="right")
    for name, t in timings.items():
        table.add_row(name, f"{t['p50_ms']:.1f}", f"{t['p95_ms']:.1f}")
    console.print(table)
    path = write_result("search_latency", {"gallery_size": len(gallery),
                                           "probes": args.probes, "timings": timings})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
