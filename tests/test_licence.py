"""The default pipeline never loads dlib's 68-point model (licensed for non-commercial use)."""

from __future__ import annotations

import dlib
import numpy as np
import pytest

from facerank._util.paths import DLIB_SHAPE68
from facerank.face.features import make_extractor


@pytest.fixture
def loaded_models(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file given to dlib.shape_predictor while the test runs."""
    seen: list[str] = []
    real = dlib.shape_predictor

    def spy(path: str) -> object:
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(dlib, "shape_predictor", spy)
    return seen


@pytest.mark.parametrize("backbone", ["dlib", "sface"])
def test_default_extractor_loads_no_68_point_model(loaded_models: list[str], backbone: str,
                                                    lfw_images) -> None:  # noqa: ANN001
    """dlib's chip needs its 5-point model (loaded on first use); SFace aligns on YuNet's
    points and loads no dlib shape model at all."""
    fx = make_extractor(backbone=backbone, cache=False)
    fx.extract_paths(lfw_images[:1], progress=False)
    assert bool(loaded_models) is (backbone == "dlib"), loaded_models
    assert not any(p.endswith(DLIB_SHAPE68) for p in loaded_models), loaded_models
    assert fx.detector._sp68 is None


def test_lmk_request_loads_68_point_model(loaded_models: list[str]) -> None:
    fx = make_extractor(landmarks68=True, cache=False)
    assert any(p.endswith(DLIB_SHAPE68) for p in loaded_models)
    assert fx.detector._sp68 is not None


def test_default_path_extracts_without_68_points_and_lmk_says_so(loaded_models: list[str],
                                                                  lfw_images) -> None:  # noqa: ANN001
    """Default extraction works on 5 points only; a Stage-2 lmk request on such features is a
    one-line InputError, not silent garbage."""
    from facerank.errors import InputError
    from facerank.face.features import FeatureSet
    from facerank.rerank.emd.reranker import Stage2EMD

    fx = make_extractor(cache=False)
    fs = FeatureSet.stack([fx.extract_file(p) for p in lfw_images[:2]])
    assert np.isfinite(fs.descriptors).all()
    assert np.isnan(fs.chip_landmarks68).all()
    assert not any(p.endswith(DLIB_SHAPE68) for p in loaded_models)
    rr = Stage2EMD(grid="l2", weighting="lmk", alpha=0.7, gate=None,
                   fc_weight=fx.backbone.fc_weight.detach())
    with pytest.raises(InputError, match="68-point"):
        rr.topk_scores(fs, fs, np.array([[0, 1], [1, 0]]))
