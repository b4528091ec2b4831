"""Patch weightings: non-negative, summing to 1, and doing what the paper says."""

from __future__ import annotations

import pytest
import torch

from facerank.rerank.emd import weights as W


@pytest.fixture
def patches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.relu(torch.randn(6, 64, 128, generator=g))  # post-ReLU maps, like the backbone's
    c = torch.relu(torch.randn(6, 64, 128, generator=g))
    return q, c


def _check(w: torch.Tensor, n: int) -> None:
    assert w.shape[1] == n
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(w.shape[0]))


@pytest.mark.parametrize("name", ["uniform", "apc", "sc", "cc", "lmk"])
def test_non_negative_and_normalised(name: str, patches: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, c = patches
    if name == "uniform":
        wq, wc = W.uniform(q, c)
    elif name == "apc":
        wq, wc = W.apc(q, c)
    elif name == "sc":
        qn = torch.nn.functional.normalize(q, dim=2)
        cn = torch.nn.functional.normalize(c, dim=2)
        wq, wc = W.sc(qn @ cn.transpose(1, 2))
    elif name == "cc":
        fc = torch.randn(256, 128)
        wq, wc = W.cc(q, c, torch.randn(6, 128), torch.randn(6, 128), fc)
    else:
        lm = torch.rand(6, 68, 2) * 150
        wq, wc = W.landmark_density(lm, (8, 8)), W.landmark_density(lm, (8, 8))
    _check(wq, 64)
    _check(wc, 64)


def test_apc_ignores_an_occluded_patch(patches: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, c = patches
    q = q.clone()
    q[:, 10] = 0  # a blank (occluded) patch correlates with nothing
    wq, _ = W.apc(q, c)
    assert (wq[:, 10] == 0).all()


def test_all_zero_weights_fall_back_to_uniform() -> None:
    w = W.normalize_weights(torch.zeros(2, 16))
    torch.testing.assert_close(w, torch.full((2, 16), 1 / 16))


def test_landmark_density_counts_cells() -> None:
    lm = torch.full((1, 68, 2), 10.0)  # every landmark in the top-left cell of a 4x4 grid
    lm[0, :34] = torch.tensor([120.0, 120.0])  # half in the bottom-right cell
    w = W.landmark_density(lm, (4, 4), floor=0.0)
    assert w[0, 0] == pytest.approx(0.5) and w[0, 15] == pytest.approx(0.5)
    off = torch.full((1, 68, 2), -5.0)  # landmarks off the chip are not counted
    torch.testing.assert_close(W.landmark_density(off, (4, 4)), torch.full((1, 16), 1 / 16))
    nan = torch.full((1, 68, 2), float("nan"))
    torch.testing.assert_close(W.landmark_density(nan, (4, 4)), torch.full((1, 16), 1 / 16))
