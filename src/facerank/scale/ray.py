"""Enrolment and evaluation on Ray Data: images read, detected, aligned and embedded as a Ray
Dataset, the results written through the same gallery store as the in-process path.

    paths ──► ray.data.from_items ──► map_batches(_ExtractActor, concurrency=N, batch_size=B)
          ──► iter_batches on the driver ──► StoredGallery store (SQLite + shards [+ Milvus])

Each actor builds its own `FeatureExtractor` once (detector, landmark predictors and the
network load per actor, not per batch) from the driver's settings, so it computes exactly what
the in-process extractor computes. `address=None` starts a local Ray on this machine (what the
tests use); `"auto"` or `"ray://host:10001"` joins a running cluster, whose workers must see
the image paths (shared storage) and have facerank installed. Only the driver writes the
gallery, so its crash-safety rules hold unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from facerank.errors import FacerankError, InputError
from facerank.face.features import FaceFeatures, FeatureExtractor, FeatureSet, l2_normalize

Todo = tuple[str, str, str]  # (path, identity, sha1)


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--ray needs the optional engines: pip install 'facerank[scale]' "
                         f"({e.name or e} is not installed)") from None
    return ray


def extractor_config(fx: FeatureExtractor) -> dict[str, Any]:
    """What a worker needs to rebuild `fx` (plain JSON: no pickled model), including which of
    dlib's landmark models it runs, so workers compute exactly what `fx` computes."""
    d = fx.detector
    return {"detector": {"method": d.method, "policy": d.policy, "fallback": d.fallback,
                         "upsample": d.upsample, "retry_upsample": d.retry_upsample,
                         "landmarks68": d.landmarks68, "landmarks5": d.landmarks5},
            "grids": list(fx.grid_names), "model_id": fx.model_id,
            "backbone": fx.backbone.name, "aligned": fx.aligned,
            "align5": getattr(d, "align5", None)}


def build_extractor(config: dict[str, Any], cache: bool, threads: int) -> FeatureExtractor:
    """The extractor `extractor_config` describes, its networks on `threads` threads."""
    import torch

    from facerank.face.detect import FaceDetector
    from facerank.models.backbone import SFaceBackbone, make_backbone

    torch.set_num_threads(max(1, threads))
    det = dict(config["detector"])
    if config.get("align5") is not None:
        det["align5"] = config["align5"]
    backbone = (SFaceBackbone(threads=max(1, threads)) if config["backbone"] == "sface"
                else make_backbone(config["backbone"]))
    fx = FeatureExtractor(backbone=backbone, detector=FaceDetector(**det),
                          grids=config["grids"], cache=cache, aligned=config["aligned"])
    if fx.model_id != config["model_id"]:
        raise FacerankError(f"a worker builds model {fx.model_id}, the driver "
                            f"{config['model_id']}: install the same facerank everywhere")
    return fx


def start(address: str | None, num_cpus: int | None = None) -> Any:
    """`ray.init` for a local Ray (address None) or a cluster; one-line error if unreachable."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    try:
        with warnings.catch_warnings():  # our one line below says what its warning says
            warnings.simplefilter("ignore")
            try:
                ray.init(**kwargs)
            except Exception:  # noqa: BLE001
                if address:
                    raise
                # a local Ray's first start can time out on a loaded machine (its GCS did
                # not answer in time); one clean retry, then the error stands
                ray.shutdown()
                ray.init(**kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # facerank draws its own
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ...
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InputError(f"cannot start or reach Ray at {address or 'a local Ray'} ({msg}); "
                         "check the address (ray://host:10001 or auto) or run without "
                         "an address for a local Ray") from None
    return ray


class _ExtractActor:
    """A Ray actor: one FeatureExtractor, many batches of paths."""

    def __init__(self, config: dict[str, Any], cache: bool, threads: int) -> None:
        self.fx = build_extractor(config, cache, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        fs = self.fx.extract_paths(paths, progress=False)
        failed = dict(fs.failures)
        n, rows = len(paths), {p: i for i, p in enumerate(fs.paths)}
        d = fs.descriptors.shape[1] if len(fs) else 128
        out: dict[str, Any] = {
            "i": batch["i"], "ok": np.array([p in rows for p in paths]),
            "error": np.array([failed.get(p, "") for p in paths], dtype=object),
            "descriptor": np.zeros((n, d), np.float32),
            "landmarks5": np.full((n, 5, 2), np.nan), "landmarks68": np.full((n, 68, 2), np.nan),
            "chip_landmarks68": np.full((n, 68, 2), np.nan), "box": np.full((n, 4), np.nan),
            "det_score": np.full(n, np.nan), "det_source": np.array([""] * n, dtype=object),
            "sharpness": np.full(n, np.nan)}
        for g, arr in fs.grids.items():
            out[f"grid_{g}"] = np.zeros((n, *arr.shape[1:]), np.float16)
        for j, p in enumerate(paths):
            r = rows.get(p)
            if r is None:
                continue
            out["descriptor"][j] = fs.descriptors[r]
            out["landmarks5"][j], out["landmarks68"][j] = fs.landmarks5[r], fs.landmarks68[r]
            out["chip_landmarks68"][j], out["box"][j] = fs.chip_landmarks68[r], fs.boxes[r]
            out["det_score"][j], out["det_source"][j] = fs.det_scores[r], fs.det_sources[r]
            out["sharpness"][j] = fs.sharpness[r]
            for g in fs.grids:
                out[f"grid_{g}"][j] = fs.grids[g][r]
        return out


class RayExtract:
    """A batch extractor for `StoredGallery.add_files(extract=...)` and the evaluator, on Ray."""

    def __init__(self, fx: FeatureExtractor, address: str | None = None,
                 batch_size: int = 32, concurrency: int | None = None,
                 cache: bool | None = None) -> None:
        if batch_size < 1:
            raise InputError(f"--ray-batch-size must be >= 1, got {batch_size}")
        self.ray = start(address)
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.concurrency = concurrency or max(1, cpus)
        if self.concurrency < 1:
            raise InputError(f"--ray-concurrency must be >= 1, got {concurrency}")
        self.threads = max(1, cpus // self.concurrency)
        self.batch_size = batch_size
        self.fx = fx
        self.config = extractor_config(fx)
        # a local Ray shares this machine's feature cache; cluster workers compute afresh
        self.cache = (address is None) if cache is None else cache

    def _results(self, paths: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        ds = self.ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(paths)])
        ds = ds.map_batches(_ExtractActor, batch_size=self.batch_size,
                            compute=self.ray.data.ActorPoolStrategy(size=self.concurrency),
                            batch_format="numpy",
                            fn_constructor_kwargs={"config": self.config, "cache": self.cache,
                                                   "threads": self.threads},
                            num_cpus=self.threads)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")

    def _faces(self, res: dict[str, np.ndarray], j: int, path: str) -> FaceFeatures:
        desc = res["descriptor"][j]
        return FaceFeatures(
            embedding=l2_normalize(desc.astype(np.float32)), descriptor=desc,
            grids={g: res[f"grid_{g}"][j].astype(np.float32) for g in self.fx.grid_names},
            landmarks5=res["landmarks5"][j], landmarks68=res["landmarks68"][j],
            chip_landmarks68=res["chip_landmarks68"][j], box=res["box"][j],
            det_score=float(res["det_score"][j]), det_source=str(res["det_source"][j]),
            path=path, sharpness=float(res["sharpness"][j]) if "sharpness" in res
            else float("nan"))

    def stream(self, batches: Sequence[Sequence[Todo]]
               ) -> Iterator[tuple[list[Todo], list[FaceFeatures | None],
                                   list[tuple[str, str]]]]:
        """(todo rows, features or None, failures) in chunks as the cluster finishes them."""
        todo = [t for b in batches for t in b]
        for res in self._results([p for p, _, _ in todo]):
            rows = [todo[int(i)] for i in res["i"]]
            feats: list[FaceFeatures | None] = []
            failures: list[tuple[str, str]] = []
            for j, (p, _, _) in enumerate(rows):
                if res["ok"][j]:
                    feats.append(self._faces(res, j, p))
                else:
                    feats.append(None)
                    failures.append((p, str(res["error"][j])))
            yield rows, feats, failures

    def __call__(self, paths: Sequence[str]) -> tuple[list[FaceFeatures | None],
                                                      list[tuple[str, str]]]:
        got: dict[str, FaceFeatures | None] = {}
        failures: list[tuple[str, str]] = []
        for rows, feats, fails in self.stream([[(p, "", "") for p in paths]]):
            got.update({r[0]: f for r, f in zip(rows, feats, strict=True)})
            failures += fails
        return [got.get(p) for p in paths], failures

    def extract_paths(self, paths: Sequence[str]) -> FeatureSet:
        """Like `FeatureExtractor.extract_paths`, on Ray: features in input order, failures
        listed."""
        feats, failures = self([str(p) for p in paths])
        return FeatureSet.stack([f for f in feats if f is not None], failures,
                                self.fx.grid_names)


def describe(extract: RayExtract) -> str:
    return json.dumps({"engine": "ray", "concurrency": extract.concurrency,
                       "batch_size": extract.batch_size, "threads_per_actor": extract.threads})
