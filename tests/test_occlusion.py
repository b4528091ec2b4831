"""Occlusion generators: seeded, batch-independent, and covering the right face regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerank.errors import InputError
from facerank.eval.occlusion import (
    OCCLUSIONS,
    crop_resize,
    draw_mask,
    draw_sunglasses,
    occlude,
    occlusion_rng,
)

# A mean dlib face on the 150x150 chip (68 points, iBUG order), rounded from real LFW chips.
MEAN_FACE = np.array([
    [14, 15, 16, 19, 24, 33, 45, 58, 74, 91, 106, 119, 130, 137, 140, 141, 142, 25, 32, 42, 53,
     63, 82, 93, 105, 116, 124, 73, 72, 72, 71, 60, 66, 72, 79, 85, 37, 43, 51, 58, 50, 43, 90,
     97, 104, 111, 105, 97, 50, 58, 66, 73, 79, 89, 99, 90, 80, 73, 66, 58, 54, 66, 73, 80, 95,
     80, 73, 66],
    [51, 67, 83, 98, 114, 127, 138, 147, 149, 147, 139, 128, 115, 99, 83, 66, 49, 36, 29, 27, 28,
     32, 31, 27, 25, 28, 35, 44, 54, 64, 74, 82, 84, 86, 84, 82, 47, 44, 43, 47, 49, 49, 47, 43,
     43, 46, 49, 49, 105, 99, 96, 98, 97, 99, 104, 113, 116, 117, 116, 113, 105, 102, 103, 102,
     105, 108, 109, 108],
], dtype=np.float64).T  # (68, 2) xy
KINDS = ("crop", "mask", "sunglasses")


def _faces(n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n noise chips (n, 150, 150, 3) with jittered mean-face landmarks (n, 68, 2)."""
    rng = np.random.default_rng(seed)
    chips = rng.integers(60, 200, (n, 150, 150, 3), dtype=np.uint8)
    shift = rng.uniform(-4, 4, (n, 1, 2))  # the whole face moves a little
    lm = MEAN_FACE[None] + shift + rng.normal(0, 0.7, (n, 68, 2))
    return chips, lm


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels where any channel differs."""
    return (a != b).any(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_batch_independent(kind: str) -> None:
    chips, lm = _faces(4)
    keep_c, keep_l = chips.copy(), lm.copy()
    ids = ["a/a_0001.jpg", "b/b_0001.jpg", "c/c_0001.jpg", "d/d_0001.jpg"]
    a = occlude(kind, chips, lm, seed=0, ids=ids)
    assert a.dtype == np.uint8 and a.shape == chips.shape
    assert not np.shares_memory(a, chips)
    np.testing.assert_array_equal(chips, keep_c)  # inputs untouched
    np.testing.assert_array_equal(lm, keep_l)
    np.testing.assert_array_equal(a, occlude(kind, chips, lm, seed=0, ids=ids))
    b = occlude(kind, chips, lm, seed=1, ids=ids)
    assert all(not np.array_equal(a[i], b[i]) for i in range(len(ids)))
    # image 2 alone, and in a reordered batch with other images, gets the same occlusion
    alone = occlude(kind, chips[2:3], lm[2:3], seed=0, ids=ids[2:3])
    np.testing.assert_array_equal(alone[0], a[2])
    order = [3, 2, 0]
    mixed = occlude(kind, chips[order], lm[order], seed=0, ids=[ids[i] for i in order])
    np.testing.assert_array_equal(mixed, a[order])
    # the generator called directly with the derived stream matches the batch API
    direct = OCCLUSIONS[kind](chips[1], lm[1], occlusion_rng(0, kind, ids[1]))
    np.testing.assert_array_equal(direct, a[1])


def test_ids_default_and_stable_hash() -> None:
    chips, lm = _faces(2)
    np.testing.assert_array_equal(occlude("mask", chips, lm, 5),
                                  occlude("mask", chips, lm, 5, ids=[0, 1]))
    # fixed bytes: SHA-256 based, so independent of PYTHONHASHSEED and the platform
    assert occlusion_rng(0, "crop", "x").integers(0, 2**31) == \
        occlusion_rng(0, "crop", "x").integers(0, 2**31)
    assert occlusion_rng(0, "crop", "x").integers(0, 2**31) != \
        occlusion_rng(0, "mask", "x").integers(0, 2**31)


def test_crop_resize() -> None:
    chips, _ = _faces(1)
    ramp = np.broadcast_to(np.arange(150, dtype=np.uint8)[None, :, None], (150, 150, 3)).copy()
    seen = set()
    for s in range(20):
        out = crop_resize(ramp, np.random.default_rng(s))
        assert out.shape == (150, 150, 3) and out.dtype == np.uint8
        # a 105-pixel window stretched to 150: the ramp spans 104 grey levels, starting at x0
        x0 = int(out[0, 0, 0])
        assert 0 <= x0 <= 45 and abs(int(out[0, -1, 0]) - (x0 + 104)) <= 1
        seen.add(x0)
    assert len(seen) > 10  # the position varies
    assert occlude("crop", chips, None, 0).shape == chips.shape  # no landmarks needed
    with pytest.raises(InputError, match="crop fraction"):
        crop_resize(ramp, np.random.default_rng(0), frac=1.5)


def test_mask_covers_the_lower_face_only() -> None:
    chips, lm = _faces(16)
    changed = _changed(occlude("mask", chips, lm, 0), chips)  # (16, 150, 150)
    for i in range(len(chips)):
        brow_y = int(lm[i, 17:27, 1].min())
        eye_y = int(lm[i, 36:48, 1].max())
        nose_y = int(np.ceil(lm[i, 29, 1]))
        assert changed[i, :brow_y].mean() == 0  # forehead untouched
        assert changed[i, :eye_y].mean() < 0.02  # straps may reach up to the eyes, barely
        lower = changed[i, nose_y:].mean()  # from the nose middle down
        assert 0.4 < lower < 0.95, lower
        assert 0.15 < changed[i].mean() < 0.6, changed[i].mean()
        for p in (30, 33, 48, 51, 54, 57, 62, 66, 8):  # nose tip/base, mouth, chin
            x, y = np.clip(np.round(lm[i, p]).astype(int), 0, 149)
            assert changed[i, y, x], (i, p)


def test_sunglasses_cover_the_eyes_not_the_mouth() -> None:
    chips, lm = _faces(16)
    changed = _changed(occlude("sunglasses", chips, lm, 0), chips)
    for i in range(len(chips)):
        for p in range(36, 48):  # every eye landmark is under a lens
            x, y = np.round(lm[i, p]).astype(int)
            assert changed[i, y - 2 : y + 3, x - 2 : x + 3].all(), (i, p)
        m = lm[i, 48:68]
        y0, y1 = int(m[:, 1].min()) - 3, int(m[:, 1].max()) + 4
        x0, x1 = int(m[:, 0].min()) - 3, int(m[:, 0].max()) + 4
        assert not changed[i, y0:y1, x0:x1].any()  # mouth untouched
        assert not changed[i, int(lm[i, 30, 1]):].any()  # nothing below the nose tip
        assert 0.08 < changed[i].mean() < 0.35, changed[i].mean()


def test_variety() -> None:
    """Different images get different colours/shapes (not one stamp)."""
    chips = np.full((12, 150, 150, 3), 128, np.uint8)
    lm = np.repeat(MEAN_FACE[None], 12, 0)
    for kind, (y, x) in (("mask", (110, 75)), ("sunglasses", (46, 47))):
        out = occlude(kind, chips, lm, 0, ids=[f"p{i}" for i in range(12)])
        colours = {tuple(out[i, y, x]) for i in range(12)}
        assert len(colours) >= 4, (kind, colours)
        areas = {int(_changed(out[i : i + 1], chips[:1]).sum()) for i in range(12)}
        assert len(areas) >= 6, (kind, areas)


def test_bad_input() -> None:
    chips, lm = _faces(2)
    with pytest.raises(InputError, match="unknown occlusion 'smudge'.*crop, mask, sunglasses"):
        occlude("smudge", chips, lm, 0)
    bad = lm.copy()
    bad[1, 5] = np.nan
    for kind in ("mask", "sunglasses"):
        with pytest.raises(InputError, match=r"chip 1 \(id 'y'\) has NaN landmarks"):
            occlude(kind, chips, bad, 0, ids=["x", "y"])
        with pytest.raises(InputError, match="needs"):
            occlude(kind, chips, None, 0)
    occlude("crop", chips, bad, 0)  # the crop ignores landmarks
    with pytest.raises(InputError, match="landmark 5 is NaN"):
        draw_mask(chips[1], bad[1], np.random.default_rng(0))
    with pytest.raises(InputError, match=r"shape \(68, 2\)"):
        draw_sunglasses(chips[0], lm[0, :5], np.random.default_rng(0))
    with pytest.raises(InputError, match=r"\(2, 68, 2\)"):
        occlude("mask", chips, lm[:, :10], 0)
    with pytest.raises(InputError, match="3 ids for 2 chips"):
        occlude("mask", chips, lm, 0, ids=["a", "b", "c"])
    with pytest.raises(InputError, match="uint8"):
        occlude("crop", chips.astype(np.float32), None, 0)


@pytest.fixture(scope="module")
def real_chips(lfw_images: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Four real LFW chips of different people with their 68 chip landmarks."""
    try:
        from facerank.face.features import FeatureExtractor
        from facerank.face.imageio import load_image

        fx = FeatureExtractor(cache=False)
    except Exception as e:  # noqa: BLE001 - any missing piece means: no real-data test here
        pytest.skip(f"FeatureExtractor unavailable: {e}")
    paths = [lfw_images[i] for i in (0, 3000, 6000, 9000)]
    aligned = [fx.align(load_image(p), str(p)) for p in paths]
    return (np.stack([a.chip for a in aligned]), np.stack([a.chip_landmarks68 for a in aligned]),
            [p.name for p in paths])


def test_real_chips(real_chips: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    chips, lm, ids = real_chips
    mask = _changed(occlude("mask", chips, lm, 0, ids), chips)
    glasses = _changed(occlude("sunglasses", chips, lm, 0, ids), chips)
    crop = occlude("crop", chips, lm, 0, ids)
    assert crop.shape == chips.shape and not np.array_equal(crop, chips)
    for i in range(len(chips)):
        brow_y = max(0, int(lm[i, 17:27, 1].min()))
        assert mask[i, :brow_y].mean() < 0.005
        assert 0.15 < mask[i].mean() < 0.65, mask[i].mean()
        mouth = np.clip(np.round(lm[i, 48:68]).astype(int), 0, 149)
        eyes = np.clip(np.round(lm[i, 36:48]).astype(int), 0, 149)
        assert mask[i, mouth[:, 1], mouth[:, 0]].all()
        assert glasses[i, eyes[:, 1], eyes[:, 0]].all()
        assert not glasses[i, mouth[:, 1], mouth[:, 0]].any()
