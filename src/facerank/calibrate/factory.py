"""What the CLI and web page share: build a calibrator from `--calibrate NAME` and decide
same/different at the threshold chosen on LFW for a stated false accept rate.

Thresholds (`defaults/thresholds.json`, written by `python -m benchmarks.calibrate
thresholds`) are for the bundled anchors / checkpoint only: they were chosen on every image
pair of LFW identity half B (the people the bundled anchors and IDA-L never saw) at FAR 1e-3.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from facerank.calibrate.base import Calibrator, make_calibrator
from facerank.calibrate.probability import SCALE, MatchProbability
from facerank.errors import InputError

__all__ = ["THRESHOLDS", "build", "thresholds", "verdict"]


THRESHOLDS = "thresholds.json"


def build(name: str, path: Path | None = None, model_id: str | None = None
          ) -> Calibrator | None:
    """A calibrator from CLI options (None for "none"), checked against the feature model."""
    if name == "none":
        if path is not None:
            raise InputError("--calibrate-with needs --calibrate asnorm, ida-r or ida-l")
        return None
    options: dict[str, object] = {}
    if path is not None and name != "ida-l":
        from facerank.calibrate.anchors import AnchorSet
        from facerank.calibrate.cohort import check_anchor_file

        options["anchors"] = check_anchor_file(AnchorSet.load(path), model_id)
    elif path is not None:
        options["checkpoint"] = path
    elif name in ("ida-r", "asnorm") and model_id is not None:
        from facerank.calibrate.anchors import AnchorSet
        from facerank.models.backbone import backbone_name

        options["anchors"] = AnchorSet.default(backbone_name(model_id))  # that backbone's
    if name == "ida-l" and model_id is not None:
        options["backbone"] = model_id
    cal = make_calibrator(name, **options)
    if cal is not None and path is None and name == "ida-r":
        # a gallery may use its own identities (AS-norm: no, it lost 17 TPIR@FPIR 1 % points
        # to cosine with them on LFW's open set, docs/results.md)
        cal.gallery_cohort = True  # type: ignore[attr-defined]
    if cal is not None and model_id is not None:
        cal.check_model(model_id)
    return cal


def thresholds() -> dict:
    """{method: {"threshold", "far", ...}} of the bundled calibrators ({} if none shipped)."""
    try:
        text = (resources.files("facerank.calibrate") / "defaults" / THRESHOLDS).read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text)


def verdict(name: str, score: float, custom: bool) -> tuple[str, float | None]:
    """("same person" / "different people" / reason, threshold) for a calibrated score."""
    if custom:
        return "no threshold for custom anchors/checkpoint", None
    t = thresholds().get(name)
    if t is None:
        return "no threshold shipped", None
    thr = float(t["threshold"])
    return ("same person" if score >= thr else "different people"), thr


def probability_model(name: str, backbone: str, path: Path | None = None
                      ) -> MatchProbability | None:
    """The match probability model for `--calibrate NAME` on `backbone` features: the file at
    `path` (refused if made for another calibrator or backbone), else the bundled one (None
    if none ships)."""
    if path is not None:
        return MatchProbability.load(path, calibrator=name, backbone=backbone)
    return MatchProbability.default(name, backbone)


def pair_score_name(stage_scores: dict) -> str:
    """Which Stage-1 score a pair's probability describes: "calibrated" if present, else
    "stage1" (the cosine); never a Stage-2 blend."""
    return "calibrated" if "calibrated" in stage_scores else "stage1"


def attach_probability(results: list, model: MatchProbability | None) -> list:
    """Search results with `probability` = P(same person) of each (probe, gallery face) pair,
    from its Stage-1 (calibrated) score, whatever order Stage 2 gave them."""
    if model is None or not results:
        return results
    from dataclasses import replace

    key = pair_score_name(results[0].stage_scores)
    probs = model(np.array([r.stage_scores[key] for r in results], dtype=np.float64))
    return [replace(r, probability=None if not np.isfinite(p) else float(p))
            for r, p in zip(results, probs, strict=True)]


def describe_probability(model: MatchProbability | None) -> dict | None:
    """JSON block naming the scale and where its model came from (None: no model)."""
    if model is None:
        return None
    thr = model.thresholds.get("1e-03", {})
    return {"scale": SCALE, "calibrator": model.calibrator, "backbone": model.backbone,
            "kind": model.kind, "prior": model.meta.get("prior", 0.5),
            "threshold_far_1e-3": thr.get("probability"),
            "fitted_on": model.meta.get("fit")}
