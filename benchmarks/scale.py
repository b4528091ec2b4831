"""Engines beyond one process, measured on this machine.

    python -m benchmarks.scale enrol   [--n 13233]   in-process vs Ray Data (local) enrolment
    python -m benchmarks.scale latency [--probes 100] faiss vs milvus-lite search on LFW
    python -m benchmarks.scale milvus1m [--n 1000000]  milvus-lite at 1M synthetic faces

enrol: the same N LFW images (sorted, spread over all of LFW) enrolled into two new galleries
with the feature cache off, first in-process, then through `RayExtract` on a local Ray; Ray's
start-up is timed apart from the enrolment. latency: two galleries of the 13,231 LFW images
`make demo` enrols (features from the cache), one searched by faiss (flat), then one by
milvus-lite (FLAT, IP), with the same 100 probes; one engine open at a time. milvus1m: the
synthetic data of `benchmarks.faiss_scale` inserted into milvus-lite; recall@100 against faiss
exact search.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.common import write_result
from benchmarks.faiss_scale import synthetic
from facerank.eval.protocols import lfw_extractor
from facerank.eval.readers.lfw import load_lfw
from facerank.face.features import FeatureExtractor
from facerank.gallery import StoredGallery

console = Console()


def _lfw(n: int) -> tuple[list[str], list[str]]:
    lfw = load_lfw()
    pick = np.linspace(0, len(lfw) - 1, min(n, len(lfw))).round().astype(int)
    return ([str(lfw.paths[i]) for i in pick], [lfw.names[lfw.labels[i]] for i in pick])


def enrol(args: argparse.Namespace) -> None:
    from facerank.scale.ray import RayExtract

    paths, names = _lfw(args.n)
    fx = FeatureExtractor(cache=False)
    tmp = Path(tempfile.mkdtemp())
    try:
        g = StoredGallery.create(tmp / "in-process", fx)
        t0 = time.perf_counter()
        rep_a = g.add_files(paths, names, progress=True)
        in_process = time.perf_counter() - t0
        t0 = time.perf_counter()
        rx = RayExtract(fx, None, batch_size=args.batch, concurrency=args.concurrency,
                        cache=False)
        startup = time.perf_counter() - t0
        g2 = StoredGallery.create(tmp / "ray", fx)
        t0 = time.perf_counter()
        rep_b = g2.add_files(paths, names, progress=True, extract=rx)
        ray_s = time.perf_counter() - t0
        fa, fb = g.features(grids=False), g2.features(grids=False)
        oa, ob = np.argsort(fa.paths), np.argsort(fb.paths)
        diff = float(np.abs(fa.descriptors[oa] - fb.descriptors[ob]).max())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"n_images": len(paths), "in_process_s": in_process, "ray_s": ray_s,
           "ray_startup_s": startup, "in_process_images_per_s": rep_a.added / in_process,
           "ray_images_per_s": rep_b.added / ray_s, "ray_over_in_process": ray_s / in_process,
           "added": [rep_a.added, rep_b.added], "max_abs_descriptor_diff": diff,
           "ray": {"concurrency": rx.concurrency, "batch_size": rx.batch_size,
                   "threads_per_actor": rx.threads}}
    console.print(out)
    console.print(f"wrote {write_result(f'scale_enrol_n{len(paths)}', out)}")


def _time_search(g: StoredGallery, probes: list, k: int = 10
                 ) -> tuple[list[float], list[list[str]]]:
    g.search(probes[0], k=k)  # build / warm
    ms, paths = [], []
    for p in probes:
        t0 = time.perf_counter()
        res = g.search(p, k=k)
        ms.append(1000 * (time.perf_counter() - t0))
        paths.append([r.path for r in res])
    return ms, paths


def latency(args: argparse.Namespace) -> None:
    """One engine at a time: milvus-lite serves from threads inside this process, which slow a
    faiss search timed beside it (measured on LFW: faiss p50 20 ms with the milvus-lite gallery
    open and probes interleaved, 0.61 ms alone)."""
    paths, names = _lfw(13233)
    held = {"Andre_Agassi_0008.jpg", "Amelie_Mauresmo_0015.jpg"}  # what `make demo` holds out
    keep = [i for i, p in enumerate(paths) if Path(p).name not in held]
    paths, names = [paths[i] for i in keep], [names[i] for i in keep]
    fx = lfw_extractor()  # the demo's set-up, features cached: this measures search
    tmp = Path(tempfile.mkdtemp())
    ms: dict[str, list[float]] = {}
    tops: dict[str, list[list[str]]] = {}
    add_s: dict[str, float] = {}
    try:
        for name, kw in (("faiss flat", {}),
                         ("milvus-lite FLAT", {"index": "milvus",
                                               "milvus_uri": str(tmp / "faces.db")})):
            g = StoredGallery.create(tmp / name.split()[0], fx, **kw)
            t0 = time.perf_counter()
            g.add_files(paths, names, progress=True)
            add_s[name] = time.perf_counter() - t0
            feats = g.features(grids=False)
            rows = np.random.default_rng(0).choice(len(feats), args.probes, replace=False)
            ms[name], tops[name] = _time_search(g, [feats.take([int(r)]) for r in rows])
            n = len(g)
            g.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    a, b = tops.values()
    out = {"gallery_size": n, "probes": args.probes, "k": 10, "enrol_from_cache_s": add_s,
           "same_top10": float(np.mean([x == y for x, y in zip(a, b, strict=True)])),
           "timings": {k: {"p50_ms": float(np.percentile(v, 50)),
                           "p95_ms": float(np.percentile(v, 95))} for k, v in ms.items()}}
    console.print(out)
    console.print(f"wrote {write_result('scale_search_latency', out)}")


def milvus1m(args: argparse.Namespace) -> None:
    import faiss
    from pymilvus import DataType, MilvusClient

    from facerank.gallery.milvus import disconnect

    x, ids, q, qid = synthetic(args.n, args.queries)
    k = 100
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, k)
    tmp = Path(tempfile.mkdtemp())
    uri = str(tmp / "bench.db")
    client = MilvusClient(uri)
    rows = []
    try:
        for index_type, params in (("FLAT", {}), ("IVF_FLAT", {"nlist": int(4 * np.sqrt(args.n))})):
            name = f"b_{index_type.lower()}"
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=x.shape[1])
            ip = client.prepare_index_params()
            ip.add_index(field_name="vector", index_type=index_type, metric_type="IP",
                         params=params)
            client.create_collection(name, schema=schema, index_params=ip)
            t0 = time.perf_counter()
            for s in range(0, len(x), 20000):
                client.insert(name, [{"id": int(i), "vector": x[i]}
                                     for i in range(s, min(len(x), s + 20000))])
            client.flush(name)
            client.load_collection(name)
            insert_s = time.perf_counter() - t0
            probes = [None] if index_type == "FLAT" else [8, 32, 128]
            for nprobe in probes:
                sp = {"metric_type": "IP", "params": {"nprobe": nprobe} if nprobe else {}}
                client.search(name, data=[q[0].tolist()], limit=k, search_params=sp)
                t0 = time.perf_counter()
                hits = client.search(name, data=[v.tolist() for v in q], limit=k,
                                     search_params=sp, output_fields=["id"])
                batched = 1000 * (time.perf_counter() - t0) / len(q)
                single = []
                for v in q[:20]:
                    t0 = time.perf_counter()
                    client.search(name, data=[v.tolist()], limit=k, search_params=sp)
                    single.append(1000 * (time.perf_counter() - t0))
                got = np.array([[h["id"] for h in r] + [-1] * (k - len(r)) for r in hits])
                recall = float(np.mean([len(set(a) & set(b)) / k
                                        for a, b in zip(got, truth, strict=True)]))
                mates = float(np.mean(ids[np.maximum(got, 0)] == qid[:, None]) * k / 10)
                rows.append({"index": f"milvus-lite {index_type}"
                             + (f" nprobe={nprobe}" if nprobe else ""),
                             "insert_s": insert_s, "recall_at_100": recall,
                             "mates_found": mates, "ms_per_query_batched": batched,
                             "ms_per_query_single": float(np.median(single))})
                console.print(rows[-1])
            client.drop_collection(name)
    finally:
        disconnect(client, uri)
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_result("milvus_scale", {"n": args.n, "queries": args.queries, "rows": rows})
    console.print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("enrol")
    e.add_argument("--n", type=int, default=13233)
    e.add_argument("--batch", type=int, default=32)
    e.add_argument("--concurrency", type=int, default=None)
    la = sub.add_parser("latency")
    la.add_argument("--probes", type=int, default=100)
    m = sub.add_parser("milvus1m")
    m.add_argument("--n", type=int, default=1_000_000)
    m.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    {"enrol": enrol, "latency": latency, "milvus1m": milvus1m}[args.cmd](args)


if __name__ == "__main__":
    main()
