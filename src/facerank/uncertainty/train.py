"""`facerank train url`: the URL head on LFW's identity-disjoint training half.

Samples are the training identities' images, clean and edited (crop, mask, sunglasses from the
shared harness; lowres, blur, jpeg added by URL), all as cached backbone features
(`facerank.train.data.load_training_data`).  Every edited copy keeps its identity, so the
one-image people of LFW become classes with several samples.  The backbone stays frozen; the
head, the class prototypes and the variation classifiers train with Adam, seeded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerank._util.progress import progress_bar
from facerank.errors import InputError
from facerank.uncertainty.url import (
    URLConfig,
    URLHead,
    decorrelation_loss,
    identification_loss,
    variation_classifiers,
)
from facerank.uncertainty.variations import labels_for, pose_bins

EDITS = ("crop", "mask", "sunglasses", "lowres", "blur", "jpeg")
MARGIN = 5.0  # additive logit margin of Eq. 8 (confidences start at 16: ~0.3 in cosine units)


@dataclass
class Samples:
    """M training samples: features, class index and variation labels."""

    desc: np.ndarray  # (M, D) float32
    grid: np.ndarray | None  # (M, C, H, W) float16
    y: np.ndarray  # (M,) int64 class index 0..C-1
    variations: dict[str, np.ndarray]  # name -> (M,) int64, -1 unknown
    kinds: np.ndarray  # (M,) str, "clean" or the edit

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class URLData:
    """Clean features of all LFW images and edited copies of some (`rows[kind]`: LFW image
    index of each row of `variants[kind]`)."""

    data: Any  # facerank.eval.protocols.EvalData
    variants: dict[str, Any]  # kind -> FeatureSet
    rows: dict[str, np.ndarray]  # kind -> (M_kind,) LFW image indices
    labels: np.ndarray  # (N,) identity of each LFW image
    fold: np.ndarray  # (N,) bool identity fold
    describe: dict[str, Any]


def edit_subsets(n_images: int, kinds: tuple[str, ...], per_edit: int | None, seed: int = 1
                 ) -> dict[str, np.ndarray]:
    """LFW image indices edited per kind: all images (per_edit None) or disjoint seeded
    subsets of per_edit images each, so the edits together cover more people.  A kind's
    subset depends on its place in EDITS only, not on which other kinds are asked for, so
    cached edits are shared between runs with different `--edits`."""
    if per_edit is None:
        return {k: np.arange(n_images, dtype=np.int64) for k in kinds}
    if per_edit < 1 or per_edit * len(EDITS) > n_images:
        raise InputError(f"--per-edit {per_edit}: need 1 <= per-edit <= {n_images // len(EDITS)}")
    perm = np.random.default_rng(seed).permutation(n_images)
    slot = {k: i for i, k in enumerate(EDITS)}
    return {k: np.sort(perm[slot[k] * per_edit : (slot[k] + 1) * per_edit]) for k in kinds}


def load_url_data(kinds: tuple[str, ...], per_edit: int | None = None, split_seed: int = 0,
                  variant_seed: int = 1, progress: bool = True, backbone: str = "dlib"
                  ) -> URLData:
    """Cached features of `backbone` ("dlib" or "sface") for URL training.  per_edit None:
    the shared harness's full variant sets (`load_training_data`); otherwise `edit_subsets`
    through the same cached builder (`occluded_queries`, training seed 1), which is what a
    shared 2-core machine affords."""
    from facerank.eval.protocols import EvalData, lfw_extractor, occluded_queries
    from facerank.train.data import load_training_data
    from facerank.train.split import identity_fold

    if per_edit is None:
        td = load_training_data(lfw_extractor(backbone=backbone), kinds=kinds,
                                split_seed=split_seed, variant_seed=variant_seed,
                                progress=progress)
        n = len(td.labels)
        return URLData(td.data, td.variants, edit_subsets(n, kinds, None), td.labels, td.fold,
                       {**td.describe(), "per_edit": None})
    data = EvalData.load(lfw_extractor(backbone=backbone), progress=progress)
    rows = edit_subsets(len(data.lfw), kinds, per_edit, variant_seed)
    variants = {k: occluded_queries(data, k, rows[k], variant_seed, progress) for k in kinds}
    labels = data.lfw.labels
    return URLData(data, variants, rows, labels, identity_fold(labels, split_seed),
                   {"variants": sorted(kinds), "variant_seed": variant_seed,
                    "split_seed": split_seed, "backbone": data.extractor.model_id,
                    "per_edit": per_edit,
                    "subsets": "facerank.uncertainty.train.edit_subsets(13233, kinds, per_edit, "
                               "variant_seed)"})


def build_samples(ud: URLData, train_fold: bool, grid: str | None) -> Samples:
    """Clean + edited samples of the `train_fold` identities (labels remapped to 0..C-1)."""
    train = np.flatnonzero(ud.fold == train_fold)
    people, y_all = np.unique(ud.labels[train], return_inverse=True)
    y_of = np.full(len(ud.labels), -1, np.int64)
    y_of[train] = y_all
    clean = ud.data.features
    pose_all = pose_bins(clean.chip_landmarks68)  # (N,) pose of each clean LFW image
    sets = [("clean", clean, np.arange(len(ud.labels)))]
    sets += [(k, ud.variants[k], ud.rows[k]) for k in ud.variants]
    desc, grids, ys, kinds = [], [], [], []
    var: dict[str, list[np.ndarray]] = {}
    for kind, fs, img in sets:
        keep = np.flatnonzero(ud.fold[img] == train_fold)  # rows of this set to train on
        desc.append(fs.descriptors[keep].astype(np.float32))
        if grid is not None:
            grids.append(fs.grids[grid][keep])
        ys.append(y_of[img[keep]])
        kinds.append(np.full(len(keep), kind))
        for name, lab in labels_for(kind, pose_all[img[keep]]).items():
            var.setdefault(name, []).append(lab)
    return Samples(np.concatenate(desc), np.concatenate(grids) if grid is not None else None,
                   np.concatenate(ys).astype(np.int64), {k: np.concatenate(v)
                                                         for k, v in var.items()},
                   np.concatenate(kinds))


class URLTrainer(nn.Module):
    """The head plus what only training needs: prototypes (C, K, d) and variation classifiers."""

    def __init__(self, config: URLConfig, classes: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.head = URLHead(config)
        self.prototypes = nn.Parameter(torch.randn(classes, config.k, config.sub_dim))
        self.classifiers = variation_classifiers(config)

    def losses(self, desc: torch.Tensor, grid: torch.Tensor | None, y: torch.Tensor,
               var: dict[str, torch.Tensor], margin: float, adv_weight: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f, s = self.head(desc, grid)
        w = F.normalize(self.prototypes, dim=2)
        idt = identification_loss(f, s, w, y, margin)
        cls, adv = decorrelation_loss(f, var, self.classifiers, adv_weight)
        return idt, cls, adv


def train_url(samples: Samples, config: URLConfig, epochs: int = 6, batch: int = 256,
              lr: float = 2e-3, margin: float = MARGIN, var_weight: float = 0.1,
              adv_weight: float = 0.1, seed: int = 0, progress: bool = True
              ) -> tuple[URLHead, dict[str, Any]]:
    """Train on `samples`; returns the head and the per-epoch mean losses."""
    if len(samples) == 0:
        raise InputError("URL training needs at least one sample")
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster than two contended
    classes = int(samples.y.max()) + 1
    model = URLTrainer(config, classes, seed)
    opt = torch.optim.Adam([{"params": model.head.parameters(), "weight_decay": 1e-5},
                            {"params": [model.prototypes], "lr": lr * 5},
                            {"params": model.classifiers.parameters()}], lr=lr)
    rng = np.random.default_rng(seed)
    steps = epochs * int(np.ceil(len(samples) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr * 5, lr], total_steps=steps,
                                                pct_start=0.1)
    history: dict[str, list[float]] = {"identification": [], "variation": [], "adversarial": []}
    t0 = time.perf_counter()
    model.train()
    with progress_bar(progress, "URL training", steps) as advance:
        for _ in range(epochs):
            order = rng.permutation(len(samples))
            sums = np.zeros(3)
            for start in range(0, len(order), batch):
                i = np.sort(order[start : start + batch])
                d = torch.from_numpy(samples.desc[i])
                g = None if samples.grid is None else torch.from_numpy(
                    samples.grid[i].astype(np.float32))
                var = {k: torch.from_numpy(v[i]) for k, v in samples.variations.items()}
                idt, cls, adv = model.losses(d, g, torch.from_numpy(samples.y[i]), var, margin,
                                             adv_weight)
                loss = idt + var_weight * (cls + adv)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                sums += [idt.item() * len(i), cls.item() * len(i), adv.item() * len(i)]
                advance()
            for name, v in zip(history, sums / len(samples), strict=True):
                history[name].append(float(v))
    model.eval()
    return model.head, {"history": history, "seconds": time.perf_counter() - t0,
                        "classes": classes, "samples": len(samples), "epochs": epochs,
                        "batch": batch, "lr": lr, "margin": margin, "var_weight": var_weight,
                        "adv_weight": adv_weight}


def default_config(ud: URLData, grid: str | None, k: int, width: int) -> URLConfig:
    """A config whose input shapes come from the features (any backbone)."""
    fs = ud.data.features
    if grid is not None and grid not in fs.grids:
        raise InputError(f"the features have no {grid!r} grid; choose from {sorted(fs.grids)}")
    shape = tuple(int(v) for v in fs.grids[grid].shape[1:]) if grid is not None else None
    return URLConfig(desc_dim=int(fs.descriptors.shape[1]), grid=grid, grid_shape=shape, k=k,
                     width=width)
