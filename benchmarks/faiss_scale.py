"""When to leave exact search: a synthetic 1M-face gallery, exact vs IVF vs HNSW (faiss).

    python -m benchmarks.faiss_scale [--n 1000000] [--queries 200] [--no-hnsw]

Data mimics face embeddings: `n / 10` identities with 10 noisy unit-norm samples each in 128-D;
queries are fresh noisy samples of random identities. Recall@100 is the share of the exact
top-100 that an approximate index returns; "mates found" the share of the query identity's 10
gallery samples in its top 100 (what identification needs); latency per query, in a batch of
all queries and one query at a time.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_result

NOISE = 0.6  # norm of a sample's offset from its identity's centre (unit vectors)


def synthetic(n: int, n_queries: int, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Gallery (n, dim), its identity ids (n,), queries (Q, dim) and their ids (Q,)."""
    rng = np.random.default_rng(seed)
    n_id = max(1, n // 10)
    centres = rng.standard_normal((n_id, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def sample(ids: np.ndarray) -> np.ndarray:
        v = centres[ids] + NOISE / np.sqrt(dim) * rng.standard_normal((len(ids), dim),
                                                                     dtype=np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    ids = np.repeat(np.arange(n_id), 10)[:n]
    qid = rng.integers(0, n_id, n_queries)
    return sample(ids), ids, sample(qid), qid


def timed_search(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """Indices of a batch search, ms/query batched (100 at a time) and one at a time (first 50)."""
    t0 = time.perf_counter()
    _, idx = index.search(q, k)
    batched = 1000 * (time.perf_counter() - t0) / len(q)
    singles = []
    for row in q[:50]:
        t0 = time.perf_counter()
        index.search(row[None], k)
        singles.append(1000 * (time.perf_counter() - t0))
    return idx, batched, float(np.median(singles))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-hnsw", action="store_true")
    args = ap.parse_args()
    console = Console()
    x, ids, q, qid = synthetic(args.n, args.queries)
    dim, k = x.shape[1], 100
    rows = []

    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    truth, b_ms, s_ms = timed_search(exact, q, k)
    def recall(idx: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, truth, strict=True)]))

    def mates(idx: np.ndarray) -> float:
        """Share of the query identity's 10 gallery samples found in the top 100."""
        return float(np.mean(ids[np.maximum(idx, 0)] == qid[:, None]) * k / 10)

    rows.append({"index": "exact (IndexFlatIP)", "build_s": 0.0, "recall_at_100": 1.0,
                 "mates_found": mates(truth), "ms_per_query_batched": b_ms,
                 "ms_per_query_single": s_ms})

    nlist = int(4 * np.sqrt(args.n))
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = x[np.random.default_rng(1).choice(len(x), min(len(x), 64 * nlist), replace=False)]
    ivf.train(sample)
    ivf.add(x)
    build = time.perf_counter() - t0
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        idx, b_ms, s_ms = timed_search(ivf, q, k)
        rows.append({"index": f"IVF{nlist},Flat nprobe={nprobe}", "build_s": build,
                     "recall_at_100": recall(idx), "mates_found": mates(idx),
                     "ms_per_query_batched": b_ms, "ms_per_query_single": s_ms})
    if not args.no_hnsw:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(x)
        build = time.perf_counter() - t0
        for ef in (64, 128, 256):
            hnsw.hnsw.efSearch = ef
            idx, b_ms, s_ms = timed_search(hnsw, q, k)
            rows.append({"index": f"HNSW32 efSearch={ef}", "build_s": build,
                         "recall_at_100": recall(idx), "mates_found": mates(idx),
                         "ms_per_query_batched": b_ms, "ms_per_query_single": s_ms})

    table = Table(title=f"{args.n:,} synthetic 128-D faces, {args.queries} queries, top-100, "
                        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    for col in ("index", "build s", "recall@100", "mates found", "ms/query (batch)",
                "ms/query (single)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["index"], f"{r['build_s']:.1f}", f"{r['recall_at_100']:.3f}",
                      f"{r['mates_found']:.3f}",
                      f"{r['ms_per_query_batched']:.2f}", f"{r['ms_per_query_single']:.2f}")
    console.print(table)
    path = write_result("faiss_scale", {"n": args.n, "queries": args.queries, "rows": rows})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
