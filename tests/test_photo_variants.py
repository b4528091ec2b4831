"""Harder photo variants: seeded, each edits the face region, combinations chain; SFace's
default chain has Stage 2 abstaining."""

from __future__ import annotations

import numpy as np
import pytest

from facerank.errors import InputError
from facerank.eval.photo_variants import PHOTO_VARIANTS, photo_variant_image
from tests.test_occlusion import MEAN_FACE


def _photo(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (250, 250, 3) noise photo with the mean face placed at its centre, 68 landmarks."""
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (250, 250, 3), dtype=np.uint8), MEAN_FACE + 50.0


@pytest.mark.parametrize("name", sorted(PHOTO_VARIANTS))
def test_variant_is_seeded_and_edits_the_face(name: str) -> None:
    img, lm = _photo()
    a = photo_variant_image(name, img, lm, 1, "x/1.jpg")
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, photo_variant_image(name, img, lm, 1, "x/1.jpg"))
    face = (slice(int(lm[:, 1].min()), int(lm[:, 1].max())),
            slice(int(lm[:, 0].min()), int(lm[:, 0].max())))
    changed = np.abs(a[face].astype(int) - img[face].astype(int)).max(axis=2) > 8
    assert changed.mean() > 0.1, f"{name} changed only {changed.mean():.3f} of the face box"
    others = [photo_variant_image(name, img, lm, s, "x/1.jpg") for s in (2, 3, 4)]
    if name != "grey":  # grey has no random draw
        assert any(not np.array_equal(a, o) for o in others)


def test_unknown_variant_and_bad_landmarks_are_refused() -> None:
    img, lm = _photo()
    with pytest.raises(InputError, match="unknown photo variant"):
        photo_variant_image("fog", img, lm, 0, "x")
    bad = lm.copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="68 finite landmarks"):
        photo_variant_image("hand", img, bad, 0, "x")


def test_default_stage2_abstains_on_sface_only() -> None:
    from facerank.rerank.base import default_stage2, make_stage2

    assert default_stage2("sface") == "none" and default_stage2("dlib") == "emd"
    assert make_stage2("auto", backbone="sface") is None
    assert make_stage2("auto").name == "emd"


def test_variant_queries_are_one_half_with_mates() -> None:
    from facerank.train.data import variant_queries
    from facerank.train.split import identity_fold

    labels = np.repeat(np.arange(40), 3).astype(str)
    labels = np.concatenate([labels, np.arange(100, 120).astype(str)])  # one-image people
    rows = variant_queries(labels, 30, seed=0)
    assert len(rows) == 30 and np.array_equal(rows, variant_queries(labels, 30, seed=0))
    assert not identity_fold(labels)[rows].any()
    assert all((labels == labels[r]).sum() >= 2 for r in rows)
