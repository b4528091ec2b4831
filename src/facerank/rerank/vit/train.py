"""`facerank train vit`: train a Face-ViT (H2L, H2 or H1) on one identity half of LFW.

Backbone frozen: the inputs are the cached grids of `facerank.train.data` (every LFW image
clean plus seeded crop / mask / sunglasses variants). People of the training half are split
once more (seeded): 85 % train the model, 15 % (only people with >= 2 images) are held out to
report a verification number per epoch and to fit, after training, the Stage-2 blend alpha
and the quality gate. The other identity half is never touched (it is the benchmark's).

Pairs (re-drawn each epoch, seeded): for every training image, one positive and one
negative pair (face a, face b). Face a is the image clean (40 %) or one of its three variants;
face b is a clean image, as a gallery face is: for a positive another image of the person
(the same image when the person has one, then face a is a variant); for a negative, half the
time one of the image's 10 nearest other-person neighbours by backbone cosine (the candidates
Stage 2 must tell apart), else a random other person. The training half's one-image people
are classes too.

Losses (Face-ViT Sec. 4.2): H2L: ArcFace (s = 30, m = 0.5) on f1 with face a's identity
plus on f2 with face b's; H1: ArcFace on each face's embedding; H2: binary cross-entropy of the
[CLS] logit on same / different.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facerank.errors import InputError
from facerank.eval import metrics
from facerank.face.features import FeatureSet
from facerank.ranking import cosine_topk
from facerank.rerank.emd.reranker import parse_grid
from facerank.rerank.emd.solver import pool_grid
from facerank.rerank.gate import QualityGate
from facerank.rerank.vit.model import FaceViT, ViTConfig, arcface_logits

VARIANT_ORDER = ("crop", "mask", "sunglasses")
KINDS = ("clean", *VARIANT_ORDER)
CLEAN_SHARE = 0.4  # share of clean faces a in training pairs
VAL_SHARE = 0.15  # training-half people (>= 2 images) held out for alpha / gate / progress
ALPHAS = tuple(np.round(np.arange(0.0, 1.0001, 0.1), 2))


@dataclass
class PairBatch:
    """Indices of B pairs into a (R, kinds) table of grids, and their labels."""

    row_a: np.ndarray  # (B,) row of face a
    kind_a: np.ndarray  # (B,) kind of face a (0 = clean)
    row_b: np.ndarray  # (B,) row of face b (always clean)
    same: np.ndarray  # (B,) bool


def val_people(labels: np.ndarray, seed: int) -> np.ndarray:
    """(N,) bool: rows of the held-out people (VAL_SHARE of the people with >= 2 images)."""
    people, counts = np.unique(labels, return_counts=True)
    multi = people[counts >= 2]
    rng = np.random.default_rng(seed + 1000)
    held = rng.permutation(multi)[: max(1, int(round(VAL_SHARE * len(multi))))]
    return np.isin(labels, held)


def hard_negatives(emb: np.ndarray, labels: np.ndarray, n: int = 10) -> np.ndarray:
    """(R, n) the n nearest rows of other people by cosine of embeddings emb (R, D)."""
    out = np.zeros((len(emb), n), dtype=np.int64)
    for s in range(0, len(emb), 1024):
        sims = emb[s : s + 1024] @ emb.T  # (b, R)
        sims[labels[s : s + 1024, None] == labels[None, :]] = -np.inf
        out[s : s + 1024] = np.argpartition(-sims, n, axis=1)[:, :n]
    return out


def draw_pairs(labels: np.ndarray, neighbours: np.ndarray, rng: np.random.Generator,
               n_kinds: int = len(KINDS)) -> PairBatch:
    """One positive and one negative pair per row, shuffled (see the module docstring)."""
    r = len(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    start = np.searchsorted(sorted_labels, labels, side="left")
    count = np.searchsorted(sorted_labels, labels, side="right") - start  # (R,) images of person
    rows = np.arange(r)
    # positives: another image of the person (uniform among the others), else the same image
    pos_in_group = np.empty(r, dtype=np.int64)
    pos_in_group[order] = np.arange(r)
    pos_in_group -= start  # (R,) each row's place among its person's images
    off = rng.integers(0, np.maximum(count - 1, 1))
    off = np.where((count > 1) & (off >= pos_in_group), off + 1, off)
    partner = np.where(count > 1, order[start + off], rows)
    kind_pos = np.where(rng.random(r) < CLEAN_SHARE, 0, rng.integers(1, n_kinds, r))
    kind_pos = np.where(partner == rows, rng.integers(1, n_kinds, r), kind_pos)
    # negatives: a hard neighbour or a random other person
    hard = neighbours[rows, rng.integers(0, neighbours.shape[1], r)]
    rand = rng.integers(0, r, r)
    rand = np.where(labels[rand] == labels, neighbours[rows, 0], rand)
    neg = np.where(rng.random(r) < 0.5, hard, rand)
    kind_neg = np.where(rng.random(r) < CLEAN_SHARE, 0, rng.integers(1, n_kinds, r))
    batch = PairBatch(np.concatenate([rows, rows]), np.concatenate([kind_pos, kind_neg]),
                      np.concatenate([partner, neg]),
                      np.concatenate([np.ones(r, bool), np.zeros(r, bool)]))
    perm = rng.permutation(2 * r)
    return PairBatch(batch.row_a[perm], batch.kind_a[perm], batch.row_b[perm], batch.same[perm])


def pair_loss(model: FaceViT, arc_weight: torch.Tensor | None, ga: torch.Tensor,
              gb: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor, same: torch.Tensor,
              s: float = 30.0, m: float = 0.5, teacher: FaceViT | None = None,
              distil: float = 0.0) -> torch.Tensor:
    """Training loss of a batch: grids ga, gb (B, C, H, W), identities ya, yb (B,), same (B,).

    With a `teacher` (an H2L of the same grid, any width), H2L's loss adds `distil` x the mean
    cosine distance of the student's f1 and f2 to the teacher's: 2 - cos(f1, f1_t) - cos(f2,
    f2_t) (feature distillation into a narrower model)."""
    ta, tb = model.tokens(ga), model.tokens(gb)
    out = model.pair_outputs(ta, tb)
    if model.cfg.variant == "h2":
        return F.binary_cross_entropy_with_logits(out[0], same.float())
    if arc_weight is None:
        raise InputError("H2L and H1 are trained with ArcFace: pass the class weights")
    loss = 0.5 * (F.cross_entropy(arcface_logits(out[0], arc_weight, ya, s, m), ya)
                  + F.cross_entropy(arcface_logits(out[1], arc_weight, yb, s, m), yb))
    if teacher is None or distil == 0:
        return loss
    with torch.no_grad():
        t1, t2 = teacher.pair_outputs(teacher.tokens(ga), teacher.tokens(gb))
    return loss + distil * (2 - (out[0] * t1).sum(1) - (out[1] * t2).sum(1)).mean()


class GridTable:
    """Grids of R images x kinds (clean first), float16 (R, kinds, C, H, W), pooled if asked.

    `extra`: more columns, each another draw of a kind (the same variant made with another
    seed), appended after the kinds: `extra[j]` is the kind of column K + j. Pairs are drawn
    over the K kinds (`n_kinds`); `columns` then picks, per pair, one of its kind's columns."""

    def __init__(self, grids: list[np.ndarray], pool: int | None,
                 extra: list[tuple[int, np.ndarray]] = ()) -> None:
        stacked = np.stack([*grids, *(g for _, g in extra)], axis=1)  # (R, K + E, C, H, W)
        t = torch.from_numpy(stacked)
        if pool:
            r, k = t.shape[:2]
            t = pool_grid(t.flatten(0, 1).float(), pool).half()
            t = t.view(r, k, *t.shape[1:])
        self.t = t
        self._kinds = len(grids)
        alt = [[k] + [self._kinds + j for j, (kind, _) in enumerate(extra) if kind == k]
               for k in range(self._kinds)]
        self._n_alt = np.array([len(a) for a in alt])  # (K,) draws of each kind
        self._alt = np.array([a + [-1] * (self._n_alt.max() - len(a)) for a in alt])  # (K, A)

    @property
    def n_kinds(self) -> int:
        return self._kinds

    def columns(self, kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B,) kinds -> (B,) columns: each pair's kind, or uniformly one of its other draws.
        Without extra columns it returns `kinds` and draws nothing from `rng`."""
        if self.t.shape[1] == self._kinds:
            return kinds
        pick = (rng.random(len(kinds)) * self._n_alt[kinds]).astype(np.int64)
        return self._alt[kinds, pick]

    def get(self, rows: np.ndarray, kinds: np.ndarray) -> torch.Tensor:
        return self.t[torch.from_numpy(rows), torch.from_numpy(kinds)].float()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t.shape[2:])  # type: ignore[return-value]


def fit_epochs(model: FaceViT, table: GridTable, classes: np.ndarray, n_classes: int,
               neighbours: np.ndarray, epochs: int, batch: int, lr: float, seed: int,
               progress: bool = True, on_epoch=None,  # noqa: ANN001
               teacher: FaceViT | None = None, distil: float = 0.0) -> list[dict]:
    """Train `model` in place; returns per-epoch {loss, seconds, ...on_epoch()}."""
    gen = torch.Generator().manual_seed(seed)
    arc = None
    params = list(model.parameters())
    if model.cfg.variant != "h2":
        arc = torch.nn.Parameter(torch.randn(n_classes, model.cfg.embed_dim, generator=gen)
                                 * 0.01)
        params.append(arc)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-2 * len(classes) // batch)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(1, steps_per_epoch))
        * 0.5 * (1 + np.cos(np.pi * min(i, total) / total)))
    history = []
    from facerank._util.progress import progress_bar

    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        pb = draw_pairs(classes, neighbours, rng, table.n_kinds)
        pb.kind_a = table.columns(pb.kind_a, rng)
        losses = []
        with progress_bar(progress, f"epoch {epoch + 1}/{epochs}", steps_per_epoch) as advance:
            for s in range(0, len(pb.same), batch):
                sl = slice(s, s + batch)
                ga = table.get(pb.row_a[sl], pb.kind_a[sl])
                gb = table.get(pb.row_b[sl], np.zeros(len(pb.row_b[sl]), dtype=np.int64))
                ya = torch.from_numpy(classes[pb.row_a[sl]])
                yb = torch.from_numpy(classes[pb.row_b[sl]])
                loss = pair_loss(model, arc, ga, gb, ya, yb, torch.from_numpy(pb.same[sl]),
                                 teacher=teacher, distil=distil)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                advance(1)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
               "seconds": time.perf_counter() - t0}
        if on_epoch is not None:
            row.update(on_epoch(model))
        history.append(row)
        if progress:
            extra = "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                              if k not in ("epoch", "seconds"))
            print(f"epoch {epoch + 1}/{epochs}  {extra}  ({row['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
    return history


@torch.no_grad()
def score_table_pairs(model: FaceViT, table: GridTable, ra: np.ndarray, ka: np.ndarray,
                      rb: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """ViT score of pairs (table[ra, ka], table[rb, clean]) -> (P,) (face a first)."""
    model.eval()
    out = np.zeros(len(ra), dtype=np.float32)
    for s in range(0, len(ra), chunk):
        sl = slice(s, s + chunk)
        ta = model.tokens(table.get(ra[sl], ka[sl]))
        tb = model.tokens(table.get(rb[sl], np.zeros(len(rb[sl]), dtype=np.int64)))
        out[sl] = model.pair_score(ta, tb).numpy()
    return out


def val_pairs(labels: np.ndarray, neighbours: np.ndarray, seed: int, n_kinds: int
              ) -> PairBatch:
    """A fixed set of held-out pairs (one positive, one negative per image, seeded)."""
    return draw_pairs(labels, neighbours, np.random.default_rng(seed + 2000), n_kinds)


def blend_p_at_1(cos: np.ndarray, vit: np.ndarray, match: np.ndarray,
                 alphas: tuple[float, ...] = ALPHAS) -> dict[str, float]:
    """cos, vit, match (Q, k): Stage-1 cosine and ViT score of each query's k candidates, and
    whether each is the query's person -> {"0.4": P@1 (fraction) when the candidates are
    re-ordered by alpha * vit + (1 - alpha) * cos} per alpha (0 is Stage 1's order)."""
    rows = np.arange(len(match))
    return {f"{a:.1f}": float(match[rows, np.argmax(a * vit + (1 - a) * cos, axis=1)].mean())
            for a in alphas}


def fit_alpha_gate(model: FaceViT, table: GridTable, rows_val: np.ndarray, labels: np.ndarray,
                   emb: dict[int, np.ndarray], descriptors: dict[int, np.ndarray],
                   query_grids: dict[int, np.ndarray], kinds: tuple[str, ...] = KINDS,
                   k: int = 50, clean_budget: float = 0.01) -> dict:
    """Blend alpha and quality gate fitted on the held-out people's queries.

    Queries: each held-out image clean and as its three variants; gallery: all clean images
    of the table (the training half) but the query's own (as the benchmark protocols do).
    alpha maximises the mean P@1 of the four query kinds; the gate (clean = easy, variants =
    hard) then keeps clean queries at Stage 1 within `clean_budget`.
    """
    labels_all = labels
    per_kind, feats = {}, []
    for kind in range(table.n_kinds):
        q_emb = emb[kind][rows_val]
        rank = cosine_topk(q_emb, emb[0], k, rows_val)  # never the query's own original
        cand = rank.indices  # (Q, k'), k' = min(k, gallery size - 1)
        kk = cand.shape[1]
        vit = score_table_pairs(model, table, np.repeat(rows_val, kk),
                                np.full(len(rows_val) * kk, kind), cand.reshape(-1)
                                ).reshape(len(rows_val), kk)
        match = labels_all[cand] == labels_all[rows_val][:, None]
        per_kind[kinds[kind]] = (rank.scores, vit, match)
        from facerank.rerank.gate import gate_features, query_features

        feats.append(gate_features(rank.scores, vit,
                                   query_features(descriptors[kind][rows_val],
                                                  query_grids[kind][rows_val])))
    by_kind = {name: blend_p_at_1(*v) for name, v in per_kind.items()}
    sweep = {a: {name: p1[a] for name, p1 in by_kind.items()} for a in by_kind[kinds[0]]}
    best = max(sweep, key=lambda a: np.mean(list(sweep[a].values())))
    # with the gate, Stage 2 sees (nearly) only occluded queries: alpha for those alone
    best_gated = max(sweep, key=lambda a: np.mean([v for n, v in sweep[a].items()
                                                   if n != "clean"]))
    hard = np.concatenate([np.full(len(f), i > 0) for i, f in enumerate(feats)])
    gate = QualityGate.fit(np.concatenate(feats), hard, clean_budget=clean_budget,
                           meta={"trained_on": "held-out people of the ViT's training half: "
                                 "clean queries (easy) vs crop/mask/sunglasses (hard)",
                                 "scores": "vit"})
    return {"alpha": float(best), "alpha_gated": float(best_gated), "alpha_sweep_p1": sweep,
            "gate": gate}


def train_vit(cfg_kw: dict, grid: str = "l1", train_fold: bool = True, epochs: int = 12,
              batch: int = 256, lr: float = 1e-3, seed: int = 0, out: Path | None = None,
              command: str = "", progress: bool = True, data=None,  # noqa: ANN001
              variants: tuple[str, ...] = VARIANT_ORDER, teacher: str | Path | None = None,
              distil: float = 1.0, subfold: bool | None = None,
              extra_seeds: tuple[int, ...] = (), extra_variants: tuple[str, ...] = (),
              draw: Callable[..., FeatureSet] | None = None) -> dict:
    """Train one Face-ViT on identity half `train_fold`; writes the checkpoint if `out`.

    subfold: train on that part of the half only (`train.split.sub_fold`), leaving the other
    part's people unseen for fitting a gate (`facerank train gate --checkpoint`).

    extra_seeds, extra_variants: each of `extra_variants` (trained variants) is also made with
    each of these seeds on the training rows (`occluded_queries`, cached); a training pair's
    face a then takes any one of its variant's draws, uniformly (`GridTable.columns`). More
    crop windows, mask shapes, ... per image, the same share of each variant. `draw(data,
    kind, rows, seed, progress)` makes one draw (default `occluded_queries`).

    teacher: an H2L checkpoint of the same backbone and grid, trained on the same identity
    half, whose f1 and f2 the new model also learns to reproduce (weight `distil`; see
    `pair_loss`). Its file name and SHA-256 are recorded in the new checkpoint's JSON."""
    from facerank._util.checkpoint import save_checkpoint
    from facerank.eval.protocols import occluded_queries
    from facerank.train.data import load_training_data
    from facerank.train.split import describe_split, sub_fold

    unknown = sorted(set(variants) - set(VARIANT_ORDER))
    if unknown:
        raise InputError(f"unknown variants {unknown}; choose from {', '.join(VARIANT_ORDER)}")
    torch.manual_seed(seed)
    td = data if data is not None else load_training_data(kinds=variants, progress=progress)
    grid_name, pool = parse_grid(grid)
    rows, _ = td.rows(train_fold)  # the other half is never read below
    if subfold is not None:
        rows = rows[sub_fold(td.labels, train_fold, td.split_seed)[rows] == subfold]
    labels = td.labels[rows]
    variants = tuple(k for k in VARIANT_ORDER if k in td.variants and k in variants)
    sets = [td.clean] + [td.variants[k] for k in variants]
    if not variants:
        raise InputError("Face-ViT training needs at least one occluded variant (crop, mask or "
                         "sunglasses) for its pairs and its gate")
    if grid_name not in td.clean.grids:
        raise InputError(f"training features have no grid {grid_name!r}")
    table = GridTable([fs.grids[grid_name][rows] for fs in sets], pool)
    c, h, w = table.shape
    cfg = ViTConfig(in_channels=c, grid_h=h, grid_w=w, **cfg_kw)
    model = FaceViT(cfg)
    is_val = val_people(labels, seed)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    emb = {i: fs.embeddings[rows] for i, fs in enumerate(sets)}
    # training table restricted to the training people (row ids local to `tr`)
    stray = sorted(set(extra_variants) - set(variants))
    if stray or (extra_variants and not extra_seeds):
        raise InputError(f"extra draws need --extra-seeds and variants that are trained; got "
                         f"seeds {list(extra_seeds)} for {', '.join(extra_variants)}")
    draw = draw or occluded_queries
    extra = [(1 + variants.index(k), draw(td.data, k, rows, s, progress).grids[grid_name][tr])
             for s in extra_seeds for k in extra_variants]
    tr_table = GridTable([fs.grids[grid_name][rows[tr]] for fs in sets], pool, extra)
    del extra  # copied into tr_table: 16 crop draws of SFace's map are ~5.6 GB each way
    _, classes = np.unique(labels[tr], return_inverse=True)
    classes = classes.astype(np.int64)
    n_classes = int(classes.max()) + 1
    neighbours = hard_negatives(emb[0][tr], labels[tr])
    va_nb = hard_negatives(emb[0][va], labels[va])
    vp = val_pairs(labels[va], va_nb, seed, len(sets))
    va_table = GridTable([fs.grids[grid_name][rows[va]] for fs in sets], pool)

    def on_epoch(m: FaceViT) -> dict:
        sc = score_table_pairs(m, va_table, vp.row_a, vp.kind_a, vp.row_b)
        occl = vp.kind_a > 0
        return {"val_auc": metrics.roc_auc(sc, vp.same),
                "val_auc_occluded": metrics.roc_auc(sc[occl], vp.same[occl])}

    teacher_model, distilled = _teacher(teacher, td.data.extractor.model_id, grid, cfg,
                                        train_fold, td.split_seed, distil)
    t0 = time.perf_counter()
    history = fit_epochs(model, tr_table, classes, n_classes, neighbours, epochs, batch, lr,
                         seed, progress, on_epoch, teacher_model, distil)
    train_seconds = time.perf_counter() - t0
    del tr_table  # the gate fit below reads the full-rows table; free the training copy
    model.eval()
    fitted = fit_alpha_gate(model, table, va, labels, emb,
                            {i: fs.descriptors[rows] for i, fs in enumerate(sets)},
                            {i: fs.grids[grid_name][rows] for i, fs in enumerate(sets)},
                            ("clean", *variants))
    q_emb = np.stack([emb[k][va] for k in range(len(sets))])  # (kinds, V, D)
    cos_val = np.einsum("pd,pd->p", q_emb[vp.kind_a, vp.row_a], emb[0][va][vp.row_b])
    config = {
        "kind": "vit", "backbone": td.data.extractor.model_id, "model": cfg.to_dict(),
        "grid": grid, "alpha": fitted["alpha"], "alpha_gated": fitted["alpha_gated"],
        "gate": fitted["gate"].__dict__ if fitted["gate"] is not None else None,
        "command": command, "seed": seed,
        "split": describe_split(train_fold, td.split_seed, subfold),
        "data": td.describe(), "variants_trained": list(variants), "n_classes": n_classes,
        **({"extra_draws": {"seeds": list(extra_seeds), "variants": list(extra_variants),
                            "rows": "the training rows only"}} if extra_seeds else {}),
        "n_train_images": int(len(tr)),
        "n_val_images": int(len(va)), "epochs": epochs, "batch": batch, "lr": lr,
        "loss": "arcface s=30 m=0.5" if cfg.variant != "h2" else "bce on [CLS]",
        **({"distilled_from": distilled} if distilled else {}),
        "measured": {"history": history, "train_seconds": train_seconds,
                     "seconds_per_epoch": train_seconds / max(1, epochs),
                     "val_auc_stage1_cosine": metrics.roc_auc(cos_val, vp.same),
                     "alpha_sweep_val_p1": fitted["alpha_sweep_p1"]},
    }
    if out is not None:
        save_checkpoint(out, model, config)
    return {"model": model, "config": config}


def _teacher(path: str | Path | None, backbone: str, grid: str, cfg: ViTConfig,
             train_fold: bool, split_seed: int, weight: float
             ) -> tuple[FaceViT | None, dict | None]:
    """The frozen teacher model of `train_vit` and what its JSON records (None: no teacher)."""
    if path is None:
        return None, None
    import hashlib

    from facerank.rerank.vit.reranker import load_model

    teacher, config = load_model(path, backbone)
    t_cfg = teacher.cfg
    split = config.get("split", {})
    problems = [what for what, bad in (
        ("an H2L student and teacher", cfg.variant != "h2l" or t_cfg.variant != "h2l"),
        (f"grid {grid}", config.get("grid") != grid),
        (f"embedding size {cfg.embed_dim}", t_cfg.embed_dim != cfg.embed_dim),
        (f"identity half {int(train_fold)} (split seed {split_seed})",
         split.get("train_fold") != train_fold or split.get("seed") != split_seed),
    ) if bad]
    if problems or weight <= 0:
        raise InputError(f"{path}: cannot teach this model: it needs {', '.join(problems)}"
                         if problems else f"--distil-weight must be positive, got {weight}")
    teacher.eval().requires_grad_(False)
    pt = Path(path).with_suffix(".pt")
    return teacher, {"checkpoint": pt.name, "sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
                     "model": t_cfg.to_dict(), "weight": weight}
