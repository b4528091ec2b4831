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

from facerank.calibrate.base import Calibrator, make_calibrator
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
    if path is not None:
        options["checkpoint" if name == "ida-l" else "anchors"] = path
    if name == "ida-l" and model_id is not None:
        options["backbone"] = model_id
    cal = make_calibrator(name, **options)
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
