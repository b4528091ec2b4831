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


def ort_session_options(threads: int) -> object:
    """onnxruntime `SessionOptions` for one model on `threads` intra-op threads, all graph
    optimisations, quiet logs.

    `$FACERANK_ORT_SPIN=0` stops the threads from spin-waiting after each run (onnxruntime's
    `session.intra_op.allow_spinning`): a spinning thread holds its core for a while after the
    model returns, which slows whatever runs next on the same few cores (another model, the
    search, image decoding in a second thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("FACERANK_ORT_SPIN", "1").strip() == "0":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
