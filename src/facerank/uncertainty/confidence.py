"""URL confidence at the point of use: load a head, score faces from their cached features.

Nothing here changes the feature cache: a face's confidence is computed from the descriptor
(and the grid the head reads) that facerank already stores, when a command or the web page
needs it.  The bundled head is the one trained on identity fold True for the default dlib
backbone (`models/url-dlib_resnet_v1.pt`); other backbones get no confidence until one is
trained for them (`facerank train url`), and callers show "-" instead.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerank._util.checkpoint import load_checkpoint, load_into, save_checkpoint
from facerank.errors import FacerankError, InputError, ModelFileError
from facerank.uncertainty.url import KIND, URLConfig, URLHead, URLOutput, run_head

if TYPE_CHECKING:
    from facerank.face.features import FaceFeatures, FeatureSet

BUNDLED_DIR = Path(__file__).parent / "models"


def bundled_path(backbone: str) -> Path:
    """Where the bundled head for `backbone` (an extractor `model_id`) lives."""
    return BUNDLED_DIR / f"url-{backbone.split('@')[0]}.pt"


def save_url_head(path: str | Path, head: URLHead, meta: dict[str, Any]) -> Path:
    """NAME.pt + NAME.json; `meta` must name the backbone (extractor.model_id)."""
    return save_checkpoint(path, head, {**meta, "kind": KIND, "config": head.config.to_dict()})


def load_url_head(path: str | Path, backbone: str | None = None
                  ) -> tuple[URLHead, dict[str, Any]]:
    """(head in eval mode, checkpoint JSON); ModelFileError (one line) on any mismatch."""
    state, meta = load_checkpoint(path, KIND, backbone)
    try:
        config = URLConfig.from_dict(meta["config"])
        head = URLHead(config)
    except (KeyError, TypeError, ValueError, InputError) as e:
        raise ModelFileError(f"{Path(path).with_suffix('.json')}: URL config unusable ({e}); "
                             "retrain with `facerank train url`") from None
    load_into(head, state, path)
    head.eval()
    return head, meta


@lru_cache(maxsize=4)
def _bundled(backbone: str) -> tuple[URLHead, dict[str, Any]] | None:
    path = bundled_path(backbone)
    if not path.is_file():
        return None
    return load_url_head(path, backbone)


def default_head(backbone: str) -> tuple[URLHead, dict[str, Any]] | None:
    """The bundled head for this backbone, or None when there is none or the environment
    sets FACERANK_URL=off (the patent note in the README says why one might)."""
    if os.environ.get("FACERANK_URL", "").lower() in ("off", "0", "no", "false"):
        return None
    return _bundled(backbone)


def _grid(head: URLHead, fs: FeatureSet) -> np.ndarray | None:
    name = head.config.grid
    if name is None:
        return None
    if name not in fs.grids:
        raise InputError(f"the URL head reads the {name!r} grid, which these features lack; "
                         "load them with grids")
    return fs.grids[name]


def confidences(fs: FeatureSet, head: URLHead) -> URLOutput:
    """Sub-embeddings, K confidences and one confidence per face of a FeatureSet."""
    return run_head(head, fs.descriptors, _grid(head, fs))


def relative(conf: np.ndarray | float, meta: dict[str, Any]) -> np.ndarray:
    """Confidence / the median clean training face's (1.0 = a typical LFW face)."""
    ref = float(meta.get("reference_confidence") or 1.0)
    return np.asarray(conf, np.float64) / ref


def attach(features: FeatureSet, backbone: str) -> list[dict[str, Any] | None]:
    """Per face: {"confidence": relative one number, "confidences": relative K values} or None
    for every face when this backbone has no URL head (or the features lack its grid)."""
    found = default_head(backbone)
    if found is None or len(features) == 0:
        return [None] * len(features)
    head, meta = found
    try:
        out = confidences(features, head)
    except FacerankError:
        return [None] * len(features)
    face, per = relative(out.face, meta), relative(out.conf, meta)
    return [{"confidence": round(float(face[i]), 4),
             "confidences": [round(float(v), 4) for v in per[i]]} for i in range(len(face))]


def refuse_below(floor: float, backbone: str):  # noqa: ANN201 - a StoredGallery.add_files hook
    """`StoredGallery.add_files(refuse=...)` hook: a reason for each face whose relative URL
    confidence is below `floor` (InputError when this backbone has no URL head)."""
    from facerank.face.features import FeatureSet

    if not np.isfinite(floor) or floor < 0:
        raise InputError(f"--min-confidence must be a number >= 0, got {floor}")
    if default_head(backbone) is None:
        raise InputError(f"--min-confidence: no URL head for backbone {backbone!r}; train one "
                         "with `facerank train url` or drop the option")

    def reasons(faces: list[FaceFeatures]) -> list[str | None]:
        info = attach(FeatureSet.stack(faces), backbone)
        return [None if i is not None and i["confidence"] >= floor else
                f"URL confidence {i['confidence']:.2f} below --min-confidence {floor:g}; "
                "not enrolled (use a sharper, larger, unoccluded photo)" if i is not None else
                "URL confidence unavailable for this face; not enrolled" for i in info]
    return reasons


def attach_results(gallery: Any, probe: FeatureSet, results: list[Any]
                   ) -> tuple[dict[str, Any] | None, list[Any]]:
    """(probe's confidence info, results with `confidence`/`confidences` set) for a search."""
    from dataclasses import replace

    backbone = gallery.extractor.model_id
    found = default_head(backbone)
    if found is None:
        return None, results
    needs_grid = found[0].config.grid is not None
    rows = [r.row for r in results]
    infos = attach(gallery.features(grids=needs_grid).take(rows), backbone) if rows else []
    probe_info = attach(probe, backbone)[0]
    return probe_info, [replace(r, confidence=i["confidence"], confidences=i["confidences"])
                        if i is not None else r for r, i in zip(results, infos, strict=True)]
