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
from typing import TYPE_CHECKING

import numpy as np

from facerank.calibrate.base import Calibrator, make_calibrator
from facerank.calibrate.probability import CANNOT_TELL, SCALE, MatchProbability
from facerank.errors import InputError

if TYPE_CHECKING:
    from facerank.face.features import FeatureSet

__all__ = ["AUTO_CALIBRATOR", "THRESHOLDS", "AutoProbability", "build", "thresholds",
           "verdict"]


THRESHOLDS = "thresholds.json"

AUTO_CALIBRATOR = {"dlib": "ida-r", "sface": "none"}
"""What `--calibrate auto` does per backbone: IDA-R with the gallery's own cohort on a gallery of
at least `cohort.AUTO_MIN_IDENTITIES` identities, plain cosine otherwise (and always for SFace,
for a pair outside a gallery, and for a gallery too small for its own cohort: the bundled LFW
anchors lost 5-16 TPIR@FPIR 1 % points to cosine on galleries from other sources). Chosen by
the open-set measurements of `python -m benchmarks.probability --openset-only` and
`--photo-openset` (docs/results.md): on dlib the own cohort gained on chip-level and
photo-level probes with all ~420 people of an identity half enrolled (photo sets: at most
2 probes lost), but lost up to 6.1 points on photo probes with 200 enrolled; on SFace it lost
on chip-level probes (up to 5.7 points) while gaining on most photo sets."""


def auto_calibrator(model_id: str | None) -> str:
    """The calibrator `auto` stands for on a large enough gallery of `model_id` features."""
    if model_id is None:
        return "none"
    from facerank.models.backbone import backbone_name

    return AUTO_CALIBRATOR.get(backbone_name(model_id), "none")


def build(name: str, path: Path | None = None, model_id: str | None = None
          ) -> Calibrator | None:
    """A calibrator from CLI options (None for "none"), checked against the feature model.

    "auto": `AUTO_CALIBRATOR` of the backbone, marked `auto` so that a gallery too small for
    its own cohort abstains (cosine) instead of using the bundled anchors; None when the
    backbone's choice is cosine. A pair outside a gallery uses `resolve_pair` (cosine)."""
    if name == "auto":
        if path is not None:
            raise InputError("--calibrate-with needs --calibrate asnorm, ida-r or ida-l, not "
                             "auto")
        choice = auto_calibrator(model_id)
        if choice == "none":
            return None
        cal = build(choice, None, model_id)
        if cal is not None:
            cal.auto = True  # type: ignore[attr-defined]
        return cal
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


class AutoProbability:
    """`--calibrate auto`'s models: that of the calibrated score where a search calibrated,
    that of the cosine where it abstained (`pick` by the results' score name)."""

    def __init__(self, backbone: str) -> None:
        choice = AUTO_CALIBRATOR.get(backbone, "none")
        self.by_key = {"stage1": MatchProbability.default("none", backbone),
                       "calibrated": MatchProbability.default(choice, backbone)}

    def pick(self, key: str) -> MatchProbability | None:
        return self.by_key.get(key)


def probability_model(name: str, backbone: str, path: Path | None = None
                      ) -> MatchProbability | AutoProbability | None:
    """The match probability model for `--calibrate NAME` on `backbone` features: the file at
    `path` (refused if made for another calibrator or backbone), else the bundled one (None
    if none ships). "auto": an `AutoProbability` (a file is refused: name the calibrator)."""
    if name == "auto":
        if path is not None:
            raise InputError("--probability-with needs the --calibrate its model was fitted "
                             "for (none, asnorm, ida-r or ida-l), not auto")
        return AutoProbability(backbone)
    if path is not None:
        return MatchProbability.load(path, calibrator=name, backbone=backbone)
    return MatchProbability.default(name, backbone)


def resolve_pair(name: str, model_id: str | None) -> str:
    """The calibrator a single pair (compare, outside a gallery) uses: "auto" -> "none" (no
    gallery cohort to use; the bundled anchors are not trusted off LFW), others unchanged."""
    return "none" if name == "auto" else name


def _pick(model: MatchProbability | AutoProbability | None, key: str
          ) -> MatchProbability | None:
    return model.pick(key) if isinstance(model, AutoProbability) else model


def pair_score_name(stage_scores: dict) -> str:
    """Which Stage-1 score a pair's probability describes: "calibrated" if present, else
    "stage1" (the cosine); never a Stage-2 blend."""
    return "calibrated" if "calibrated" in stage_scores else "stage1"


def attach_probability(results: list, model: MatchProbability | AutoProbability | None,
                       probe: FeatureSet | None = None, gallery: FeatureSet | None = None
                       ) -> list:
    """Search results with `probability` = P(same person) of each (probe, gallery face) pair,
    from its Stage-1 (calibrated) score, whatever order Stage 2 gave them.

    probe (its first face) and gallery (rows as `SearchResult.row`): the stored raw
    descriptors and chip sharpness of both faces, for a quality-aware model; without them
    (or when they do not fit the model, or a sharpness the model reads is NaN, as in a
    gallery stored before it was kept) the model's score-only form answers."""
    if model is None or not results:
        return results
    from dataclasses import replace

    key = pair_score_name(results[0].stage_scores)
    model = _pick(model, key)
    if model is None:
        return results
    scores = np.array([r.stage_scores[key] for r in results], dtype=np.float64)
    qa = qb = None
    if model.quality is not None and probe is not None and gallery is not None:
        rows = np.array([r.row for r in results])
        if rows.min() >= 0 and rows.max() < len(gallery.descriptors):
            qb = model.face_quality(gallery.descriptors[rows], gallery.sharpness[rows])
            qp = model.face_quality(probe.descriptors[:1], probe.sharpness[:1])
            qa = None if qp is None or qb is None else np.repeat(qp, len(rows), axis=0)
    probs = model(scores, qa, qb)
    return [replace(r, probability=None if not np.isfinite(p) else float(p))
            for r, p in zip(results, probs, strict=True)]


def top1_verdict(results: list, model: MatchProbability | AutoProbability | None,
                 probe: FeatureSet, gallery: FeatureSet, far: float = 1e-3) -> str | None:
    """The verdict on a search's top-1 pair (its Stage-1 or calibrated score and both faces'
    quality), in the strict form: the top-1 is the best of many impostor chances, so quality
    may only make it stricter than the clean threshold (`MatchProbability.verdict`). None
    without results or a model with thresholds."""
    if not results:
        return None
    key = pair_score_name(results[0].stage_scores)
    model = _pick(model, key)
    if model is None:
        return None
    top = results[0]
    return model.verdict(
        float(top.stage_scores[key]), far,
        qa=model.face_quality(probe.descriptors[:1], probe.sharpness[:1]),
        qb=model.face_quality(gallery.descriptors[[top.row]], gallery.sharpness[[top.row]]),
        strict=True)


def describe_probability(model: MatchProbability | AutoProbability | None,
                         results: list | None = None) -> dict | None:
    """JSON block naming the scale and where its model came from (None: no model); for
    "auto", the model of the score the `results` carry."""
    model = _pick(model, pair_score_name(results[0].stage_scores) if results else "stage1")
    if model is None:
        return None
    thr = model.thresholds.get("1e-03", {})
    return {"scale": SCALE, "calibrator": model.calibrator, "backbone": model.backbone,
            "kind": model.kind, "prior": model.meta.get("prior", 0.5),
            "threshold_far_1e-3": thr.get("probability"),
            "threshold_far_1e-3_with_quality": thr.get("probability_quality"),
            "verdict_with_quality": None if model.quality is None else (
                "score threshold" if model.quality.get("verdict") == "score" else
                "quality-normalised score" if "z" in thr else "score and probability"),
            "verdict_abstains": None if model.quality is None else (
                None if "abstain" not in model.quality else
                {"below": model.quality["abstain"]["below"],
                 "of": f"the worse face's {model.quality['abstain']['feature']} (standardised)",
                 "says": CANNOT_TELL}),
            "fitted_on": model.meta.get("fit"),
            "quality": None if model.quality is None else model.quality["features"]}
