"""Stage-2 core: patch-wise EMD similarity of face pairs by batched entropic OT (Sinkhorn).

DeepFace-EMD (seeds/001, ch. 3; DESIGN.md §5): the cost between the N query patches and the M
candidate patches is C_ij = 1 - cos(q_i, c_j); the marginals are the patch weightings
normalised to sum 1; the plan T minimises <T, C> - eps * H(T) under those marginals; and the
EMD similarity is sum(T * (1 - C)) = sum(T * cos).

How it is fast (DESIGN.md §5 "speed facts"; benchmarks/rerank.py measures it):
- pairs are solved chunk by chunk (by default 4 MiB of kernels: 256 pairs of 8x8 grids, on
  an accelerator 32,768 pairs: `facerank.rerank.device`), each
  chunk from start to finish while its kernels sit in cache, instead of streaming every
  kernel from RAM on every iteration; on the CPU torch.get_num_threads() workers take chunks
  as they come free and run each from its cosines to its scores (numpy and torch release
  the GIL), so nobody waits for a slow chunk;
- iterations run in the exp domain on row-shifted kernels K_ij = exp((g_ij - max_j g_ij) / eps)
  (g = -cost): the very iterates of log-domain Sinkhorn (rows may be rescaled freely) with no
  exp / log per iteration; each half-step is one batched row-vector x matrix product, run by
  numpy's matmul on the tensors' memory on the CPU (one BLAS gemv per pair, about half
  torch's per-call overhead);
- the steps are over-relaxed (omega = 1.5; Thibault et al., "Overrelaxed Sinkhorn-Knopp"):
  the same fixed point in about a third of the iterations on face grids; a pair whose error
  grows falls back to plain steps;
- the marginal error is looked at only every `check_every` iterations (one host sync), from
  the products the next step needs anyway; converged pairs then leave the chunk;
- for EMD the cosines are the gain (no cost tensor); re-ranking solves each pair transposed
  (candidate patches as rows) so the cosines come from one product per chunk on the grids'
  own (C, H*W) layout, with patches normalised after the product; the plan is written over
  the kernel in place.
When eps is too small for float32 exp (a row's cost spread / eps > 50, e.g. eps = 1e-3) a
chunk runs in the log domain instead (plain steps; slower, but it never overflows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from facerank.errors import InputError
from facerank.rerank.device import GPU_CHUNK_PAIRS
from facerank.rerank.emd.weights import apc_from_cosine, sc

OMEGA = 1.5  # default over-relaxation of the Sinkhorn steps (1 = plain; see _iterate_xp)
CHUNK_BYTES = 4 << 20  # default chunk: 4 MiB of kernels (256 pairs of 64 x 64 float32) on the CPU;
# on an accelerator GPU_CHUNK_PAIRS pairs (facerank.rerank.device)
_EXP_RANGE = 50.0  # largest (row cost spread) / eps solved in the exp domain (e^-50 ~ 2e-22)
# fewest pairs a CPU worker takes: smaller chunks run each Sinkhorn step as many tiny
# operations from many threads at once, which costs more than it shares out. One probe's 100
# candidates, 16 cores: 56.0 ms with 8, 11.6 ms with 64, 14.1 with 128 (4 cores: 19.8 / 12.5 /
# 14.1; 2 cores of the loaded development machine: within noise); scores identical
# (benchmarks/results/device_latency_emd_chunks_*.json)
MIN_CHUNK_PAIRS = 64
_WORKERS: int | None = None  # chunks iterated at once on the CPU (None: torch.get_num_threads())
_SAFEGUARD_SPAN = 10  # iterations over which an over-relaxed pair's error must shrink
_TINY = 1e-30  # floor of over-relaxed ratios (far below any weight, above float32's minimum)
_COMPACT_AT = 0.1  # drop converged pairs once at least this share of the chunk has converged


Array = np.ndarray | torch.Tensor  # the solver loop runs on either (numpy on the CPU)


class SinkhornResult(NamedTuple):
    """Plan of every pair and the most iterations any chunk ran."""

    transport: torch.Tensor  # (B, N, M), rows sum to a, columns to b
    n_iter: int


# ---------------------------------------------------------------------------------------------
# grids and costs


def grid_to_patches(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature grid -> (B, H*W, C) patch vectors, row-major over the grid."""
    if grid.dim() != 4:
        raise InputError(f"a feature grid must be (B, C, H, W), got shape {tuple(grid.shape)}")
    return grid.flatten(2).transpose(1, 2)


def pool_grid(grid: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size) by adaptive average pooling (e.g. 8x8 -> 4x4)."""
    if grid.dim() != 4:
        raise InputError(f"a feature grid must be (B, C, H, W), got shape {tuple(grid.shape)}")
    if size < 1:
        raise InputError(f"pooled grid size must be >= 1, got {size}")
    return F.adaptive_avg_pool2d(_as_float(grid), size)


def cost_matrix(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """q (B, N, C), c (B, M, C) -> (B, N, M) cost 1 - cos(q_i, c_j); zero vectors give cos 0."""
    _check_patches(q, c)
    dtype = _work_dtype(q, c)
    return 1.0 - _cosine(_unit(q.to(dtype)), _unit(c.to(dtype)))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


def _work_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 if any input is, else float32 (float16 / bfloat16 / integer inputs too)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _unit(x: torch.Tensor) -> torch.Tensor:
    """(..., C) -> unit vectors (eps-safe: a zero vector stays zero)."""
    return F.normalize(_as_float(x), dim=-1, eps=1e-12)


def _cosine(qn: torch.Tensor, cn: torch.Tensor) -> torch.Tensor:
    """Unit patches (b, N, C), (b, M, C) -> (b, N, M) cosines."""
    return torch.bmm(qn, cn.transpose(1, 2))


def _inv_norm(x: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (...) 1 / |x| (a zero vector gets 1e12: its cosines stay 0)."""
    return torch.linalg.vector_norm(x, dim=-1).clamp_min_(1e-12).reciprocal_()


def patch_cosine(q: torch.Tensor, c: torch.Tensor, q_inv_norm: torch.Tensor | None = None,
                 c_inv_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Raw float patches (n, N, C), (n, M, C) -> (n, N, M) cosines, normalising after the
    product; 1/norms (n, N), (n, M) may be given when the caller already has them."""
    q_inv_norm = _inv_norm(q) if q_inv_norm is None else q_inv_norm
    c_inv_norm = _inv_norm(c) if c_inv_norm is None else c_inv_norm
    cos = torch.bmm(q, c.transpose(1, 2))
    return cos.mul_(q_inv_norm.unsqueeze(2)).mul_(c_inv_norm.unsqueeze(1))


def _check_patches(q: torch.Tensor, c: torch.Tensor) -> None:
    if q.dim() != 3 or c.dim() != 3:
        raise InputError(f"patches must be (B, N, C) and (B, M, C), got shapes "
                         f"{tuple(q.shape)} and {tuple(c.shape)}")
    if q.shape[0] != c.shape[0]:
        raise InputError(f"query and candidate patches hold different numbers of pairs: "
                         f"{q.shape[0]} vs {c.shape[0]} (shapes {tuple(q.shape)}, "
                         f"{tuple(c.shape)})")
    if q.shape[2] != c.shape[2]:
        raise InputError(f"query patches have {q.shape[2]} channels but candidate patches have "
                         f"{c.shape[2]}; both must come from the same layer")


def _marginal(w: torch.Tensor | None, b: int, n: int, like: torch.Tensor,
              name: str) -> torch.Tensor:
    """Weights (b, n) or None -> non-negative rows summing to 1 (None -> uniform)."""
    if w is None:
        return torch.full((b, n), 1.0 / max(n, 1), dtype=like.dtype, device=like.device)
    if tuple(w.shape) != (b, n):
        raise InputError(f"{name} weights have shape {tuple(w.shape)}, expected ({b}, {n}): "
                         f"one weight per patch of each pair")
    w = w.to(dtype=like.dtype, device=like.device)
    total = w.sum(dim=1, keepdim=True)  # (b, 1)
    bad = (w < 0).any(dim=1) | ~(total[:, 0] > 0) | ~torch.isfinite(total[:, 0])
    if b and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(f"{name} weights of pair {i} are negative, NaN or all zero; give "
                         f"non-negative weights with a positive sum (or None for uniform)")
    return w / total


class _Solver(NamedTuple):
    """Sinkhorn settings of one call, shared by all its chunks."""

    eps: float  # entropic regularisation
    max_iter: int
    tol: float  # L1 error of both marginals at which a pair stops
    check_every: int  # iterations between two looks at the error
    omega: float  # over-relaxation in [1, 2); 1 = plain Sinkhorn


def _solver(eps: float, max_iter: int, tol: float, check_every: int, omega: float,
            chunk_size: int | None) -> _Solver:
    """Checked settings (chunk_size is checked here too, it travels separately)."""
    if not eps > 0:
        raise InputError(f"Sinkhorn eps must be > 0, got {eps}")
    if max_iter < 1 or check_every < 1 or (chunk_size is not None and chunk_size < 1):
        raise InputError(f"max_iter, check_every and chunk_size must be >= 1, got "
                         f"{max_iter}, {check_every}, {chunk_size}")
    if not 1.0 <= omega < 2.0:
        raise InputError(f"over-relaxation omega must be in [1, 2), got {omega}")
    return _Solver(float(eps), int(max_iter), float(tol), int(check_every), float(omega))


# ---------------------------------------------------------------------------------------------
# Sinkhorn on one chunk


def _kernel(gain: torch.Tensor, eps: float, spread: float | None) -> torch.Tensor | None:
    """gain (n, N, M) = -cost -> exp((gain - row max) / eps), each row's max 1 (new tensor).

    `spread` bounds every row's max - min if known (2 for cosines), else it is measured.
    None when a row may span more than _EXP_RANGE * eps: float32 exp would underflow.
    """
    kern = torch.sub(gain, gain.amax(dim=2, keepdim=True))  # (n, N, M), <= 0
    if spread is None or spread > _EXP_RANGE * eps:
        if float(kern.amin()) < -_EXP_RANGE * eps:  # host sync, once per chunk
            return None
    return kern.mul_(1.0 / eps).exp_()


def _iterate(kern: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None,
             opt: _Solver) -> int:
    """Exp-domain Sinkhorn on kern (n, N, M), marginals a (n, N), b (n, M) -> plan in out.

    out None: the plan overwrites kern. Returns the iterations run, or -1 if float range was
    exceeded (the plan is then unusable). On the CPU the loop runs numpy's matmul / divide on
    the same memory: single-threaded, less per-call overhead than torch, and no thread
    barriers to stall on a busy machine.
    """
    if kern.device.type == "cpu":
        return _iterate_xp(np, kern.numpy(), a.numpy(), b.numpy(),
                           None if out is None else out.numpy(), opt)
    return _iterate_xp(torch, kern, a, b, out, opt)


def _iterate_xp(xp: ModuleType, kern: Array, a: Array, b: Array, out: Array | None,
                opt: _Solver) -> int:
    """The loop of `_iterate` for xp = numpy (ndarrays) or torch (tensors).

    omega > 1 over-relaxes every step after the first (Thibault et al. 2021, "Overrelaxed
    Sinkhorn-Knopp"): u <- u * (a / (u * Kv))^omega, likewise v. Same fixed point, about a
    third of the iterations on face grids (benchmarks/rerank.py). A pair whose error grows
    over _SAFEGUARD_SPAN iterations falls back to plain steps (omega 1), which always
    converge.
    """
    max_iter, tol, check_every, omega = opt.max_iter, opt.tol, opt.check_every, opt.omega
    n, n_rows, n_cols = kern.shape
    dest = kern if out is None else out  # where plans go (kern's rows are free once solved)
    arow, brow = a.reshape(n, 1, n_rows), b.reshape(n, 1, n_cols)
    vrow = xp.ones_like(brow)  # (n, 1, M) column scaling
    urow = xp.ones_like(arow)  # (n, 1, N) row scaling
    kv = xp.matmul(vrow, kern.swapaxes(1, 2))  # (n, 1, N) = (K v)^T
    ktu = xp.empty_like(brow)  # (n, 1, M) = (K^T u)^T
    rtmp, ctmp = xp.empty_like(arow), xp.empty_like(brow)
    om = None  # (n, 1, 1) relaxation of each pair; None: plain steps (always the first)
    # relaxed steps divide by u * Kv: a zero weight would give 0 / 0, a tiny floor gives 1
    arow_t, brow_t = arow + _TINY, brow + _TINY
    last_err, last_it = None, 0  # (n,) marginal error at least _SAFEGUARD_SPAN iterations ago
    pos = None  # rows of `dest` of the pairs still running (None: all, in order)
    it = 0
    while True:
        _relaxed_scale(xp, urow, kv, arow if om is None else arow_t, om, rtmp)
        xp.matmul(urow, kern, out=ktu)
        _relaxed_scale(xp, vrow, ktu, brow if om is None else brow_t, om, ctmp)
        xp.matmul(vrow, kern.swapaxes(1, 2), out=kv)  # also the next row update's product
        it += 1
        if it == 1 and omega != 1.0:
            om = xp.full_like(arow[:, :, :1], omega)
        if it % check_every and it < max_iter:
            continue
        # (n,) L1 error of both marginals of diag(u) K diag(v): rows u * Kv, columns v * K^T u
        err = xp.abs(urow * kv - arow).sum(axis=(1, 2)) + xp.abs(vrow * ktu - brow).sum(
            axis=(1, 2))
        if not bool(xp.isfinite(err).all()):  # host sync, once per check
            return -1
        if it >= max_iter:
            _write_plan(dest, pos, urow, kern, vrow)
            return it
        if om is not None and it - last_it >= _SAFEGUARD_SPAN:  # relaxed errors oscillate:
            if last_err is not None:  # judge them over a span, not step by step
                om[err > last_err] = 1.0  # over-relaxation overshoots here: plain steps
            last_err, last_it = err, it
        done = err <= tol
        n_done = int(done.sum())
        if n_done == len(done):
            _write_plan(dest, pos, urow, kern, vrow)
            return it
        if n_done >= _COMPACT_AT * len(done):  # drop converged pairs (copies the rest)
            if pos is None:
                pos = np.arange(n) if xp is np else torch.arange(n, device=kern.device)
            _write_plan(dest, pos[done], urow[done], kern[done], vrow[done])
            keep = ~done
            pos, kern, arow, brow, arow_t, brow_t, urow, vrow, kv = (
                t[keep] for t in (pos, kern, arow, brow, arow_t, brow_t, urow, vrow, kv))
            om = None if om is None else om[keep]
            last_err = None if last_err is None else last_err[keep]
            ktu, rtmp, ctmp = xp.empty_like(brow), xp.empty_like(arow), xp.empty_like(brow)


def _relaxed_scale(xp: ModuleType, scale: Array, prod: Array, target: Array,
                   om: Array | None, tmp: Array) -> None:
    """scale <- scale * (target / (scale * prod))^om in place (om None: target / prod).

    With om, target is the weights plus _TINY and so is scale * prod here, so a
    patch of weight 0 (scale 0) keeps scale 0.
    """
    if om is None:
        xp.divide(target, prod, out=scale)
        return
    xp.multiply(scale, prod, out=tmp)
    tmp += _TINY
    xp.divide(target, tmp, out=tmp)
    xp.pow(tmp, om, out=tmp)
    scale *= tmp


def _write_plan(dest: Array, pos: Array | None, urow: Array, kern: Array, vrow: Array) -> None:
    """dest[pos] = diag(u) K diag(v) for (n, 1, N), (n, N, M), (n, 1, M) arrays or tensors."""
    if pos is not None:
        dest[pos] = kern * urow.swapaxes(1, 2) * vrow
        return
    if dest is kern:
        kern *= urow.swapaxes(1, 2)
    else:
        dest[...] = kern * urow.swapaxes(1, 2)
    dest *= vrow


def _solve_log(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
               opt: _Solver) -> int:
    """Log-domain Sinkhorn (as POT's `sinkhorn_log`, plain steps): robust for any eps, slower."""
    eps, max_iter, tol, check_every = opt.eps, opt.max_iter, opt.tol, opt.check_every
    logk = cost * (-1.0 / eps)  # (n, N, M)
    loga, logb = a.log(), b.log()  # -inf for zero weights: those rows / columns carry nothing
    g = torch.zeros_like(b)  # (n, M)
    it = 0
    while it < max_iter:
        f = loga - torch.logsumexp(logk + g.unsqueeze(1), dim=2)  # (n, N)
        g = logb - torch.logsumexp(logk + f.unsqueeze(2), dim=1)  # (n, M)
        it += 1
        if it % check_every == 0 and it < max_iter:
            rows = torch.logsumexp(logk + g.unsqueeze(1), dim=2) + f  # (n, N) log row sums
            if bool(((rows.exp() - a).abs().sum(dim=1) <= tol).all()):
                break
    torch.exp(logk + f.unsqueeze(2) + g.unsqueeze(1), out=out)
    return it


def _solve_chunks(n_pairs: int, chunk_size: int | None, gain_of: Callable[[int, int], torch.Tensor],
                  a: torch.Tensor, b: torch.Tensor,
                  out_of: Callable[[int, int], torch.Tensor | None],
                  done: Callable[[int, int, torch.Tensor, torch.Tensor], None], opt: _Solver,
                  spread: float | None) -> int:
    """Solve pairs [0, n_pairs) in chunks; returns the most iterations any chunk ran.

    gain_of(s, e) -> (n, N, M) gain = -cost up to a per-row constant (row spread <= spread);
    it may also fill the chunk's marginals a[s:e], b[s:e] (read after it). out_of(s, e) ->
    where the plan goes (None: anywhere); done(s, e, gain, plan) consumes it. On the CPU
    torch.get_num_threads() workers take chunks as they come free, each running its chunk
    from the gain to `done` (numpy and torch release the GIL), so no worker waits for
    another's slow chunk.
    """
    workers = min(_WORKERS or torch.get_num_threads(), 16) if a.device.type == "cpu" else 1
    if chunk_size is None and a.device.type != "cpu":  # an accelerator wants many pairs
        chunk_size = GPU_CHUNK_PAIRS  # H200: 1.3 us/pair vs 38.6 with CHUNK_BYTES chunks
    if chunk_size is None:  # CHUNK_BYTES of kernels, but at least one chunk per worker
        pair_bytes = a.shape[1] * b.shape[1] * a.element_size()
        chunk_size = max(MIN_CHUNK_PAIRS, min(4096, CHUNK_BYTES // max(pair_bytes, 1),
                                              -(-n_pairs // workers)))
    ranges = [(s, min(s + chunk_size, n_pairs)) for s in range(0, n_pairs, chunk_size)]

    def solve(s: int, e: int) -> int:
        gain = gain_of(s, e)  # (n, N, M)
        kern = _kernel(gain, opt.eps, spread)
        plan = out_of(s, e)
        it = -1 if kern is None else _iterate(kern, a[s:e], b[s:e], plan, opt)
        plan = kern if plan is None else plan
        if it < 0:  # eps too small for the exp domain (or it overflowed): log domain
            plan = torch.empty_like(gain) if plan is None else plan
            it = _solve_log(-gain, a[s:e], b[s:e], plan, opt)
        done(s, e, gain, plan)
        return it

    if workers == 1 or len(ranges) <= 1:
        return max((solve(s, e) for s, e in ranges), default=0)
    return max(_pool(workers).map(lambda r: solve(*r), ranges))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool kept for the process (threads idle between calls)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="facerank-emd")


def _checked_problem(cost: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None,
                     a_name: str, b_name: str,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ready cost (B, N, M) in the work dtype with its normalised weights a (B, N), b (B, M)."""
    if cost.dim() != 3:
        raise InputError(f"cost must be (B, N, M), got shape {tuple(cost.shape)}")
    cost = cost.detach().to(_work_dtype(cost))
    n_pairs, n, m = cost.shape
    return (cost, _marginal(a, n_pairs, n, cost, a_name),
            _marginal(b, n_pairs, m, cost, b_name))


# ---------------------------------------------------------------------------------------------
# public solvers


@torch.no_grad()
def sinkhorn(cost: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None,
             eps: float = 0.05, max_iter: int = 100, tol: float = 1e-6, check_every: int = 10,
             chunk_size: int | None = None, *, omega: float = OMEGA) -> SinkhornResult:
    """Entropic OT plans of B problems: cost (B, N, M), weights a (B, N), b (B, M).

    Weights are normalised here (None: uniform). A pair stops once the L1 errors of its two
    marginals sum to <= tol (looked at every `check_every` iterations) or after max_iter.
    chunk_size: pairs solved together (None: CHUNK_BYTES of kernels). omega: over-relaxation
    of the steps (1 = plain Sinkhorn, POT's iterates; the default needs ~3x fewer).
    """
    opt = _solver(eps, max_iter, tol, check_every, omega, chunk_size)
    cost, a, b = _checked_problem(cost, a, b, "source (a)", "target (b)")
    n_pairs = cost.shape[0]
    out = torch.empty_like(cost)  # (B, N, M)
    n_iter = _solve_chunks(n_pairs, chunk_size, lambda s, e: torch.neg(cost[s:e]), a, b,
                           lambda s, e: out[s:e], lambda *_: None, opt, None)
    return SinkhornResult(out, n_iter)


def _emd_chunked(cosine: Callable[[int, int], torch.Tensor], n_pairs: int, a: torch.Tensor,
                 b: torch.Tensor, opt: _Solver, chunk_size: int | None,
                 flow: torch.Tensor | None,
                 spread: float | None = 2.0) -> torch.Tensor:
    """EMD similarity of B pairs whose (n, N, M) cosines `cosine(s, e)` gives chunk-wise."""
    sims = torch.empty(n_pairs, dtype=a.dtype, device=a.device)  # (B,)

    def done(s: int, e: int, cos: torch.Tensor, plan: torch.Tensor) -> None:
        torch.sum(plan * cos, dim=(1, 2), out=sims[s:e])

    # gain = cos (the cost 1 - cos up to a constant), row spread <= 2 for true cosines
    _solve_chunks(n_pairs, chunk_size, cosine, a, b,
                  lambda s, e: None if flow is None else flow[s:e], done, opt, spread)
    return sims


@torch.no_grad()
def emd_similarity_from_cost(cost: torch.Tensor, a: torch.Tensor | None = None,
                             b: torch.Tensor | None = None, eps: float = 0.05,
                             max_iter: int = 100, return_flow: bool = False, *,
                             tol: float = 1e-6, check_every: int = 10,
                             chunk_size: int | None = None, omega: float = OMEGA,
                             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """sum(T * (1 - cost)) of B pairs from a ready cost (B, N, M), e.g. `cost_matrix`'s.

    Same as `sinkhorn` then the sum, without materialising the plans unless return_flow.
    """
    opt = _solver(eps, max_iter, tol, check_every, omega, chunk_size)
    return _emd_of_ready(cost, lambda x: 1.0 - x, a, b, opt, return_flow, chunk_size)


@torch.no_grad()
def emd_similarity_from_cosine(cos: torch.Tensor, a: torch.Tensor | None = None,
                               b: torch.Tensor | None = None, eps: float = 0.05,
                               max_iter: int = 100, return_flow: bool = False, *,
                               tol: float = 1e-6, check_every: int = 10,
                               chunk_size: int | None = None, omega: float = OMEGA,
                               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """sum(T * cos) of B pairs from ready patch cosines (B, N, M), e.g. from patch grids.

    The same as `emd_similarity_from_cost(1 - cos)`, without building the cost.
    """
    opt = _solver(eps, max_iter, tol, check_every, omega, chunk_size)
    return _emd_of_ready(cos, lambda x: x, a, b, opt, return_flow, chunk_size)


def _emd_of_ready(x: torch.Tensor, gain: Callable[[torch.Tensor], torch.Tensor],
                  a: torch.Tensor | None, b: torch.Tensor | None, opt: _Solver,
                  return_flow: bool, chunk_size: int | None,
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """EMD of B pairs from a ready (B, N, M) cost or cosine x; gain(x chunk) = the cosines."""
    x, a, b = _checked_problem(x, a, b, "query (a)", "candidate (b)")
    flow = torch.empty_like(x) if return_flow else None
    sims = _emd_chunked(lambda s, e: gain(x[s:e]), x.shape[0], a, b, opt, chunk_size, flow,
                        spread=None)
    return (sims, flow) if flow is not None else sims


@torch.no_grad()
def emd_similarity(q_patches: torch.Tensor, c_patches: torch.Tensor,
                   a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                   eps: float = 0.05, max_iter: int = 100, return_flow: bool = False, *,
                   tol: float = 1e-6, check_every: int = 10, chunk_size: int | None = None,
                   omega: float = OMEGA,
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """EMD similarity sum(T * cos) of B pairs: q (B, N, C), c (B, M, C) -> (B,).

    a (B, N), b (B, M): patch weights (None = uniform). With return_flow also the plans
    (B, N, M).
    """
    opt = _solver(eps, max_iter, tol, check_every, omega, chunk_size)
    _check_patches(q_patches, c_patches)
    n_pairs, n, m = q_patches.shape[0], q_patches.shape[1], c_patches.shape[1]
    q, c = q_patches.detach(), c_patches.detach()  # converted chunk-wise (float16 stays small)
    dtype = _work_dtype(q, c)
    a = _marginal(a, n_pairs, n, q.new_empty(0, dtype=dtype), "query (a)")
    b = _marginal(b, n_pairs, m, a, "candidate (b)")
    flow = torch.empty(n_pairs, n, m, dtype=dtype, device=q.device) if return_flow else None

    def cosine(s: int, e: int) -> torch.Tensor:
        return patch_cosine(q[s:e].to(dtype), c[s:e].to(dtype))

    sims = _emd_chunked(cosine, n_pairs, a, b, opt, chunk_size, flow)
    return (sims, flow) if flow is not None else sims


@torch.no_grad()
def emd_similarity_exact(q_patches: torch.Tensor, c_patches: torch.Tensor,
                         a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                         eps: float = 0.05, max_iter: int = 100, return_flow: bool = False,
                         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact (unregularised) EMD similarity with POT's `ot.emd`, one pair at a time.

    The reference for tests (results on the CPU); eps and max_iter are accepted for a
    common signature and unused.
    """
    import ot

    _check_patches(q_patches, c_patches)
    n_pairs, n, m = q_patches.shape[0], q_patches.shape[1], c_patches.shape[1]
    cos = _cosine(_unit(q_patches.detach().cpu().double()),
                  _unit(c_patches.detach().cpu().double()))  # (B, N, M)
    a = _marginal(a, n_pairs, n, cos, "query (a)")
    b = _marginal(b, n_pairs, m, cos, "candidate (b)")
    cos_np, a_np, b_np = cos.numpy(), a.numpy(), b.numpy()
    plans = np.zeros((n_pairs, n, m))
    for i in range(n_pairs):
        plans[i] = ot.emd(a_np[i], b_np[i], 1.0 - cos_np[i], numItermax=1_000_000)
    dtype = _work_dtype(q_patches, c_patches)
    sims = torch.from_numpy((plans * cos_np).sum(axis=(1, 2))).to(dtype)
    if return_flow:
        return sims, torch.from_numpy(plans).to(dtype)
    return sims


def _cand_query_cosine(cp: torch.Tensor, q_cols: torch.Tensor, s: int, e: int,
                       n_k: int) -> torch.Tensor:
    """Un-normalised candidate x unit-query patch products of pairs [s, e) -> (n, M, N).

    cp (n, C, M) the pairs' candidate grids, q_cols (Q, C, N) unit query patches; pair p
    belongs to query p // n_k. The pairs of one query share its columns, so each query's run
    of pairs is one (run * M, C) x (C, N) matrix product (one GEMM, the query read once)
    instead of a batched product over a copy of the query per pair.
    """
    n, m = cp.shape[0], cp.shape[2]
    out = torch.empty(n, m, q_cols.shape[2], dtype=cp.dtype, device=cp.device)
    rows = cp.transpose(1, 2)  # (n, M, C)
    p = s
    while p < e:  # one run per query: (e - s) / n_k + 2 runs at most
        q = p // n_k
        end = min(e, (q + 1) * n_k)
        out[p - s : end - s] = torch.matmul(rows[p - s : end - s], q_cols[q])
        p = end
    return out


@torch.no_grad()
def emd_rerank_scores(query_grids: torch.Tensor, cand_grids: torch.Tensor,
                      query_w: torch.Tensor | None = None, cand_w: torch.Tensor | None = None,
                      eps: float = 0.05, max_iter: int = 100, *, tol: float = 1e-6,
                      check_every: int = 10, chunk_size: int | None = None,
                      omega: float = OMEGA, cand_index: torch.Tensor | None = None,
                      weighting: str | None = None) -> torch.Tensor:
    """EMD similarity of Q queries x K candidates each -> (Q, K).

    query_grids (Q, C, H, W); cand_grids (Q, K, C, H', W'), or with cand_index (Q, K) the
    gallery grids (G, C, H', W') that it indexes (gathered chunk-wise, never all at once);
    query_w (Q, K, H*W) and cand_w (Q, K, H'*W') are per-pair patch weights (they may depend
    on both faces) or None for uniform. Grids may be float16; the maths runs in float32.
    weighting "apc" or "sc" (instead of query_w / cand_w): those weights, computed chunk by
    chunk from the pairs' patch cosines (`weights.apc_from_cosine`, `weights.sc`).

    Each pair is solved transposed (candidate patches as rows): its cosines then come
    straight from the grid layout, (M, C) x (C, N), and the EMD is the same number.
    """
    opt = _solver(eps, max_iter, tol, check_every, omega, chunk_size)
    if cand_index is not None:
        if cand_index.dim() != 2 or cand_grids.dim() != 4:
            raise InputError(f"with cand_index (Q, K) the candidate grids are the gallery "
                             f"(G, C, H, W); got shapes {tuple(cand_index.shape)} and "
                             f"{tuple(cand_grids.shape)}")
        n_q, n_k = cand_index.shape
        rows = cand_index.reshape(-1).to(device=cand_grids.device, dtype=torch.long)
        gallery = cand_grids.detach().flatten(2)  # (G, C, M)
        if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < len(gallery):
            raise InputError(f"cand_index holds ids outside the {len(gallery)} gallery grids")
    else:
        if cand_grids.dim() != 5:
            raise InputError(f"candidate grids must be (Q, K, C, H, W), got shape "
                             f"{tuple(cand_grids.shape)}")
        n_q, n_k = cand_grids.shape[:2]
        rows = None
        gallery = cand_grids.detach().flatten(0, 1).flatten(2)  # (Q*K, C, M)
    if query_grids.dim() != 4 or query_grids.shape[0] != n_q:
        raise InputError(f"query grids must be ({n_q}, C, H, W) for candidates of {n_q} "
                         f"queries, got shape {tuple(query_grids.shape)}")
    if query_grids.shape[1] != gallery.shape[1]:
        raise InputError(f"query grids have {query_grids.shape[1]} channels but candidate "
                         f"grids have {gallery.shape[1]}; both must come from the same layer")
    if weighting not in (None, "apc", "sc") or (weighting and (query_w, cand_w) != (None, None)):
        raise InputError(f"weighting must be 'apc', 'sc' or None (then query_w / cand_w or "
                         f"uniform), not both; got {weighting!r}")
    dtype = _work_dtype(query_grids, cand_grids)
    q_patches = grid_to_patches(query_grids.detach()).to(dtype)  # (Q, N, C)
    q_norm = torch.linalg.vector_norm(q_patches, dim=2)  # (Q, N)
    q_cols = (q_patches / q_norm.clamp_min(1e-12).unsqueeze(2)).transpose(1, 2).contiguous()
    # q_cols (Q, C, N): unit query patches as columns
    n_pairs, n, m = n_q * n_k, q_cols.shape[2], gallery.shape[2]
    for w, name, size in ((query_w, "query", n), (cand_w, "candidate", m)):
        if w is not None and tuple(w.shape) != (n_q, n_k, size):
            raise InputError(f"{name} weights have shape {tuple(w.shape)}, expected "
                             f"({n_q}, {n_k}, {size}): one weight per patch of each pair")
    a = _marginal(None if query_w is None else query_w.reshape(n_pairs, n), n_pairs, n, q_cols,
                  "query")  # (B, N); with `weighting`, overwritten chunk by chunk
    b = _marginal(None if cand_w is None else cand_w.reshape(n_pairs, m), n_pairs, m, q_cols,
                  "candidate")  # (B, M)

    def cosine(s: int, e: int) -> torch.Tensor:  # (n, M, N): candidate patches as rows
        src = gallery[s:e] if rows is None else gallery.index_select(0, rows[s:e])
        cp = src if src.dtype == dtype else torch.empty(src.shape, dtype=dtype,
                                                         device=src.device).copy_(src)
        # (n, C, M); index_select and copy_ (not fancy indexing and .to): ~10x less time
        qi = torch.arange(s, e, device=cp.device) // n_k  # query of each pair
        cos = _cand_query_cosine(cp, q_cols, s, e, n_k)
        c_norm = torch.linalg.vector_norm(cp, dim=1)  # (n, M)
        cos.mul_(c_norm.clamp_min(1e-12).reciprocal_().unsqueeze(2))
        if weighting == "apc":  # the problem is transposed: (candidate, query) weights
            b[s:e], a[s:e] = apc_from_cosine(cos, c_norm, q_norm[qi])
        elif weighting == "sc":
            b[s:e], a[s:e] = sc(cos)
        return cos

    sims = _emd_chunked(cosine, n_pairs, b, a, opt, chunk_size, None)  # transposed: b rows
    return sims.reshape(n_q, n_k)
