"""Patch weightings for EMD (DeepFace-EMD §3.1.5): the marginals of the transport problem.

All functions work on a batch of B (query, candidate) pairs and return non-negative weights
that sum to 1 per face: (B, N) for the query's N patches and (B, M) for the candidate's M.

- uniform: 1/N per patch (Eq. 3.6)
- apc:     ReLU(<q_i, mean_j g_j>) and ReLU(<g_j, mean_i q_i>)        (Eq. 3.7); from the
           patches (`apc`) or from their cosines and norms (`apc_from_cosine`)
- cc:      like APC, but each patch goes through the network's last linear layer and is
           correlated with the other face's descriptor (DIML's cross-correlation)
- sc:      ReLU(sum_j cos(q_i, g_j)) and ReLU(sum_i cos(q_i, g_j))     (Eq. 3.8)
- lmk:     density of the 68 dlib landmarks in each grid cell
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facerank.errors import InputError

WEIGHTINGS = ("uniform", "apc", "cc", "sc", "lmk")


def normalize_weights(w: torch.Tensor) -> torch.Tensor:
    """(..., N) non-negative -> rows summing to 1; an all-zero row becomes uniform."""
    w = w.clamp_min(0)
    total = w.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    return torch.where(total > 0, w / total.clamp_min(1e-30), uniform)


def uniform(q: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, N, C), c (B, M, C) -> (B, N), (B, M) equal weights."""
    b = q.shape[0]
    return (torch.full((b, q.shape[1]), 1.0 / q.shape[1], dtype=q.dtype),
            torch.full((b, c.shape[1]), 1.0 / c.shape[1], dtype=c.dtype))


def apc(q: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pooling correlation: each patch against the other face's mean patch."""
    wq = torch.einsum("bnc,bc->bn", q, c.mean(dim=1))
    wc = torch.einsum("bmc,bc->bm", c, q.mean(dim=1))
    return normalize_weights(wq), normalize_weights(wc)


def cc(q: torch.Tensor, c: torch.Tensor, q_desc: torch.Tensor, c_desc: torch.Tensor,
       fc_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-correlation through the last linear layer.

    q_desc, c_desc (B, D): the two faces' descriptors; fc_weight (C_fc, D).
    """
    return cc_from_projected(fc_project(q, fc_weight), fc_project(c, fc_weight), q_desc, c_desc)


def fc_project(patches: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """(..., N, C) patches -> (..., N, D) through the last linear layer fc_weight (C_fc, D).

    Patches with fewer channels than C_fc are zero-padded, as the network's own skip path
    pads them.
    """
    c_fc = fc_weight.shape[0]
    if patches.shape[-1] > c_fc:
        raise InputError(f"patches have {patches.shape[-1]} channels, more than the last "
                         f"linear layer's {c_fc} inputs; CC weighting cannot project them")
    return F.pad(patches, (0, c_fc - patches.shape[-1])) @ fc_weight


def cc_from_projected(qp: torch.Tensor, cp: torch.Tensor, q_desc: torch.Tensor,
                      c_desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cc` from projected patches qp (..., N, D), cp (..., M, D) and descriptors (..., D).

    Leading dims broadcast: a query's projections (Q, 1, N, D) serve its K candidates.
    """
    wq = torch.einsum("...nd,...d->...n", qp, c_desc)
    wc = torch.einsum("...md,...d->...m", cp, q_desc)
    return normalize_weights(wq), normalize_weights(wc)


def sc(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial correlation from the patch cosine matrix (B, N, M) = 1 - cost."""
    return normalize_weights(similarity.sum(dim=2)), normalize_weights(similarity.sum(dim=1))


def apc_from_cosine(similarity: torch.Tensor, q_norm: torch.Tensor,
                    c_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`apc` from the patch cosines (B, N, M) and the patch norms q_norm (B, N), c_norm (B, M).

    <q_i, mean_j g_j> = |q_i| * sum_j cos(q_i, g_j) * |g_j| / M, likewise for g_j: the
    weights come from two matrix-vector products instead of the patches themselves.
    """
    wq = torch.bmm(similarity, c_norm.unsqueeze(2)).squeeze(2) * q_norm  # (B, N)
    wc = torch.bmm(q_norm.unsqueeze(1), similarity).squeeze(1) * c_norm  # (B, M)
    return normalize_weights(wq), normalize_weights(wc)


def landmark_density(landmarks: torch.Tensor, grid: tuple[int, int], chip_size: int = 150,
                     floor: float = 1e-3) -> torch.Tensor:
    """(B, 68, 2) chip-coordinate landmarks -> (B, H*W) share of landmarks per grid cell.

    Landmarks off the chip are not counted. `floor` (a fraction of one landmark) keeps empty
    cells from getting exactly zero mass, so the transport problem stays well posed; NaN
    landmarks (not computed) give uniform weights.
    """
    h, w = grid
    b = landmarks.shape[0]
    inside = (landmarks >= 0) & (landmarks < chip_size)  # NaN compares False
    ok = inside.all(dim=2)  # (B, 68): finite and on the chip
    col = (landmarks[..., 0] / chip_size * w).floor().clamp(0, w - 1).nan_to_num(0)
    row = (landmarks[..., 1] / chip_size * h).floor().clamp(0, h - 1).nan_to_num(0)
    cell = torch.where(ok, row * w + col, torch.zeros_like(col)).long()  # (B, 68)
    counts = torch.zeros(b, h * w, dtype=torch.float32)
    counts.scatter_add_(1, cell, ok.float())
    has_any = torch.isfinite(landmarks).all(dim=2).any(dim=1, keepdim=True).float()
    return normalize_weights(counts + floor * has_any)
