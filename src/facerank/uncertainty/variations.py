"""Variation labels we can make ourselves, for URL's decorrelation loss.

Each training sample is a (clean or edited) LFW chip; the edit names most labels:

    resolution  0 sharp, 1 down-scaled to 16-40 px and back (`lowres`)
    blur        0 sharp, 1 Gaussian blur (`blur`)
    jpeg        0 clean, 1 JPEG quality 5-30 (`jpeg`)
    occlusion   0 none, 1 70 % crop, 2 face mask, 3 sunglasses
    pose        yaw bin from the clean image's 68 chip landmarks: 0 left, 1 frontal, 2 right

A down-scaled chip is also blurry and a blurred chip has lost resolution, so those two
cross labels are "unknown" (-1, ignored by the loss) rather than 0.
"""

from __future__ import annotations

import numpy as np

from facerank.uncertainty.url import DEFAULT_VARIATIONS

UNKNOWN = -1
OCCLUSION_CLASS = {"crop": 1, "mask": 2, "sunglasses": 3}
#: yaw = (nose tip x - eye-corner midpoint x) / outer eye-corner distance, in chip pixels;
#: |yaw| <= YAW_FRONTAL is frontal.  On the 13,233 clean LFW chips (HOG, centre face) 0.06
#: gives 3,794 left / 5,793 frontal / 3,646 right (yaw percentiles 25/75: -0.073 / +0.068).
YAW_FRONTAL = 0.06


def yaw_proxy(chip_landmarks68: np.ndarray) -> np.ndarray:
    """(N, 68, 2) chip landmarks -> (N,) signed yaw proxy (NaN where landmarks are missing)."""
    lm = np.asarray(chip_landmarks68, np.float64)
    left, right, nose = lm[:, 36, 0], lm[:, 45, 0], lm[:, 30, 0]
    span = np.maximum(np.abs(right - left), 1e-6)
    return (nose - (left + right) / 2) / span


def pose_bins(chip_landmarks68: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N,) int: 0 left, 1 frontal, 2 right; -1 where landmarks are NaN."""
    yaw = yaw_proxy(chip_landmarks68)
    out = np.where(yaw < -YAW_FRONTAL, 0, np.where(yaw > YAW_FRONTAL, 2, 1))
    return np.where(np.isfinite(yaw), out, UNKNOWN).astype(np.int64)


def labels_for(kind: str, pose: np.ndarray) -> dict[str, np.ndarray]:
    """Variation labels {name: (N,) int64} of N samples of one edit `kind` ("clean", ...)."""
    n = len(pose)

    def full(v: int) -> np.ndarray:
        return np.full(n, v, np.int64)

    out = {"resolution": full(0), "blur": full(0), "jpeg": full(0), "occlusion": full(0),
           "pose": np.asarray(pose, np.int64)}
    if kind in ("lowres", "lowres24"):
        out["resolution"], out["blur"] = full(1), full(UNKNOWN)
    elif kind == "blur":
        out["blur"], out["resolution"] = full(1), full(UNKNOWN)
    elif kind == "jpeg":
        out["jpeg"] = full(1)
    elif kind in OCCLUSION_CLASS:
        out["occlusion"] = full(OCCLUSION_CLASS[kind])
    elif kind != "clean":
        raise ValueError(f"no variation labels for edit {kind!r}")
    assert set(out) == set(DEFAULT_VARIATIONS)
    return out
