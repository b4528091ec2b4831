"""Enrolment on this machine's cores: the gallery's extractor in worker processes.

    batches ──► ProcessPoolExecutor(workers, spawn) ──► each worker: its own FeatureExtractor,
            one thread for each network ──► (features, failures) back in batch order
            ──► the driver writes the gallery store

One process per core beats one process with a thread per core: the networks split one small
face poorly across threads (SFace embeds a face 1.72x faster on 2 threads than on 1, not 2x),
and a second process also overlaps decoding, detection and the store's writes. Each worker
rebuilds the driver's extractor (`scale.ray.build_extractor`), so it computes exactly what the
in-process extractor computes, and shares its feature cache. Only the driver writes the
gallery, so its crash-safety rules hold unchanged.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from facerank._util.cores import usable_cores
from facerank.face.features import FaceFeatures, FeatureExtractor
from facerank.scale.ray import build_extractor, extractor_config

Todo = tuple[str, str, str]  # (path, identity, sha1)
Result = tuple[list[FaceFeatures | None], list[tuple[str, str]]]

_WORKER: Any = None  # the worker process's batch extractor


def _init(config: dict[str, Any], cache: bool) -> None:
    global _WORKER
    import cv2

    from facerank.gallery.core import _InProcess

    cv2.setNumThreads(1)
    _WORKER = _InProcess(build_extractor(config, cache, threads=1))


def _run(paths: list[str]) -> Result:
    return _WORKER(paths)


class ProcessExtract:
    """A batch extractor for `StoredGallery.add_files(extract=...)` on `workers` processes."""

    def __init__(self, fx: FeatureExtractor, workers: int) -> None:
        self.config = extractor_config(fx)
        self.cache = fx.cache_dir is not None
        self.workers = max(1, int(workers))

    def stream(self, batches: Sequence[Sequence[Todo]]
               ) -> Iterator[tuple[list[Todo], list[FaceFeatures | None],
                                   list[tuple[str, str]]]]:
        """(todo rows, features or None, failures) per batch, in order, as workers finish."""
        ctx = multiprocessing.get_context("spawn")  # no forked copies of loaded models
        done = 0
        try:
            with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                     initargs=(self.config, self.cache)) as pool:
                futures = [pool.submit(_run, [p for p, _, _ in b]) for b in batches]
                for batch, fut in zip(batches, futures, strict=True):
                    feats, failures = fut.result()
                    done += 1
                    yield list(batch), feats, failures
        except BrokenProcessPool:
            # a worker could not start (e.g. a script without `if __name__ == "__main__":`
            # re-ran on import) or died: the remaining batches run in this process
            from facerank.gallery.core import _InProcess

            here = _InProcess(build_extractor(self.config, self.cache, threads=usable_cores()))
            for batch in batches[done:]:
                feats, failures = here([p for p, _, _ in batch])
                yield list(batch), feats, failures

    def __call__(self, paths: Sequence[str]) -> Result:
        feats: list[FaceFeatures | None] = []
        failures: list[tuple[str, str]] = []
        for _, f, fail in self.stream([[(str(p), "", "") for p in paths]]):
            feats += f
            failures += fail
        return feats, failures
