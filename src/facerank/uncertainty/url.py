"""URL (Shi et al., "Towards Universal Representation Learning for Deep Face Recognition"):
confidence-aware sub-embeddings as a head on the frozen backbone.

The head maps a face's backbone features -- the (D,) descriptor (its direction and the log of
its length) and, when the checkpoint uses it, the `l1` grid (C, H, W) through a 1x1 conv -- via
a 2-layer MLP to K unit sub-embeddings f^(k) (K x width/K) and K positive confidences
s^(k) = exp(.) (supplement B: one FC branch each, `exp` keeps s > 0).  Every input size is read
from the features and stored in the checkpoint, so any backbone can have its own head.

Training (supplement A):
    a_ij   = (1/K) sum_k s_i^(k) w_j^(k)T f_i^(k)                       (Eq. 24, averaged: Eq. 8)
    L_idt  = -log exp(a_iy - m) / (exp(a_iy - m) + sum_{j != y} exp(a_ij))
so d L / d w_j^(k) = s_i^(k)/K (p_ij - delta) f_i^(k) and d L / d f_i^(k) =
s_i^(k)/K ((p_iy - 1) w_y^(k) + sum_{j != y} p_ij w_j^(k)) (Eq. 26; the 1/K is the average of
Eq. 8): a sub-embedding's confidence gates every gradient it sends and receives.  The scale is
the confidence itself (no fixed s), the margin m is additive on the true-class logit.
    L_var  = sum_t CE(C_t(V_t), u_t) + lambda_adv * sum_t sum_{t' != t} CE(C_t(V_t'), uniform)
(variation decorrelation: partition t of the sub-embeddings predicts variation t, the other
partitions are pushed to say nothing about it; the adversarial term trains the features only).

Matching (main paper Sec. 3.4): score(i, j) = sum_k s_i^k s_j^k cos(f_i^k, f_j^k) /
sum_k s_i^k s_j^k, which is (A_i . A_j) / (s_i . s_j) with A = s (x) f flattened -- two matrix
products, no (Q, G, K) tensor.  A face's one-number confidence is the mean of its K values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerank.errors import InputError

KIND = "url"
#: Variation tasks of the decorrelation loss and their classes (`uncertainty.variations`).
DEFAULT_VARIATIONS: dict[str, int] = {"resolution": 2, "blur": 2, "jpeg": 2, "occlusion": 4,
                                      "pose": 3}


@dataclass
class URLConfig:
    """Shapes of a URL head; recorded in the checkpoint JSON, so a head rebuilds from it."""

    desc_dim: int  # D of the backbone descriptor (128 for dlib, read from the features)
    grid: str | None = "l1"  # grid the head reads besides the descriptor (None: descriptor only)
    grid_shape: tuple[int, int, int] | None = (256, 4, 4)  # (C, H, W) of that grid
    k: int = 16  # number of sub-embeddings
    width: int = 512  # total embedding width, K * (width / K)
    hidden: int = 256
    grid_channels: int = 32  # 1x1 conv reduction of the grid before the trunk
    log_conf_init: float = float(np.log(16.0))  # exp(bias) = initial confidence
    variations: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_VARIATIONS))

    def __post_init__(self) -> None:
        if self.k < 1 or self.width % self.k:
            raise InputError(f"URL width {self.width} must be a positive multiple of K={self.k}")
        if self.grid is not None and (self.grid_shape is None or len(self.grid_shape) != 3):
            raise InputError(f"URL grid {self.grid!r} needs its (C, H, W) shape")
        if self.grid_shape is not None:
            self.grid_shape = tuple(int(v) for v in self.grid_shape)  # JSON gives lists

    @property
    def sub_dim(self) -> int:
        return self.width // self.k

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> URLConfig:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})


class URLHead(nn.Module):
    """Features -> (sub-embeddings (N, K, d) unit, confidences (N, K) > 0)."""

    def __init__(self, config: URLConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        grid_feats = 0
        if c.grid is not None:
            gc, gh, gw = c.grid_shape  # type: ignore[misc]
            self.reduce = nn.Conv2d(gc, c.grid_channels, 1)
            grid_feats = c.grid_channels * gh * gw
        self.trunk = nn.Sequential(nn.Linear(c.desc_dim + 1 + grid_feats, c.hidden), nn.ReLU(),
                                   nn.Linear(c.hidden, c.hidden), nn.ReLU())
        self.embed = nn.Linear(c.hidden + c.desc_dim, c.width)
        self.conf = nn.Linear(c.hidden, c.k)
        with torch.no_grad():
            self.conf.weight.mul_(0.1)
            self.conf.bias.fill_(c.log_conf_init)

    def forward(self, desc: torch.Tensor, grid: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """desc (N, D) raw descriptors, grid (N, C, H, W) -> f (N, K, d) unit, s (N, K) > 0."""
        c = self.config
        x = F.normalize(desc, dim=1) * np.sqrt(c.desc_dim)  # unit-variance-ish per coordinate
        # the descriptor's length is a quality cue of its own (a baseline in benchmarks.url)
        parts = [x, torch.log(desc.norm(dim=1, keepdim=True).clamp_min(1e-6))]
        if c.grid is not None:
            parts.append(F.relu(self.reduce(grid)).flatten(1))
        h = self.trunk(torch.cat(parts, 1))
        f = self.embed(torch.cat([h, x], 1)).view(-1, c.k, c.sub_dim)
        log_s = self.conf(h).clamp(-10.0, 10.0)  # exp() of a bounded value: finite, > 0
        return F.normalize(f, dim=2), torch.exp(log_s)


# ---- losses --------------------------------------------------------------------------------


def url_logits(f: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a_ij = (1/K) sum_k s_i^k w_j^kT f_i^k.  f (N, K, d), s (N, K), w (C, K, d) -> (N, C)."""
    return torch.einsum("nk,nkd,ckd->nc", s, f, w) / f.shape[1]


def identification_loss(f: torch.Tensor, s: torch.Tensor, w: torch.Tensor, y: torch.Tensor,
                        margin: float) -> torch.Tensor:
    """Confidence-aware identification loss (Eq. 8 / 24), mean over the batch.

    f (N, K, d) and w (C, K, d) unit sub-embeddings and prototypes, s (N, K) confidences,
    y (N,) class indices, margin m subtracted from the true-class logit.
    """
    a = url_logits(f, s, w)  # (N, C)
    a = a - margin * F.one_hot(y, a.shape[1]).to(a.dtype)
    return F.cross_entropy(a, y)


def decorrelation_loss(f: torch.Tensor, labels: dict[str, torch.Tensor],
                       classifiers: nn.ModuleDict, adv_weight: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_cls, L_adv) of the variation decorrelation loss.

    f (N, K, d); labels {variation: (N,) class index, -1 = unknown (ignored)}; classifiers
    {variation: Linear(d -> classes)}.  The K sub-embeddings are split into len(classifiers)
    contiguous partitions (16 into 5: 4+3+3+3+3); classifier t reads the mean sub-embedding of a
    partition, so it applies to every partition whatever its size.  L_cls: partition t predicts
    variation t.  L_adv: every other partition's prediction of variation t against the uniform
    distribution, with the classifier's weights detached (it shapes the features only).
    """
    names = list(classifiers)
    parts = [p.mean(dim=1) for p in torch.tensor_split(f, len(names), dim=1)]  # each (N, d)
    cls = f.new_zeros(())
    adv = f.new_zeros(())
    for t, name in enumerate(names):
        clf = classifiers[name]
        y = labels[name]
        keep = y >= 0
        if keep.any():
            cls = cls + F.cross_entropy(clf(parts[t][keep]), y[keep])
        for u, part in enumerate(parts):
            if u != t:
                logp = F.log_softmax(F.linear(part, clf.weight.detach(), clf.bias.detach()), 1)
                adv = adv - logp.mean()
    return cls, adv_weight * adv


def variation_classifiers(config: URLConfig) -> nn.ModuleDict:
    """One linear classifier (d -> classes) per variation."""
    return nn.ModuleDict({name: nn.Linear(config.sub_dim, classes)
                          for name, classes in config.variations.items()})


# ---- matching and confidence ---------------------------------------------------------------


def match_scores(fq: np.ndarray, sq: np.ndarray, fg: np.ndarray, sg: np.ndarray) -> np.ndarray:
    """Confidence-weighted averaged score (Q, G): sum_k w_k cos(f_q^k, f_g^k), w ~ s_q^k s_g^k.

    fq (Q, K, d), sq (Q, K), fg (G, K, d), sg (G, K); sub-embeddings unit length.
    """
    aq = (fq * sq[:, :, None]).reshape(len(fq), -1)
    ag = (fg * sg[:, :, None]).reshape(len(fg), -1)
    return (aq @ ag.T) / np.maximum(sq @ sg.T, 1e-12)


def face_confidence(s: np.ndarray) -> np.ndarray:
    """One number per face: the mean of its K confidences.  s (N, K) -> (N,)."""
    return s.mean(axis=1)


@dataclass
class URLOutput:
    """Sub-embeddings (N, K, d), confidences (N, K) and one confidence per face (N,)."""

    sub: np.ndarray
    conf: np.ndarray
    face: np.ndarray


def check_inputs(config: URLConfig, desc: np.ndarray, grid: np.ndarray | None,
                 where: str = "URL") -> None:
    """InputError naming the first wrong shape or non-finite face."""
    desc = np.asarray(desc)
    if desc.ndim != 2 or desc.shape[1] != config.desc_dim:
        raise InputError(f"{where}: descriptors must be (N, {config.desc_dim}) for this head, "
                         f"got {desc.shape}; was the checkpoint trained on another backbone?")
    bad = ~np.isfinite(desc).all(axis=1)
    if config.grid is not None:
        if grid is None:
            raise InputError(f"{where}: this head reads the {config.grid!r} grid, which the "
                             "features do not have; extract with that grid kept")
        grid = np.asarray(grid)
        want = (len(desc), *config.grid_shape)  # type: ignore[misc]
        if grid.shape != want:
            raise InputError(f"{where}: grid {config.grid!r} must be {want}, got {grid.shape}")
        bad |= ~np.isfinite(grid.reshape(len(grid), -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: face {i} has NaN/inf features ({int(bad.sum())} face(s)); "
                         "re-extract them")


@torch.no_grad()
def run_head(head: URLHead, desc: np.ndarray, grid: np.ndarray | None = None,
             batch: int = 4096) -> URLOutput:
    """The head on N faces' cached features (checked first), in batches, float32 on CPU."""
    check_inputs(head.config, desc, grid)
    head.eval()
    subs, confs = [], []
    for start in range(0, len(desc), batch):
        d = torch.from_numpy(np.asarray(desc[start : start + batch], np.float32))
        g = None if grid is None or head.config.grid is None else torch.from_numpy(
            np.asarray(grid[start : start + batch], np.float32))
        f, s = head(d, g)
        subs.append(f.numpy())
        confs.append(s.numpy())
    c = head.config
    sub = np.concatenate(subs) if subs else np.zeros((0, c.k, c.sub_dim), np.float32)
    conf = np.concatenate(confs) if confs else np.zeros((0, c.k), np.float32)
    return URLOutput(sub, conf, face_confidence(conf))
