"""Photo -> answer with the default chain on an otherwise idle machine, and Stage 2 on a GPU.

The shared 2-core development machine is too loaded for absolute times, so this benchmark
packs a small kit here and runs on a lent machine (16 cores, one GPU), pinned to 2 cores:

    python -m benchmarks.device_latency kit --out .devkit      # here: LFW + FACERANK_CACHE
    taskset -c 0,1 python -m benchmarks.device_latency cpu --kit .devkit --out DIR
    python -m benchmarks.device_latency gpu --kit .devkit --out DIR

The kit (nothing of it is committed):
- `gallery/`: an SFace gallery of every LFW face except the probes' images (13,173 faces),
  enrolled from the cached features without grids (the default chain on SFace reads none);
- `probes/`: 60 LFW JPEGs of people the gallery holds (`benchmarks.latency.pick_images`);
- `enrol/`: 300 other LFW JPEGs, enrolled into a fresh gallery to time enrolment;
- `dlib200.npz`: dlib features with grids of 200 LFW faces, for one-probe Stage 2 timings.

`cpu` times, per probe and alternately: "before" (by default the same chain with SFace's
PRelu nodes kept and 64 faces per run; `FACERANK_DEVICE_BEFORE=one-thread`: SFace on one
onnxruntime thread and dlib's 5-point model run on every YuNet face) and "after" (today's
defaults):
decode, detect, align, embed, search (Stage 1 + `--stage2 auto` + match probability), and the
whole `facerank.Gallery.search(path)` call (first pass, so the feature cache is cold). Then
enrolment in images/s for both, and one-probe Stage 2 (k = 100) for EMD and Face-ViT (on the
CPU: the default onnx-int8 runtime and the torch model, `stage2_one_probe`; run it alone with
`--only stage2_one_probe`).
`gpu` times the one-probe and batched Stage 2 on the GPU beside the CPU. Times are p50 / p95 in
milliseconds; each JSON records the cores it was allowed and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BEFORE = os.environ.get("FACERANK_DEVICE_BEFORE", "prelu")  # what "before" means


def _pct(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "n": len(ms)}


def _where() -> dict:
    import torch

    from facerank._util.cores import usable_cores

    return {"usable_cores": usable_cores(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
            "torch": torch.__version__, "before": BEFORE,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ---- kit (here) ---------------------------------------------------------------------------

def _packed(fx: object) -> Path:
    """The evaluator's one-file cache of all LFW features for this extractor."""
    found = sorted((fx.cache_dir.parent.parent / "protocols" / fx.config_digest).glob(  # type: ignore[attr-defined]
        "lfw-all-*.npz"))
    if not found:
        raise SystemExit(f"no cached LFW features for {fx.model_id}; run "  # type: ignore[attr-defined]
                         "`facerank eval lfw-1680 --backbone ...` once first")
    return found[0]


def make_kit(out: Path) -> None:
    """Reads only the arrays it needs from the cached LFW features (not the grids)."""
    from benchmarks.latency import pick_images
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FaceFeatures, FeatureExtractor, FeatureSet, make_extractor
    from facerank.gallery import StoredGallery

    out.mkdir(parents=True, exist_ok=True)
    _, probes = pick_images(0, 60)
    pdir = out / "probes"
    pdir.mkdir(exist_ok=True)
    for p in probes:
        shutil.copy(p, pdir / f"{p.parent.name}__{p.name}")
    z = np.load(_packed(make_extractor(backbone="sface")), allow_pickle=False)
    paths = [str(Path(p).absolute()) for p in z["paths"]]
    labels = [Path(p).parent.name for p in paths]
    desc, l5, boxes, scores = z["descriptors"], z["landmarks5"], z["boxes"], z["det_scores"]
    sources = [str(x) for x in z["det_sources"]]
    skip = {str(p.absolute()) for p in probes}
    keep = [i for i, p in enumerate(paths) if p not in skip]
    rng = np.random.default_rng(0)
    enrol = rng.choice(keep, 300, replace=False)
    edir = out / "enrol"
    edir.mkdir(exist_ok=True)
    for i in enrol:
        p = Path(paths[i])
        shutil.copy(p, edir / f"{p.parent.name}__{p.name}")
    row = {p: i for i, p in enumerate(paths)}
    nan68 = np.full((68, 2), np.nan)

    def from_cache(batch: list[str]) -> tuple[list, list]:
        feats = []
        for p in batch:
            i = row[p]
            d = desc[i].astype(np.float32)
            feats.append(FaceFeatures(embedding=d / np.linalg.norm(d), descriptor=d, grids={},
                                      landmarks5=l5[i], landmarks68=nan68,
                                      chip_landmarks68=nan68, box=boxes[i],
                                      det_score=float(scores[i]), det_source=sources[i],
                                      path=p))
        return feats, []

    folder = out / "gallery"
    shutil.rmtree(folder, ignore_errors=True)
    fx = FeatureExtractor(backbone="sface", grids=(), cache=False,
                          detector=FaceDetector(method="yunet", landmarks68=False,
                                                landmarks5=False))
    g = StoredGallery.create(folder, fx, batch_size=4096)
    t0 = time.perf_counter()
    rep = g.add_files([paths[i] for i in keep], [labels[i] for i in keep], progress=False,
                      extract=from_cache)
    print(f"gallery: {rep.added} faces in {time.perf_counter() - t0:.0f} s", flush=True)
    g.close()
    zd = np.load(_packed(make_extractor(backbone="dlib")), allow_pickle=False)
    pick = np.sort(rng.choice(len(zd["paths"]), 200, replace=False))
    n = len(pick)
    FeatureSet(paths=[str(p) for p in zd["paths"][pick]], descriptors=zd["descriptors"][pick],
               grids={k[5:]: zd[k][pick] for k in zd.files if k.startswith("grid_")},
               landmarks5=zd["landmarks5"][pick], landmarks68=zd["landmarks68"][pick],
               chip_landmarks68=zd["chip_landmarks68"][pick], boxes=zd["boxes"][pick],
               det_scores=zd["det_scores"][pick],
               det_sources=[str(x) for x in zd["det_sources"][pick]]).save(out / "dlib200.npz")
    print(f"kit in {out}: gallery {rep.added} faces, {len(probes)} probes, 300 enrol images, "
          f"{n} dlib faces for Stage 2")


# ---- cpu (pinned) -------------------------------------------------------------------------

SKIP_5POINT_BEFORE = os.environ.get("FACERANK_DEVICE_NO_DLIB5") == "1"  # model not carried


def _extractors(gallery: object) -> dict[str, object]:
    """"after": today's defaults. "before" ($FACERANK_DEVICE_BEFORE): "prelu" (default), the
    same chain with SFace's PRelu nodes kept (onnxruntime's PRelu kernel, as shipped before
    `facerank.models.sface._prelu_as_max`) and up to 64 faces per onnxruntime run (before
    `RUN_BATCH`); "one-thread": SFace on one onnxruntime thread and
    dlib's 5-point model on YuNet faces (the chain before that)."""
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor
    from facerank.models.backbone import SFaceBackbone

    after = gallery.extractor  # type: ignore[attr-defined]
    after.cache_dir = None
    if BEFORE == "prelu":
        from benchmarks.sface_runtime import prelu_kept

        with prelu_kept():
            backbone = SFaceBackbone()
        backbone.net.run_batch = 64  # as the extractor's batches ran before
        before = FeatureExtractor(backbone=backbone, cache=False, grids=after.grid_names,
                                  detector=after.detector)
    else:
        before = FeatureExtractor(backbone=SFaceBackbone(threads=1), cache=False,
                                  grids=after.grid_names,
                                  detector=FaceDetector(method="yunet", landmarks68=False,
                                                        landmarks5=not SKIP_5POINT_BEFORE))
    return {"before": before, "after": after}


def chain(kit: Path, repeats: int, limit: int | None = None) -> dict:
    import facerank
    from benchmarks.latency import probe_stages
    from facerank.calibrate import factory
    from facerank.gallery import StoredGallery
    from facerank.rerank.base import make_stage2

    stored = StoredGallery.open(kit / "gallery")
    fxs = _extractors(stored)
    stage2 = make_stage2("auto", backbone="sface")
    model = factory.probability_model("none", "sface", None)
    probes = sorted((kit / "probes").glob("*.jpg"))[:limit]
    names = ["decode", "detect", "align", "embed", "search", "total"]
    times = {v: {n: [] for n in names} for v in fxs}
    for fx in fxs.values():  # warm up
        _, p = probe_stages(fx, probes[0])
        stored.search(p, k=10, stage2=stage2)
    for _ in range(repeats):
        for path in probes:
            for v, fx in fxs.items():
                t0 = time.perf_counter()
                st, probe = probe_stages(fx, path)
                t1 = time.perf_counter()
                res = stored.search(probe, k=10, stage2=stage2)
                factory.attach_probability(res, model)
                t2 = time.perf_counter()
                for k, x in st.items():
                    times[v][k].append(x)
                times[v]["search"].append(1000 * (t2 - t1))
                times[v]["total"].append(1000 * (t2 - t0))
    stored.close()
    with tempfile.TemporaryDirectory() as cache:  # the public call, cold feature cache
        os.environ["FACERANK_CACHE"] = cache
        api = facerank.Gallery.open(kit / "gallery")
        api.search(probes[0])
        api_ms = []
        for path in probes[1:]:
            t0 = time.perf_counter()
            api.search(path)
            api_ms.append(1000 * (time.perf_counter() - t0))
        api.close()
    out = {v: {n: _pct(times[v][n]) for n in names} for v in fxs}
    return {"stages": out, "api_search_cold": _pct(api_ms), "probes": len(probes),
            "repeats": repeats, "gallery_faces": len(StoredGallery.open(kit / "gallery")),
            "before_over_after_p50": {n: out["before"][n]["p50_ms"] / out["after"][n]["p50_ms"]
                                      for n in names}}


def enrolment(kit: Path, limit: int | None = None, copies: int = 1) -> dict:
    from facerank.gallery import StoredGallery

    files = sorted((kit / "enrol").glob("*.jpg"))[:limit]
    ids = [f.name.split("__")[0] for f in files]
    if copies > 1:  # the same photos with k trailing bytes: new files to the gallery, same faces
        extra = Path(tempfile.mkdtemp())
        more = []
        for k in range(1, copies):
            for f in files:
                more.append(extra / f"{k}-{f.name}")
                more[-1].write_bytes(f.read_bytes() + b"\0" * k)
        files, ids = files + more, ids * copies
    probe_gallery = StoredGallery.open(kit / "gallery")
    fxs = _extractors(probe_gallery)
    probe_gallery.close()
    out = {}
    # after: today's default; before: see `_extractors`. after runs twice: the second is
    # reported.
    for v in ("after", "before", "after"):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["FACERANK_CACHE"] = tmp  # a cold feature cache for every run
            g = StoredGallery.create(Path(tmp) / "g", fxs[v])
            t0 = time.perf_counter()
            rep = g.add_files(files, ids, progress=False)
            sec = time.perf_counter() - t0
            g.close()
        out[v] = {"images": len(files), "added": rep.added, "seconds": sec,
                  "images_per_s": len(files) / sec}
    out["after_over_before"] = out["after"]["images_per_s"] / out["before"]["images_per_s"]
    return out


def stage2_one_probe(kit: Path, device: str, probes: int = 30) -> dict:
    """One probe's Stage 2 on k = 100 candidates, EMD and Face-ViT alternately, on `device`."""
    import torch

    from facerank.face.features import FeatureSet
    from facerank.ranking import cosine_topk
    from facerank.rerank.base import make_stage2

    fs = FeatureSet.load(kit / "dlib200.npz")
    emd = make_stage2("emd", gate="none", device=device)
    vit = make_stage2("vit", gate="none", device=device)  # the device's default runtime
    scorers = {"emd": emd.emd_scores, "vit": vit.vit_scores}
    if vit.runtime != "torch":  # on the CPU: the torch model beside the default runtime
        vit_torch = make_stage2("vit", gate="none", device=device, runtime="torch")
        scorers["vit_torch"] = vit_torch.vit_scores
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t: dict[str, list[float]] = {n: [] for n in scorers}
    for i in range(probes + 3):
        probe = fs.take(np.array([i]))
        cand = cosine_topk(probe.embeddings, fs.embeddings, k=100).indices
        for name, fn in scorers.items():
            sync()
            t0 = time.perf_counter()
            fn(probe, fs, cand)
            sync()
            if i >= 3:
                t[name].append(1000 * (time.perf_counter() - t0))
    out = {n: _pct(v) for n, v in t.items()}
    out["emd_over_vit_p50"] = out["emd"]["p50_ms"] / out["vit"]["p50_ms"]
    if "vit_torch" in out:
        out["emd_over_vit_torch_p50"] = out["emd"]["p50_ms"] / out["vit_torch"]["p50_ms"]
    out["describe"] = {"emd": emd.describe(), "vit": vit.describe()}
    return out


def emd_chunks(kit: Path, probes: int = 30, sizes: tuple[int, ...] = (8, 32, 64, 128)
               ) -> dict:
    """One probe's EMD (100 candidates, CPU) with each smallest chunk a worker takes,
    alternately: p50 / p95 ms, and the largest score difference to the first setting."""
    from facerank.face.features import FeatureSet
    from facerank.ranking import cosine_topk
    from facerank.rerank.base import make_stage2
    from facerank.rerank.emd import solver

    fs = FeatureSet.load(kit / "dlib200.npz")
    emd = make_stage2("emd", gate="none")
    t: dict[int, list[float]] = {n: [] for n in sizes}
    diff = dict.fromkeys(sizes, 0.0)
    for i in range(probes + 3):
        probe = fs.take(np.array([i]))
        cand = cosine_topk(probe.embeddings, fs.embeddings, k=100).indices
        ref = None
        for n in sizes:
            solver.MIN_CHUNK_PAIRS = n
            t0 = time.perf_counter()
            sc = emd.emd_scores(probe, fs, cand)
            if i >= 3:
                t[n].append(1000 * (time.perf_counter() - t0))
            ref = sc if ref is None else ref
            diff[n] = max(diff[n], float(np.abs(sc - ref).max()))
    return {str(n): {**_pct(t[n]), "max_abs_score_diff": diff[n]} for n in sizes}


def stage2_batched(kit: Path, device: str) -> dict:
    """All 200 faces as queries against the 200 (k = 100): 20,000 pairs, us per pair."""
    import torch

    from facerank.face.features import FeatureSet
    from facerank.ranking import cosine_topk
    from facerank.rerank.base import make_stage2

    fs = FeatureSet.load(kit / "dlib200.npz")
    cand = cosine_topk(fs.embeddings, fs.embeddings, k=100).indices
    out = {}
    for name in ("emd", "vit"):
        rr = make_stage2(name, gate="none", device=device)
        score = rr.emd_scores if name == "emd" else rr.vit_scores
        score(fs.take(np.arange(20)), fs, cand[:20])  # warm up
        best = []
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            score(fs, fs, cand)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best.append(time.perf_counter() - t0)
        out[name] = {"seconds_best": min(best), "us_per_pair": 1e6 * min(best) / cand.size}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["kit", "cpu", "gpu", "emd-chunks"])
    ap.add_argument("--kit", type=Path, default=Path(".devkit"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="run only this part (chain, stage2_one_probe, "
                    "enrolment)")
    ap.add_argument("--copies", type=int, default=1, help="enrol each JPEG this many times "
                    "(copies with trailing bytes)")
    ap.add_argument("--limit", type=int, default=None, help="first N probes / enrol images "
                    "(a quick check of the script)")
    args = ap.parse_args()
    if args.mode == "kit":
        make_kit(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    where = _where()
    print(json.dumps(where))
    if args.mode == "emd-chunks":
        result = {"where": where, "emd_chunks": emd_chunks(args.kit)}
        print(json.dumps(result), flush=True)
        name = f"device_latency_emd_chunks_{where['usable_cores']}cores.json"
        (args.out / name).write_text(json.dumps(result, indent=1))
        return
    if args.mode == "cpu":
        result = {"where": where}
        for name, fn in (("chain", lambda: chain(args.kit, args.repeats, args.limit)),
                         ("stage2_one_probe", lambda: stage2_one_probe(args.kit, "cpu",
                                                                      args.limit or 30)),
                         ("enrolment", lambda: enrolment(args.kit, args.limit, args.copies))):
            if args.only and name != args.only:
                continue
            t0 = time.perf_counter()
            result[name] = fn()
            print(name, f"{time.perf_counter() - t0:.0f} s", json.dumps(result[name])[:1500],
                  flush=True)
            (args.out / "device_latency_cpu.json").write_text(json.dumps(result, indent=1))
    else:
        result = {"where": where}
        for dev in ("cuda", "cpu"):
            result[f"stage2_one_probe_{dev}"] = stage2_one_probe(args.kit, dev)
            result[f"stage2_batched_{dev}"] = stage2_batched(args.kit, dev)
            print(dev, json.dumps({k: v for k, v in result.items() if dev in k})[:1500],
                  flush=True)
            (args.out / "device_latency_gpu.json").write_text(json.dumps(result, indent=1))
    result["where_after"] = _where()
    name = "device_latency_cpu.json" if args.mode == "cpu" else "device_latency_gpu.json"
    (args.out / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
