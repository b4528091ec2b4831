"""Stage-2 EMD core: batched Sinkhorn against POT, exact EMD, shapes and edge cases."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

import facerank.rerank.emd.solver as emd
import facerank.rerank.emd.weights as W
from facerank.errors import InputError
from facerank.rerank.emd.solver import (
    cost_matrix,
    emd_rerank_scores,
    emd_similarity,
    emd_similarity_exact,
    emd_similarity_from_cosine,
    emd_similarity_from_cost,
    grid_to_patches,
    patch_cosine,
    pool_grid,
    sinkhorn,
)

CONVERGED = dict(max_iter=3000, tol=1e-7)  # enough for eps = 0.05 on these sizes


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _structured(b: int, c: int = 128, side: int = 8, noise: float = 0.5,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU feature grids (b, c, side, side) and a shifted, noisy copy (like two faces)."""
    g = _gen(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(b, c, side, side, generator=g), 3, 1, 1)
    q = (3 * base).relu()
    cand = (3 * base.roll(1, 3) + noise * torch.randn(b, c, side, side, generator=g)).relu()
    return q, cand


def _pot_plans(cost: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None,
               eps: float) -> np.ndarray:
    """Converged float64 `ot.sinkhorn(..., method='sinkhorn_log')` plan of every pair."""
    n_pairs, n, m = cost.shape
    a = torch.ones(n_pairs, n) if a is None else a
    b = torch.ones(n_pairs, m) if b is None else b
    a, b = a.double(), b.double()  # normalised in float64: exactly balanced for POT
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return np.stack([
        ot.sinkhorn(a[i].numpy(), b[i].numpy(), cost[i].double().numpy(), reg=eps,
                    method="sinkhorn_log", numItermax=10000, stopThr=1e-10)
        for i in range(n_pairs)])


def _score(plans: np.ndarray | torch.Tensor, cost: torch.Tensor) -> np.ndarray:
    plans = plans.double().numpy() if isinstance(plans, torch.Tensor) else plans
    return (plans * (1.0 - cost.double().numpy())).sum(axis=(1, 2))


# --- agreement with POT ----------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_sinkhorn_matches_pot_on_random_pairs(eps: float) -> None:
    g = _gen(1)
    q, c = torch.randn(8, 12, 32, generator=g), torch.randn(8, 9, 32, generator=g)  # N != M
    cost = cost_matrix(q, c)
    res = sinkhorn(cost, None, None, eps=eps, **CONVERGED)
    ref = _pot_plans(cost, None, None, eps)
    assert res.transport.shape == (8, 12, 9)
    assert np.abs(res.transport.double().numpy() - ref).max() < 1e-5
    assert np.abs(_score(res.transport, cost) - _score(ref, cost)).max() < 1e-5
    assert 0 < res.n_iter < CONVERGED["max_iter"]  # stopped on the tolerance


def test_emd_similarity_matches_pot_on_structured_grids() -> None:
    qg, cg = _structured(6)
    q, c = grid_to_patches(qg), grid_to_patches(cg)  # (6, 64, 128)
    sims, flow = emd_similarity(q, c, eps=0.05, return_flow=True, **CONVERGED)
    cost = cost_matrix(q, c)
    ref = _pot_plans(cost, None, None, 0.05)
    assert np.abs(flow.double().numpy() - ref).max() < 1e-5
    assert np.abs(sims.double().numpy() - _score(ref, cost)).max() < 1e-4
    # the rows and columns of the flow are the (uniform) marginals
    torch.testing.assert_close(flow.sum(2), torch.full((6, 64), 1 / 64), atol=1e-6, rtol=0)
    torch.testing.assert_close(flow.sum(1), torch.full((6, 64), 1 / 64), atol=1e-6, rtol=0)


def test_default_iterations_already_close_on_structured_grids() -> None:
    qg, cg = _structured(4, seed=3)
    q, c = grid_to_patches(qg), grid_to_patches(cg)
    cost = cost_matrix(q, c)
    sims = emd_similarity(q, c)  # eps 0.05, <= 100 iterations
    ref = _score(_pot_plans(cost, None, None, 0.05), cost)
    assert np.abs(sims.double().numpy() - ref).max() < 1e-4


def test_over_relaxation_reaches_the_same_plan_in_fewer_iterations() -> None:
    """omega > 1 changes the path, not the fixed point: same plan as plain steps (and POT)."""
    q, c = (grid_to_patches(x) for x in _structured(8, seed=12))
    cost = cost_matrix(q, c)
    plain = sinkhorn(cost, None, None, eps=0.05, max_iter=3000, tol=1e-6, omega=1.0,
                     check_every=1)
    fast = sinkhorn(cost, None, None, eps=0.05, max_iter=3000, tol=1e-6, omega=1.5,
                    check_every=1)
    assert fast.n_iter < 0.6 * plain.n_iter  # measured: about a third as many
    torch.testing.assert_close(fast.transport, plain.transport, atol=1e-6, rtol=0)
    ref = _pot_plans(cost, None, None, 0.05)
    assert np.abs(fast.transport.double().numpy() - ref).max() < 1e-5
    # too much relaxation overshoots; the pairs whose error grows fall back to plain steps
    wild = sinkhorn(cost, None, None, eps=0.05, max_iter=3000, tol=1e-6, omega=1.98)
    assert np.isfinite(wild.transport.numpy()).all()
    assert np.abs(wild.transport.double().numpy() - ref).max() < 1e-5


def test_fixed_iterations_give_the_iterates_of_pot_batch() -> None:
    """Plain steps (omega 1) with tol = 0 run exactly max_iter iterations: POT batch iterates."""
    q, c = (grid_to_patches(x) for x in _structured(5, seed=4))
    cost = cost_matrix(q, c)
    for iters in (1, 7, 30):
        ours = sinkhorn(cost, None, None, eps=0.05, max_iter=iters, tol=0.0, omega=1.0)
        pot = ot.solve_batch(M=cost.double().numpy(), reg=0.05, reg_type="entropy",
                             max_iter=iters, tol=0.0)
        assert ours.n_iter == iters
        assert np.abs(ours.transport.double().numpy() - pot.plan).max() < 1e-6


def test_non_uniform_weights_match_pot() -> None:
    g = _gen(2)
    q, c = (grid_to_patches(x) for x in _structured(5, seed=2))
    a = torch.rand(5, 64, generator=g) + 0.05
    b = torch.rand(5, 64, generator=g) ** 2 + 0.01
    cost = cost_matrix(q, c)
    ref = _pot_plans(cost, a, b, 0.05)
    sims, flow = emd_similarity(q, c, 3 * a, b, return_flow=True, **CONVERGED)  # scale-free
    assert np.abs(flow.double().numpy() - ref).max() < 1e-5
    assert np.abs(sims.double().numpy() - _score(ref, cost)).max() < 1e-4
    res = sinkhorn(cost, a, b, **CONVERGED)
    torch.testing.assert_close(res.transport, flow, atol=1e-6, rtol=0)
    from_cost, flow2 = emd_similarity_from_cost(cost, a, b, return_flow=True, **CONVERGED)
    torch.testing.assert_close(from_cost, sims, atol=1e-6, rtol=0)
    torch.testing.assert_close(flow2, flow, atol=1e-6, rtol=0)
    torch.testing.assert_close(emd_similarity_from_cost(cost, a, b), emd_similarity(q, c, a, b),
                               atol=1e-6, rtol=0)
    from_cos, flow3 = emd_similarity_from_cosine(1.0 - cost, a, b, return_flow=True,
                                                 **CONVERGED)
    torch.testing.assert_close(from_cos, sims, atol=1e-6, rtol=0)
    torch.testing.assert_close(flow3, flow, atol=1e-6, rtol=0)
    torch.testing.assert_close(patch_cosine(q, c), 1.0 - cost, atol=1e-6, rtol=0)


def test_zero_weights_are_patches_left_out() -> None:
    g = _gen(5)
    q, c = torch.rand(3, 10, 16, generator=g), torch.rand(3, 7, 16, generator=g)
    a = torch.rand(3, 10, generator=g) + 0.1
    a[:, [2, 5]] = 0
    b = torch.rand(3, 7, generator=g) + 0.1
    b[:, 0] = 0
    sims, flow = emd_similarity(q, c, a, b, return_flow=True, **CONVERGED)
    rows, cols = [i for i in range(10) if i not in (2, 5)], list(range(1, 7))
    sub = emd_similarity(q[:, rows], c[:, cols], a[:, rows], b[:, cols], **CONVERGED)
    torch.testing.assert_close(sims, sub, atol=1e-6, rtol=0)
    assert flow[:, [2, 5]].abs().max() == 0 and flow[:, :, 0].abs().max() == 0


def test_small_eps_approaches_exact_emd() -> None:
    q, c = (grid_to_patches(pool_grid(x, 4)) for x in _structured(3, seed=6))  # 16 patches
    exact = emd_similarity_exact(q, c)
    approx = emd_similarity(q, c, eps=1e-3, max_iter=20000, tol=1e-6)  # log domain
    assert torch.isfinite(approx).all()
    assert (approx - exact).abs().max() < 1e-3
    loose = emd_similarity(q, c, eps=0.05, **CONVERGED)
    assert ((loose - exact).abs() > (approx - exact).abs()).all()  # entropic blur shrinks


def test_log_domain_path_matches_pot() -> None:
    """A cost spread of 8 at eps = 0.05 is past float32 exp: the log-domain path takes over."""
    g = _gen(7)
    cost = 8 * torch.rand(4, 9, 11, generator=g)
    assert emd._kernel(-cost[:1], 0.05, None) is None
    res = sinkhorn(cost, None, None, eps=0.05, max_iter=5000, tol=1e-7)
    ref = _pot_plans(cost, None, None, 0.05)
    assert np.isfinite(res.transport.numpy()).all()
    assert np.abs(res.transport.double().numpy() - ref).max() < 1e-5


def test_one_patch_grid_is_plain_cosine() -> None:
    g = _gen(8)
    qg, cg = torch.randn(5, 64, 1, 1, generator=g), torch.randn(5, 64, 1, 1, generator=g)
    sims = emd_similarity(grid_to_patches(qg), grid_to_patches(cg))
    cos = torch.nn.functional.cosine_similarity(qg.flatten(1), cg.flatten(1))
    torch.testing.assert_close(sims, cos, atol=1e-6, rtol=0)
    exact = emd_similarity_exact(grid_to_patches(qg), grid_to_patches(cg))
    torch.testing.assert_close(exact, cos, atol=1e-6, rtol=0)


# --- batching: chunks, threads, the torch loop, many queries ---------------------------------


def test_chunks_threads_and_torch_loop_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    q, c = (grid_to_patches(x) for x in _structured(11, seed=9))
    w = torch.rand(11, 64, generator=_gen(9)) + 0.1
    ref = emd_similarity(q, c, w, None, chunk_size=128)
    for chunk, workers in ((3, 1), (3, 2), (4, 3)):
        monkeypatch.setattr(emd, "_WORKERS", workers)
        torch.testing.assert_close(emd_similarity(q, c, w, None, chunk_size=chunk), ref,
                                   atol=1e-6, rtol=0)

    def torch_loop(kern, a, b, out, opt):  # noqa: ANN001, ANN202
        return emd._iterate_xp(torch, kern, a, b, out, opt)

    monkeypatch.setattr(emd, "_iterate", torch_loop)  # the loop used on GPUs
    torch.testing.assert_close(emd_similarity(q, c, w, None, chunk_size=4), ref, atol=1e-6,
                               rtol=0)
    plans = sinkhorn(cost_matrix(q, c), w, None, chunk_size=5, **CONVERGED).transport
    torch.testing.assert_close(plans.sum(2), w / w.sum(1, keepdim=True), atol=1e-6, rtol=0)


def test_rerank_scores_equal_pairwise_similarity() -> None:
    g = _gen(10)
    n_q, n_k = 3, 5
    qg, _ = _structured(n_q, c=32, seed=10)
    cg = (qg.unsqueeze(1) + 0.8 * torch.randn(n_q, n_k, 32, 8, 8, generator=g)).relu()
    qw = torch.rand(n_q, n_k, 64, generator=g) + 0.1
    cw = torch.rand(n_q, n_k, 64, generator=g) + 0.1
    scores = emd_rerank_scores(qg, cg, qw, cw, chunk_size=4)
    assert scores.shape == (n_q, n_k)
    q = grid_to_patches(qg).repeat_interleave(n_k, 0)
    c = grid_to_patches(cg.flatten(0, 1))
    pairs = emd_similarity(q, c, qw.flatten(0, 1), cw.flatten(0, 1))
    torch.testing.assert_close(scores.flatten(), pairs, atol=1e-6, rtol=0)
    uniform = emd_rerank_scores(qg, cg)
    torch.testing.assert_close(uniform.flatten(), emd_similarity(q, c), atol=1e-6, rtol=0)
    # APC and SC computed inside the chunks = the same weightings computed pair by pair
    for name, (wq, wc) in (("apc", W.apc(q, c)), ("sc", W.sc(patch_cosine(q, c)))):
        in_chunks = emd_rerank_scores(qg, cg, weighting=name, chunk_size=4)
        torch.testing.assert_close(in_chunks.flatten(), emd_similarity(q, c, wq, wc),
                                   atol=1e-6, rtol=0)


def test_gallery_index_and_float16_grids() -> None:
    g = _gen(11)
    gallery = torch.rand(9, 16, 4, 4, generator=g).half()  # (G, C, H, W) as cached
    queries = torch.rand(2, 16, 4, 4, generator=g).half()
    index = torch.tensor([[3, 0, 8], [5, 5, 1]])
    w = torch.rand(2, 3, 16, generator=g) + 0.1
    direct = emd_rerank_scores(queries, gallery[index], w, None, chunk_size=2)
    assert direct.dtype == torch.float32
    via_index = emd_rerank_scores(queries, gallery, w, None, chunk_size=4, cand_index=index)
    torch.testing.assert_close(via_index, direct, atol=1e-6, rtol=0)
    full = emd_rerank_scores(queries.float(), gallery[index].float(), w, None)
    torch.testing.assert_close(direct, full, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="outside the 9 gallery grids"):
        emd_rerank_scores(queries, gallery, cand_index=index + 1)


def test_empty_batches() -> None:
    q, c = torch.zeros(0, 64, 16), torch.zeros(0, 49, 16)
    assert emd_similarity(q, c).shape == (0,)
    sims, flow = emd_similarity(q, c, return_flow=True)
    assert sims.shape == (0,) and flow.shape == (0, 64, 49)
    res = sinkhorn(torch.zeros(0, 4, 5), None, None)
    assert res.transport.shape == (0, 4, 5) and res.n_iter == 0
    assert emd_rerank_scores(torch.zeros(0, 16, 8, 8), torch.zeros(0, 7, 16, 8, 8)).shape == (0, 7)
    assert emd_rerank_scores(torch.zeros(2, 16, 8, 8), torch.zeros(2, 0, 16, 8, 8)).shape == (2, 0)
    assert emd_similarity_exact(q, c).shape == (0,)
    assert emd_similarity_from_cost(torch.zeros(0, 4, 5)).shape == (0,)


# --- grids, costs, errors --------------------------------------------------------------------


def test_grid_helpers() -> None:
    grid = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = grid_to_patches(grid)
    assert patches.shape == (2, 64, 3)
    torch.testing.assert_close(patches[1, 2 * 8 + 5], grid[1, :, 2, 5])
    pooled = pool_grid(grid, 4)
    assert pooled.shape == (2, 3, 4, 4)
    torch.testing.assert_close(pooled[0, 1, 1, 2], grid[0, 1, 2:4, 4:6].mean())
    assert pool_grid(grid, 1).flatten(1).allclose(grid.mean((2, 3)))


def test_cost_matrix() -> None:
    q = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]]])  # a zero patch included
    c = torch.tensor([[[3.0, 0.0], [-1.0, 0.0]]])
    expected = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [1 - 0.5 ** 0.5, 1 + 0.5 ** 0.5]]])
    torch.testing.assert_close(cost_matrix(q, c), expected)


@pytest.mark.parametrize("call", [
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(2, 4, 9)),
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(3, 4, 8)),
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(2, 4, 8), torch.rand(2, 5)),
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(2, 4, 8), -torch.rand(2, 4)),
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(2, 4, 8), None, torch.zeros(2, 4)),
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(2, 4, 8), eps=0.0),
    lambda: emd_similarity_exact(torch.rand(2, 4, 8), torch.rand(2, 4, 9)),
    lambda: cost_matrix(torch.rand(4, 8), torch.rand(4, 8)),
    lambda: sinkhorn(torch.rand(2, 3, 4), torch.rand(2, 4), None),
    lambda: sinkhorn(torch.rand(3, 4), None, None),
    lambda: emd_similarity_from_cost(torch.rand(3, 4)),
    lambda: emd_rerank_scores(torch.rand(2, 8, 4, 4), torch.rand(3, 5, 8, 4, 4)),
    lambda: emd_rerank_scores(torch.rand(2, 8, 4, 4), torch.rand(2, 5, 6, 4, 4)),
    lambda: emd_rerank_scores(torch.rand(2, 8, 4, 4), torch.rand(2, 5, 8, 4, 4),
                              torch.rand(2, 5, 15)),
    lambda: emd_rerank_scores(torch.rand(2, 8, 4, 4), torch.rand(2, 5, 8, 4, 4), weighting="cc"),
    lambda: emd_rerank_scores(torch.rand(2, 8, 4, 4), torch.rand(2, 5, 8, 4, 4),
                              torch.rand(2, 5, 16), weighting="apc"),
    lambda: emd_similarity(torch.rand(2, 4, 8), torch.rand(2, 4, 8), omega=2.0),
    lambda: sinkhorn(torch.rand(2, 3, 4), None, None, omega=0.5),
    lambda: grid_to_patches(torch.rand(8, 4, 4)),
    lambda: pool_grid(torch.rand(1, 8, 4, 4), 0),
])
def test_bad_inputs_raise_input_error(call) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        call()


def test_shape_error_messages_name_the_problem() -> None:
    with pytest.raises(InputError, match="128 channels but candidate patches have 256"):
        emd_similarity(torch.rand(2, 4, 128), torch.rand(2, 4, 256))
    with pytest.raises(InputError, match="different numbers of pairs: 2 vs 3"):
        emd_similarity(torch.rand(2, 4, 8), torch.rand(3, 4, 8))
