"""DeepFace-EMD Stage 2: re-rank the Stage-1 top-k by EMD between patch embeddings.

    final = alpha * EMD-similarity + (1 - alpha) * cosine        (DeepFace-EMD Eq. 5.1)

EMD-similarity = sum_ij T_ij * cos(q_i, g_j) with T the entropic transport plan between the two
faces' patch weightings (see `weights.py`). All (query, candidate) pairs of a chunk of queries
go through one `emd_rerank_scores` call (each distinct candidate grid gathered once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from facerank._util.progress import progress_bar
from facerank.errors import InputError
from facerank.face.features import FeatureSet
from facerank.rerank.base import GatedBlendReranker, register_stage2
from facerank.rerank.device import CPU_EMD_CALL_PAIRS, default_chunk_pairs, pick_device
from facerank.rerank.emd import weights as W
from facerank.rerank.emd.solver import (
    emd_rerank_scores,
    emd_similarity_from_cosine,
    grid_to_patches,
    patch_cosine,
    pool_grid,
)
from facerank.rerank.gate import (
    QualityGate,
    bundled_gate,
)

_MODEL_PREFIX = {"dlib": "dlib_resnet", "sface": "sface"}
_GRID = re.compile(r"^(l[0-4])(?:p(\d+))?$")


def parse_grid(grid: str) -> tuple[str, int | None]:
    """"l2" -> ("l2", None); "l2p4" -> ("l2", 4) (l2 average-pooled to 4x4)."""
    m = _GRID.match(grid)
    if not m:
        raise InputError(f"unknown grid {grid!r}; use a backbone map l0..l4, optionally pooled "
                         "as e.g. l2p4 (l2 pooled to 4x4)")
    return m.group(1), int(m.group(2)) if m.group(2) else None


@dataclass
class PairFlows:
    """EMD details of B pairs (for explanations)."""

    emd: np.ndarray  # (B,) EMD similarity
    cosine: np.ndarray  # (B,) global cosine
    final: np.ndarray  # (B,)
    flow: np.ndarray  # (B, N, M) transport plan
    query_weights: np.ndarray  # (B, N)
    cand_weights: np.ndarray  # (B, M)
    grid_hw: tuple[int, int]
    alpha: float = 0.7  # final = alpha * emd + (1 - alpha) * cosine


class Stage2EMD(GatedBlendReranker):
    """EMD re-ranker: `Stage2EMD(grid="l2", weighting="apc", alpha=0.7, k=100)`."""

    name = "emd"

    def __init__(self, grid: str = "l2", weighting: str = "apc", alpha: float = 0.7,
                 k: int = 100, eps: float = 0.05, max_iter: int = 100,
                 chunk_pairs: int | None = None, fc_weight: torch.Tensor | None = None,
                 gate: QualityGate | str | None = None, device: str = "cpu",
                 backbone: str = "dlib", pre_gate: bool = True) -> None:
        if weighting not in W.WEIGHTINGS:
            raise InputError(f"unknown weighting {weighting!r}; choose from "
                             f"{', '.join(W.WEIGHTINGS)}")
        self._set_blend(alpha, k, gate, pre_gate)
        self.grid = grid
        self.grid_name, self.pool = parse_grid(grid)
        self.weighting = weighting
        self.eps = eps
        self.max_iter = max_iter
        self.device = pick_device(device)  # re-ranking runs there; chunk size follows it
        self.chunk_pairs = int(chunk_pairs or default_chunk_pairs(self.device,
                                                                  CPU_EMD_CALL_PAIRS))
        self._fc_weight = fc_weight
        from facerank.models.backbone import geometry

        self.backbone = backbone
        self.chip_size = geometry(backbone).chip_size  # lmk weighting: chip landmarks -> cells
        gate_backbone = str((self.gate.meta if self.gate else {}).get("backbone", ""))
        if gate_backbone and not gate_backbone.startswith(_MODEL_PREFIX[backbone]):
            raise InputError(f"the Stage-2 gate was fitted on {gate_backbone}, not on the "
                             f"{backbone} backbone; use its own gate (--gate auto) or --gate none")
        if weighting == "cc" and backbone != "dlib":
            raise InputError(f"cc weighting needs a global-pool + fc head (dlib); {backbone}'s "
                             "embedding maps the whole flattened 7x7 map (position-dependent): "
                             "use apc, sc, uniform or lmk")

    def describe(self) -> str:
        gated = ", gated" if self.gate is not None else ""
        return (f"Stage 2 EMD ({self.grid}, {self.weighting}, alpha={self.alpha:g}, k={self.k}"
                f"{gated})")

    @property
    def fc_weight(self) -> torch.Tensor:
        if self._fc_weight is None:
            from facerank.models.dlib_resnet import DlibResNet

            self._fc_weight = DlibResNet.from_dat().fc_weight.detach().clone()
        return self._fc_weight

    # ---- patches --------------------------------------------------------------------------

    def _patches(self, fs: FeatureSet, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (B, H*W, C) float32 (a view of the grid layout) and their 1/norm (B, H*W).

        Each distinct row is gathered, converted and measured once (a query repeats k times).
        """
        self._check_grid(fs)
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        uniq, inverse = np.unique(index, return_inverse=True)  # uniq is sorted
        g = torch.from_numpy(np.ascontiguousarray(fs.grids[self.grid_name][uniq])).float()
        if self.pool:
            g = pool_grid(g, self.pool)
        g = g.flatten(2)  # (U, C, H*W)
        inv_norm = torch.linalg.vector_norm(g, dim=1).clamp_min_(1e-12).reciprocal_()  # (U, H*W)
        if not np.array_equal(uniq, index):  # back to the order (and repeats) asked for
            rows = torch.from_numpy(inverse.reshape(-1))
            g, inv_norm = g.index_select(0, rows), inv_norm.index_select(0, rows)
        return g.transpose(1, 2), inv_norm

    def _check_grid(self, fs: FeatureSet) -> None:
        if self.grid_name not in fs.grids:
            raise InputError(f"features have no grid {self.grid_name!r} (have "
                             f"{', '.join(fs.grids) or 'none'}); extract with grids including it")

    def _grids(self, fs: FeatureSet, index: np.ndarray) -> torch.Tensor:
        """(U, C, H, W) grids of rows `index` as stored (float16: the solver converts them
        chunk by chunk), or float32 pooled if the grid name asks."""
        self._check_grid(fs)
        g = torch.from_numpy(np.ascontiguousarray(fs.grids[self.grid_name][index]))
        g = g.to(self.device)
        return pool_grid(g.float(), self.pool) if self.pool else g

    def grid_hw(self, fs: FeatureSet) -> tuple[int, int]:
        h, w = fs.grids[self.grid_name].shape[-2:]
        return (self.pool, self.pool) if self.pool else (int(h), int(w))

    # ---- pair scoring ---------------------------------------------------------------------

    def _pairs(self, qf: FeatureSet, qi: np.ndarray, cf: FeatureSet, ci: np.ndarray,
               with_flow: bool = False) -> tuple[torch.Tensor, ...]:
        """EMD similarity of pairs (qf[qi[b]], cf[ci[b]]) -> (B,) [+ flow, weights]."""
        q, q_inv = self._patches(qf, qi)  # (B, N, C), (B, N)
        c, c_inv = self._patches(cf, ci)  # (B, M, C), (B, M)
        _check_same_grid(q.shape[1:], c.shape[1:])
        cos = patch_cosine(q, c, q_inv, c_inv)  # (B, N, M)
        wq, wc = self._weights(q, c, cos, qf, qi, cf, ci)
        if with_flow:
            emd, plan = emd_similarity_from_cosine(cos, wq, wc, self.eps, self.max_iter,
                                                   return_flow=True)
            return emd, plan, wq, wc
        return (emd_similarity_from_cosine(cos, wq, wc, self.eps, self.max_iter),)

    def _weights(self, q: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, qf: FeatureSet,
                 qi: np.ndarray, cf: FeatureSet, ci: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Patch weights (B, N), (B, M) of pairs with patches q (B, N, C), c (B, M, C) and
        cosines cos (B, N, M)."""
        if self.weighting == "uniform":
            return W.uniform(q, c)
        if self.weighting == "apc":
            return W.apc(q, c)
        if self.weighting == "sc":
            return W.sc(cos)
        if self.weighting == "cc":
            qd = torch.from_numpy(qf.descriptors[qi]).float()
            cd = torch.from_numpy(cf.descriptors[ci]).float()
            return W.cc(q, c, qd, cd, self.fc_weight)
        hw = self.grid_hw(qf)
        return (W.landmark_density(_landmarks(qf, qi), hw, self.chip_size),
                W.landmark_density(_landmarks(cf, ci), hw, self.chip_size))

    def score_pairs(self, a: FeatureSet, b: FeatureSet) -> np.ndarray:
        """Blended score alpha * EMD + (1 - alpha) * cosine of pairs (a[i], b[i]) -> (P,).

        The gate is not used: it reads the shape of a ranked candidate list, which a pair lacks.
        """
        if len(a) != len(b):
            raise InputError(f"pair lists differ in length: {len(a)} vs {len(b)}")
        emd = np.zeros(len(a), dtype=np.float32)
        idx = np.arange(len(a))
        for s in range(0, len(a), self.chunk_pairs):
            sl = idx[s : s + self.chunk_pairs]
            emd[sl] = self._pairs(a, sl, b, sl)[0].numpy()
        cos = np.einsum("pd,pd->p", a.embeddings, b.embeddings)
        return self.alpha * emd + (1 - self.alpha) * cos

    def explain_pairs(self, a: FeatureSet, b: FeatureSet) -> PairFlows:
        """Scores, transport plans and weights of pairs (a[i], b[i]) (small batches)."""
        idx = np.arange(len(a))
        emd, plan, wq, wc = self._pairs(a, idx, b, idx, with_flow=True)
        cos = np.einsum("pd,pd->p", a.embeddings, b.embeddings)
        emd_np = emd.numpy()
        return PairFlows(emd_np, cos, self.alpha * emd_np + (1 - self.alpha) * cos,
                         plan.numpy(), wq.numpy(), wc.numpy(), self.grid_hw(a), self.alpha)

    # ---- re-ranking -----------------------------------------------------------------------

    def emd_scores(self, queries: FeatureSet, gallery: FeatureSet, cand: np.ndarray,
                   progress: bool = False) -> np.ndarray:
        """EMD similarity of each query with its candidates: cand (Q, k) -> (Q, k)."""
        n_q, k = cand.shape
        emd = np.zeros((n_q, k), dtype=np.float32)
        per_chunk = max(1, self.chunk_pairs // max(k, 1))
        with progress_bar(progress, f"Stage 2 {self.grid}/{self.weighting}", n_q) as advance:
            for s in range(0, n_q, per_chunk):
                rows = np.arange(s, min(n_q, s + per_chunk))
                emd[rows] = self._rerank_chunk(queries, rows, gallery, cand[rows])
                advance(len(rows))
        return emd

    def _rerank_chunk(self, qf: FeatureSet, rows: np.ndarray, gf: FeatureSet,
                      cand: np.ndarray) -> np.ndarray:
        """EMD of queries qf[rows] with their candidates gf[cand] (Q, k) -> (Q, k)."""
        n_q, k = cand.shape
        uniq, inverse = np.unique(cand, return_inverse=True)  # each candidate gathered once
        qg, cg = self._grids(qf, rows), self._grids(gf, uniq)  # (Q, C, H, W), (U, C, H, W)
        _check_same_grid(qg.shape[1:], cg.shape[1:])
        qw = cw = None  # uniform, or APC / SC computed in the solver's chunks from the cosines
        inv = torch.from_numpy(inverse.reshape(n_q, k))  # (Q, k) each pair's candidate of U
        if self.weighting == "lmk":  # one weighting per face, shared by its pairs
            qw = W.landmark_density(_landmarks(qf, rows), self.grid_hw(qf),
                                    self.chip_size)  # (Q, N)
            cw = W.landmark_density(_landmarks(gf, uniq), self.grid_hw(gf),
                                    self.chip_size)  # (U, M)
            qw, cw = qw.unsqueeze(1).expand(n_q, k, -1), cw[inv]
        elif self.weighting == "cc":  # each face projected once, then correlated per pair
            fc, dev = self.fc_weight.to(self.device), self.device
            qp = W.fc_project(grid_to_patches(qg.float()), fc)  # (Q, N, D)
            cp = W.fc_project(grid_to_patches(cg.float()), fc)  # (U, M, D)
            qd = torch.from_numpy(qf.descriptors[rows]).float().to(dev)  # (Q, D)
            cd = torch.from_numpy(gf.descriptors[uniq]).float().to(dev)  # (U, D)
            iv = inv.to(dev)
            qw, cw = W.cc_from_projected(qp.unsqueeze(1), cp[iv], qd.unsqueeze(1), cd[iv])
        in_chunks = self.weighting if self.weighting in ("apc", "sc") else None
        if qw is not None:
            qw, cw = qw.to(self.device), cw.to(self.device)
        return emd_rerank_scores(qg, cg, qw, cw, self.eps, self.max_iter,
                                 cand_index=inv.to(self.device),
                                 weighting=in_chunks).cpu().numpy()

    def topk_scores(self, queries: FeatureSet, gallery: FeatureSet, cand: np.ndarray,
                    progress: bool = False) -> np.ndarray:
        return self.emd_scores(queries, gallery, cand, progress)


def _landmarks(fs: FeatureSet, index: np.ndarray) -> torch.Tensor:
    """(B, 68, 2) chip-coordinate landmarks of rows `index`."""
    lm = fs.chip_landmarks68[index]
    if len(lm) and not np.isfinite(lm).any():
        raise InputError("the lmk weighting needs dlib's 68-point landmarks, and these faces were "
                         "extracted without them; use another --weighting (apc is the default)")
    return torch.from_numpy(lm).float()


def _check_same_grid(q_shape: tuple[int, ...], c_shape: tuple[int, ...]) -> None:
    if tuple(q_shape) != tuple(c_shape):
        raise InputError(f"query grid {tuple(q_shape)} and gallery grid {tuple(c_shape)} "
                         "differ; both must come from the same model")


@register_stage2("emd")
def _make(grid: str = "l2", weighting: str = "apc", alpha: float = 0.7, k: int = 100,
          gate: str | None = "auto", **kw: object) -> Stage2EMD:
    """The product's EMD re-ranker. gate: "auto" = the bundled gate fitted for this grid and
    weighting when one ships (else none), "none", "default", or a gate JSON file."""
    if gate == "auto":
        found = bundled_gate(grid, weighting, str(kw.get("backbone", "dlib")))
        gate = str(found) if found is not None else None
    elif gate == "none":
        gate = None
    return Stage2EMD(grid=grid, weighting=weighting, alpha=alpha, k=k, gate=gate,
                     **kw)  # type: ignore[arg-type]
