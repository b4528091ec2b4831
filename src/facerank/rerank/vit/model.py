"""Face-ViT: a small hybrid transformer on the frozen backbone's patch grids (the seeds' H2L).

Two faces' grids (N = H*W patches of C channels each, e.g. dlib `l2` 8x8x128) become one
token sequence

    z0 = [CLS, x1_1 .. x1_N, SEP, x2_1 .. x2_N] + E_pos + E_seg        (Face-ViT Eq. 4.1)

(x = Linear(LayerNorm(patch)), width d), go through `depth` pre-norm transformer blocks
(self-attention over both faces = cross-image attention), and then

    H2L:  f1 = LayerNorm(Linear_1(z_L^1)), f2 = LayerNorm(Linear_2(z_L^2)), score = cos(f1, f2)
          (Eq. 4.5-4.6; z_L^i is face i's N output tokens, flattened; trained with ArcFace)
    H2:   score from the [CLS] output (one logit, trained with binary cross-entropy)
    H1:   the 1-image ablation: [CLS, x_1 .. x_N] of one face -> embedding, score = cosine
    C:    the backbone's own cosine (Stage 1; no model)

The blocks use the usual pre-norm residual form (z' = z + MSA(LN z), z = z' + MLP(LN z')),
which is what Eqs. 4.2-4.3 abbreviate. H2L and H2 are not symmetric in their two faces
(separate Linear_1 / Linear_2 and segment embeddings): re-ranking always puts the query first,
as in training; `ViTScorer.score_pairs` (verification) averages both orders, so its scores are
symmetric.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facerank.errors import InputError

VARIANTS = ("h2l", "h2", "h1")


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a Face-ViT; everything a checkpoint needs to rebuild the module."""

    variant: str = "h2l"
    in_channels: int = 128  # C of the grid
    grid_h: int = 8
    grid_w: int = 8
    width: int = 64  # d
    depth: int = 1
    heads: int = 4
    mlp_ratio: int = 2
    embed_dim: int = 128  # size of f1, f2 (H2L) or the H1 embedding
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"unknown Face-ViT variant {self.variant!r}; choose from "
                             f"{', '.join(VARIANTS)}")
        if not (1 <= self.depth <= 8 and 1 <= self.heads <= 8):
            raise InputError(f"depth and heads must be in 1..8, got {self.depth}, {self.heads}")
        if self.width % self.heads:
            raise InputError(f"width {self.width} is not divisible by {self.heads} heads")
        if min(self.in_channels, self.grid_h, self.grid_w, self.width, self.embed_dim) < 1:
            raise InputError(f"Face-ViT shapes must be positive, got {self}")

    @property
    def n_patches(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def two_image(self) -> bool:
        return self.variant != "h1"

    @property
    def n_tokens(self) -> int:
        return 2 * self.n_patches + 2 if self.two_image else self.n_patches + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown Face-ViT config keys {unknown}")
        return cls(**d)


class Block(nn.Module):
    """Pre-norm transformer block; keeps its attention map when asked (for explanations)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(mlp_ratio * width, width))
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout
        self.attn: torch.Tensor | None = None  # (B, heads, T, T) when kept

    def forward(self, x: torch.Tensor, keep_attn: bool = False) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, d)
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d/heads)
        if keep_attn:
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
            if attn.requires_grad:
                attn.retain_grad()
            self.attn = attn
            o = attn @ v
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(o.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class FaceViT(nn.Module):
    """Hybrid ViT on CNN patch tokens; `ViTConfig.variant` picks H2L, H2 or H1."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.width, cfg.n_patches
        self.norm_in = nn.LayerNorm(cfg.in_channels)
        self.embed = nn.Linear(cfg.in_channels, d)  # E
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, cfg.n_tokens, d) * 0.02)  # E_pos
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        if cfg.two_image:
            self.sep = nn.Parameter(torch.zeros(1, 1, d))
            self.seg = nn.Parameter(torch.randn(2, d) * 0.02)  # segment embeddings
            seg_ids = torch.cat([torch.zeros(n + 1), torch.ones(n + 1)]).long()
            self.register_buffer("seg_ids", seg_ids, persistent=False)  # (T,)
        if cfg.variant == "h2l":
            self.head1 = nn.Linear(n * d, cfg.embed_dim)  # Linear_1
            self.head2 = nn.Linear(n * d, cfg.embed_dim)  # Linear_2
            self.ln_f1 = nn.LayerNorm(cfg.embed_dim)
            self.ln_f2 = nn.LayerNorm(cfg.embed_dim)
        elif cfg.variant == "h2":
            self.head = nn.Linear(d, 1)
        else:
            self.head = nn.Linear(d, cfg.embed_dim)
            self.ln_f = nn.LayerNorm(cfg.embed_dim)

    # ---- inputs ---------------------------------------------------------------------------

    def check_grids(self, grids: torch.Tensor) -> None:
        want = (self.cfg.in_channels, self.cfg.grid_h, self.cfg.grid_w)
        if grids.dim() != 4 or tuple(grids.shape[1:]) != want:
            raise InputError(f"Face-ViT expects (B, {want[0]}, {want[1]}, {want[2]}) grids, got "
                             f"{tuple(grids.shape)}; use the grid and backbone it was trained on")

    def tokens(self, grids: torch.Tensor) -> torch.Tensor:
        """grids (B, C, H, W) -> patch tokens (B, N, d); computed once per face."""
        self.check_grids(grids)
        x = grids.to(self.norm_in.weight.dtype).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.embed(self.norm_in(x))

    # ---- encoder --------------------------------------------------------------------------

    def encode(self, ta: torch.Tensor, tb: torch.Tensor | None = None,
               keep_attn: bool = False) -> torch.Tensor:
        """Tokens (B, N, d) of one face (H1) or two (H2, H2L) -> output tokens (B, T, d)."""
        b = ta.shape[0]
        parts = [self.cls.expand(b, -1, -1), ta]
        if self.cfg.two_image:
            if tb is None:
                raise InputError("a 2-image Face-ViT needs both faces' tokens")
            parts += [self.sep.expand(b, -1, -1), tb]
        z = torch.cat(parts, dim=1) + self.pos  # (B, T, d)
        if self.cfg.two_image:
            z = z + self.seg[self.seg_ids]
        for blk in self.blocks:
            z = blk(z, keep_attn)
        return self.norm(z)

    def pair_outputs(self, ta: torch.Tensor, tb: torch.Tensor, keep_attn: bool = False
                     ) -> tuple[torch.Tensor, ...]:
        """H2L: (f1, f2) unit vectors (B, e) each; H2: (logit (B,),); H1: (e1, e2)."""
        n = self.cfg.n_patches
        if self.cfg.variant == "h1":
            return self.embed_one(ta, keep_attn), self.embed_one(tb, keep_attn)
        z = self.encode(ta, tb, keep_attn)  # (B, 2N+2, d)
        if self.cfg.variant == "h2":
            return (self.head(z[:, 0]).squeeze(1),)
        f1 = self.ln_f1(self.head1(z[:, 1 : n + 1].flatten(1)))
        f2 = self.ln_f2(self.head2(z[:, n + 2 :].flatten(1)))
        return F.normalize(f1, dim=1), F.normalize(f2, dim=1)

    def embed_one(self, t: torch.Tensor, keep_attn: bool = False) -> torch.Tensor:
        """H1: one face's tokens (B, N, d) -> unit embedding (B, e)."""
        z = self.encode(t, None, keep_attn)
        return F.normalize(self.ln_f(self.head(z[:, 0])), dim=1)

    def pair_score(self, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        """(B,) similarity in [-1, 1] of pairs of token sets (face a first)."""
        out = self.pair_outputs(ta, tb)
        if self.cfg.variant == "h2":
            return torch.tanh(out[0] / 2)  # = 2 * sigmoid(logit) - 1
        return (out[0] * out[1]).sum(dim=1)


def arcface_logits(emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   s: float = 30.0, m: float = 0.5) -> torch.Tensor:
    """ArcFace (additive angular margin) logits: emb (B, e) unit, weight (K, e), labels (B,).

    cos(theta + m) for the true class where theta + m < pi, else cos(theta) - m sin(m)
    (the usual fallback that keeps the logit monotonic), all scaled by s.
    """
    cos = F.linear(emb, F.normalize(weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)  # (B, K)
    target = cos.gather(1, labels[:, None])
    sin = torch.sqrt(1.0 - target * target)
    phi = target * math.cos(m) - sin * math.sin(m)
    phi = torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)
    return s * cos.scatter(1, labels[:, None], phi)
