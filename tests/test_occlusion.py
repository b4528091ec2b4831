"""Occlusion generators: seeded, batch-independent, and covering the right face regions."""

from __future__ import annotations

import numpy as np
import pytest

from facerank.errors import InputError
from facerank.eval.occlusion import occlude


def _face(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic chips with a plausible 68-landmark layout (a mean dlib face on the chip)."""
    rng = np.random.default_rng(0)
    chips = rng.integers(60, 200, (n, 150, 150, 3), dtype=np.uint8)
    t = np.linspace(0, np.pi, 17)
    jaw = np.stack([75 - 50 * np.cos(t), 60 + 70 * np.sin(t)], 1)  # 0..16, chin at 8 (y=130)
    brows = np.stack([np.linspace(35, 115, 10), np.full(10, 45)], 1)
    nose = np.stack([np.full(4, 75), np.linspace(55, 85, 4)], 1)
    nose_bottom = np.stack([np.linspace(65, 85, 5), np.full(5, 90)], 1)
    eye_l = np.stack([np.linspace(45, 65, 6), np.full(6, 60)], 1)
    eye_r = np.stack([np.linspace(85, 105, 6), np.full(6, 60)], 1)
    mouth = np.stack([np.linspace(60, 90, 20), np.full(20, 108)], 1)
    lm = np.concatenate([jaw, brows, nose, nose_bottom, eye_l, eye_r, mouth])
    assert lm.shape == (68, 2)
    return chips, np.repeat(lm[None], n, 0)


@pytest.mark.parametrize("kind", ["crop", "mask", "sunglasses"])
def test_deterministic_and_batch_independent(kind: str) -> None:
    chips, lm = _face(3)
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    a = occlude(kind, chips, lm, seed=0, ids=ids)
    np.testing.assert_array_equal(a, occlude(kind, chips, lm, seed=0, ids=ids))
    assert not np.array_equal(a, occlude(kind, chips, lm, seed=1, ids=ids))
    alone = occlude(kind, chips[1:2], lm[1:2], seed=0, ids=ids[1:2])
    np.testing.assert_array_equal(alone[0], a[1])
    assert a.dtype == np.uint8 and a.shape == chips.shape
    assert not np.shares_memory(a, chips)


def test_regions() -> None:
    chips, lm = _face(8)
    ids = [str(i) for i in range(8)]
    masked = occlude("mask", chips, lm, 0, ids) != chips
    glasses = occlude("sunglasses", chips, lm, 0, ids) != chips
    lower = masked[:, 95:125, 40:110].any(-1).mean()  # mouth and chin
    upper = masked[:, 0:45, :].any(-1).mean()  # forehead
    assert lower > 0.9 and upper < 0.05, (lower, upper)
    eyes = glasses[:, 56:64, 48:62].any(-1).mean()
    mouth = glasses[:, 100:115, 60:90].any(-1).mean()
    assert eyes > 0.9 and mouth == 0, (eyes, mouth)


def test_bad_input() -> None:
    chips, lm = _face(2)
    with pytest.raises(InputError, match="unknown occlusion 'blur'.*crop, mask, sunglasses"):
        occlude("blur", chips, lm, 0)
    lm = lm.copy()
    lm[1, 5] = np.nan
    with pytest.raises(InputError, match="chip 1 has no 68 landmarks"):
        occlude("mask", chips, lm, 0)
    assert occlude("crop", chips, None, 0).shape == chips.shape
