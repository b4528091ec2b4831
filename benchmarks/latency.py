"""Photo -> answer latency of one probe through the public API, stage by stage, both backbones.

    python -m benchmarks.latency [--backbones sface,dlib] [--gallery-images 3000] [--probes 60]

For each backbone a gallery of LFW images is enrolled with `StoredGallery.add_files` (features
come from the extractor cache in FACERANK_CACHE, so nothing is re-extracted) into
/tmp/facerank-latency-<backbone>-<n> (kept for re-runs). 60 other LFW JPEGs, of people the
gallery holds, are the probes. Each probe runs the product chain: decode (`load_image`),
YuNet detection, alignment, embedding, Stage 1 (`StoredGallery.search`), calibrated Stage 1
(IDA-R), then the gated EMD Stage 2 (`search(..., calibrate=, stage2=)`); the Stage-2 time is
that of its `rerank` call inside the search. "total" is one timed call of the whole chain.

Every "before / after" pair is run alternately on the same probe in one process (before,
after, before, after, ...), so a ratio is not skewed by the shared machine's load, which is
written into the JSON (`uptime`) and the README table. Times are p50 / p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from facerank._util.paths import lfw_root
from facerank.face.features import FeatureExtractor, FeatureSet, make_extractor
from facerank.face.imageio import load_image
from facerank.gallery import StoredGallery
from facerank.ranking import Ranking


def load_avg() -> str:
    """`uptime`'s load averages (1, 5, 15 min)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip().split("load average:")[-1].strip()
    except OSError:
        return "unknown"


def pick_images(n_gallery: int, n_probes: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(gallery files, probe files): probes are people with >= 2 images, one probe each,
    whose other images are enrolled; the gallery is filled up with seeded other images."""
    root = lfw_root() / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())
    rng = random.Random(seed)
    files = {p.name: sorted(p.glob("*.jpg")) for p in people}
    multi = [n for n in files if len(files[n]) >= 2]
    chosen = rng.sample(multi, n_probes)
    probes = [files[n][0] for n in chosen]
    gallery = [f for n in chosen for f in files[n][1:]]
    rest = [f for n in files if n not in set(chosen) for f in files[n]]
    rng.shuffle(rest)
    gallery += rest[: max(0, n_gallery - len(gallery))]
    return gallery, probes


def open_gallery(backbone: str, files: list[Path]) -> StoredGallery:
    folder = Path(f"/tmp/facerank-latency-{backbone}-{len(files)}")
    if (folder / "done").is_file():
        return StoredGallery.open(folder)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    g = StoredGallery.create(folder, make_extractor(backbone=backbone))
    t0 = time.perf_counter()
    rep = g.add_files(files, [f.parent.name for f in files], progress=False)
    print(f"{backbone}: enrolled {rep.added} of {len(files)} in "
          f"{time.perf_counter() - t0:.0f} s (cached features)")
    (folder / "done").write_text("ok")
    return g


class Timed:
    """A Stage-2 re-ranker whose `rerank` calls are timed (ms appended to `times`)."""

    def __init__(self, inner: object) -> None:
        self.inner, self.times = inner, []
        self.name, self.k = inner.name, inner.k  # type: ignore[attr-defined]

    def rerank(self, queries: FeatureSet, gallery: FeatureSet, ranking: Ranking,
               progress: bool = False) -> Ranking:
        t0 = time.perf_counter()
        out = self.inner.rerank(queries, gallery, ranking, progress)  # type: ignore[attr-defined]
        self.times.append(1000 * (time.perf_counter() - t0))
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def calibrator(backbone: str, anchors: np.ndarray | None, model_id: str) -> object:
    """IDA-R with the bundled anchors (dlib) or with LFW faces outside the gallery (SFace)."""
    from facerank.calibrate.base import make_calibrator

    if backbone == "dlib":
        return make_calibrator("ida-r")
    from facerank.calibrate.anchors import AnchorSet

    assert anchors is not None
    return make_calibrator("ida-r", anchors=AnchorSet(anchors, model_id))


def probe_stages(fx: FeatureExtractor, path: Path) -> tuple[dict[str, float], FeatureSet]:
    """Decode, detect, align, embed one file -> ms per step and the probe's FeatureSet."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    image = load_image(path)
    t1 = time.perf_counter()
    det = fx.detector.detect(image, str(path))
    t2 = time.perf_counter()
    a = fx.align_detection(image, det)
    t3 = time.perf_counter()
    desc, grids = fx.embed_chips(a.chip[None])
    f = fx._features(a, desc[0], {k: v[0] for k, v in grids.items()}, str(path))
    probe = FeatureSet.stack([f], [], fx.grid_names)
    t4 = time.perf_counter()
    t.update(decode=t1 - t0, detect=t2 - t1, align=t3 - t2, embed=t4 - t3)
    return {k: 1000 * v for k, v in t.items()}, probe


def pct(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "n": len(ms)}


def run_backbone(backbone: str, args: argparse.Namespace,
                 variants: dict[str, dict[str, Callable[[], object]]]) -> dict:
    """Per-stage timings of the chain under each variant ("before" / "after"), alternated."""

    gfiles, probes = pick_images(args.gallery_images, args.probes)
    gallery = open_gallery(backbone, gfiles)
    anchors = None
    if backbone == "sface":  # 1,000 LFW faces outside the gallery and the probes
        saved = gallery.folder / "anchors.npy"
        if saved.is_file():
            anchors = np.load(saved)
        else:
            enrolled = set(map(str, gfiles)) | set(map(str, probes))
            root = lfw_root() / "images"
            others = [f for f in sorted(root.glob("*/*.jpg")) if str(f) not in enrolled]
            others = random.Random(1).sample(others, 1000)
            anchors = make_extractor(backbone="sface").extract_paths(
                others, progress=False).embeddings
            np.save(saved, anchors)
    cal = calibrator(backbone, anchors, gallery.meta().get("model_id", ""))
    chains = {}
    for vname, parts in variants.items():
        fx = parts["extractor"](backbone)  # type: ignore[operator]
        stage2 = Timed(parts["stage2"](backbone))  # type: ignore[operator]
        chains[vname] = (fx, stage2)
    names = ["decode", "detect", "align", "embed", "stage1", "stage1_calibrated", "stage2",
             "total"]
    times: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in chains}
    sent: dict[str, int] = dict.fromkeys(chains, 0)
    # warm up every variant (models, index, grids, calibration terms)
    for fx, stage2 in chains.values():
        _, p = probe_stages(fx, probes[0])
        gallery.search(p, k=10, stage2=stage2, calibrate=cal)
        stage2.times.clear()
    for path in probes:
        for _ in range(args.repeats):
            for vname, (fx, stage2) in chains.items():
                tt = times[vname]
                st, probe = probe_stages(fx, path)
                for k, v in st.items():
                    tt[k].append(v)
                t0 = time.perf_counter()
                gallery.search(probe, k=10)
                t1 = time.perf_counter()
                gallery.search(probe, k=10, calibrate=cal)
                t2 = time.perf_counter()
                res = gallery.search(probe, k=10, stage2=stage2, calibrate=cal)
                tt["stage1"].append(1000 * (t1 - t0))
                tt["stage1_calibrated"].append(1000 * (t2 - t1))
                tt["stage2"].append(stage2.times[-1])
                sent[vname] += bool(res[0].stage_scores.get("alpha", 0.0) > 0)
                t0 = time.perf_counter()  # the whole chain, one call after another
                _, probe = probe_stages(fx, path)
                gallery.search(probe, k=10, stage2=stage2, calibrate=cal)
                tt["total"].append(1000 * (time.perf_counter() - t0))
    out = {"gallery_size": len(gallery), "probes": len(probes), "repeats": args.repeats,
           "stage2": chains[next(iter(chains))][1].describe(),
           "calibration": cal.describe(),  # type: ignore[attr-defined]
           "variants": {v: {n: pct(times[v][n]) for n in names} for v in chains},
           "sent_to_stage2": sent}
    if "before" in chains and "after" in chains:
        out["ratio_before_over_after_p50"] = {
            n: out["variants"]["before"][n]["p50_ms"] / max(out["variants"]["after"][n]["p50_ms"],
                                                            1e-9) for n in names}
    gallery.close()
    return out


def default_variants(args: argparse.Namespace) -> dict[str, dict[str, Callable[[], object]]]:
    """"before": the settings the chain shipped with (SFace on one onnxruntime thread, EMD on
    every candidate of every query); "after": today's defaults."""
    from facerank.rerank.base import make_stage2

    def extractor(threads: int | None) -> Callable[[str], FeatureExtractor]:
        def make(backbone: str) -> FeatureExtractor:
            fx = make_extractor(backbone=backbone, cache=False)
            if backbone == "sface":
                from facerank.models.backbone import SFaceBackbone as SB

                fx.backbone = SB(threads=threads) if threads else SB()
            return fx
        return make

    def stage2(**kw: object) -> Callable[[str], object]:
        return lambda backbone: make_stage2("emd", backbone=backbone, **kw)

    return {"before": {"extractor": extractor(1), "stage2": stage2(**BEFORE_STAGE2)},
            "after": {"extractor": extractor(None), "stage2": stage2()}}


BEFORE_STAGE2: dict[str, object] = {"pre_gate": False}  # EMD on every query, then the gate


def readme_table(results: dict[str, dict]) -> str:
    lines = ["| backbone | stage | before p50 | before p95 | after p50 | after p95 | "
             "before / after (p50) |", "|---|---|---:|---:|---:|---:|---:|"]
    for bb, r in results.items():
        b, a = r["variants"]["before"], r["variants"]["after"]
        for n in b:
            lines.append(f"| {bb} | {n} | {b[n]['p50_ms']:.2f} | {b[n]['p95_ms']:.2f} | "
                         f"{a[n]['p50_ms']:.2f} | {a[n]['p95_ms']:.2f} | "
                         f"{r['ratio_before_over_after_p50'][n]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default="sface,dlib")
    ap.add_argument("--gallery-images", type=int, default=2000)
    ap.add_argument("--probes", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--name", default="latency")
    args = ap.parse_args()
    load_before = load_avg()
    results = {bb: run_backbone(bb, args, default_variants(args))
               for bb in args.backbones.split(",")}
    table = readme_table(results)
    print(table)
    path = write_result(args.name, {"load_before": load_before, "load_after": load_avg(),
                                    "cores_visible": os.cpu_count(), "results": results,
                                    "readme_table": table})
    print(f"load (1/5/15 min) before {load_before}, after {load_avg()}; wrote {path}")


if __name__ == "__main__":
    main()
