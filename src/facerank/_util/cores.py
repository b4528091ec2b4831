"""How many cores this process may use."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, a container's cpuset) where
    the platform reports one, else `os.cpu_count()`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


MAX_ORT_THREADS = 4  # onnxruntime intra-op threads at most: one face or one probe's pairs
# gain little beyond


def ort_session_options(threads: int | None = None) -> object:
    """onnxruntime `SessionOptions` for one model on `threads` intra-op threads (None: one per
    usable core, at most `MAX_ORT_THREADS`), all graph optimisations, quiet logs, and threads
    that sleep when a run ends.

    By default onnxruntime's threads spin-wait for more work after each run
    (`session.intra_op.allow_spinning`). On a few cores a spinning thread holds its core while
    the next step runs (the search, another model, the next image's decoding), so facerank
    turns spinning off; `$FACERANK_ORT_SPIN=1` turns it back on. On 2 pinned cores of an idle
    machine, spinning off measured: photo to answer 27.0 vs 29.0 ms p50, enrolment 46.2 vs
    42.6 images/s, and EMD after a Face-ViT run 10.3 vs 14.0 ms
    (benchmarks/results/device_latency_cpu_spin.json)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads or min(MAX_ORT_THREADS, usable_cores()))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("FACERANK_ORT_SPIN", "0").strip() != "1":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
