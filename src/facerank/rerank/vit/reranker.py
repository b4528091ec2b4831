"""Face-ViT Stage 2: re-rank the Stage-1 top-k by a trained two-image transformer (`vit.py`).

    final = alpha * ViT-score + (1 - alpha) * cosine       (as Face-ViT re-uses EMD's blend)

alpha is the one the checkpoint's training fitted on held-out training identities (its JSON
records it). On the CPU the pair scores run by default through `fast.OnnxPairScorer`
(runtime "onnx-int8": each face's share of the work done once, onnxruntime, int8 weights;
scores within about 0.013 of the torch model's on LFW, see docs/results.md); runtime="torch"
runs the model itself, "onnx" the same graph in float32 (equal to torch within 1e-6).

With runtime "torch", each query's and each distinct candidate's patch tokens are projected
once per chunk; the pairs then run through the transformer `chunk_pairs` at a time (1,024 on
the CPU, 32,768 on an accelerator: `device.default_chunk_pairs`). An optional quality gate (the same
logistic gate as EMD's, on the ViT's score list instead of EMD's) keeps clean queries in their
Stage-1 order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerank._util.checkpoint import load_checkpoint, load_into
from facerank._util.progress import progress_bar
from facerank.errors import InputError, ModelFileError
from facerank.face.features import FeatureSet
from facerank.ranking import Ranking
from facerank.rerank.base import (
    GatedBlendReranker,
    register_stage2,
    reorder_sent,
    rerank_depth,
)
from facerank.rerank.device import CPU_VIT_CHUNK_PAIRS, default_chunk_pairs, pick_device
from facerank.rerank.emd.reranker import parse_grid
from facerank.rerank.emd.solver import pool_grid
from facerank.rerank.gate import QualityGate
from facerank.rerank.vit import fast
from facerank.rerank.vit.model import FaceViT, ViTConfig

KIND = "vit"
BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints"  # rerank/checkpoints
DEFAULT_CHECKPOINT = BUNDLED / "vit-h2l-dlib.pt"
# width 48, 1 head, distilled from DEFAULT_CHECKPOINT: about 2.4x EMD's speed for one probe on
# a CPU, 1-3 P@1 below the wider model on crops, masks and sunglasses (docs/results.md)
FAST_CHECKPOINT = BUNDLED / "vit-h2l-dlib-fast.pt"


def default_checkpoint(backbone: str | None = None) -> Path:
    """The bundled Face-ViT for `backbone` ("dlib" or None: `DEFAULT_CHECKPOINT`; "sface":
    `vit-h2l-sface.pt`, trained on SFace's 7x7 grid; or a model id, named by
    `models.backbone.backbone_name`). Any other name gets dlib's."""
    from facerank.models.backbone import backbone_name

    name = backbone_name(str(backbone or "dlib"))
    if name == "dlib":
        return DEFAULT_CHECKPOINT
    own = BUNDLED / f"vit-h2l-{name}.pt"
    return own if own.is_file() else DEFAULT_CHECKPOINT


def load_model(path: str | Path, backbone: str | None = None) -> tuple[FaceViT, dict]:
    """(model, config) of a checkpoint written by `facerank train vit`; refused in one line if
    made for another backbone (None: any), or if its config has no valid model shape."""
    state, config = load_checkpoint(path, KIND, backbone)
    try:
        cfg = ViTConfig.from_dict(config["model"])
    except (KeyError, TypeError, InputError) as e:
        raise InputError(f"{path}: checkpoint config has no valid 'model' entry ({e}); "
                         "retrain it with `facerank train vit`") from None
    model = FaceViT(cfg)
    load_into(model, state, path)
    return model, config


def benefit_gate_path(checkpoint: str | Path) -> Path:
    """Where the gate fitted on what this Face-ViT does to each query (`facerank train gate
    --checkpoint ... --bundle`) is kept: `<checkpoint>.gate.json` beside it."""
    return Path(checkpoint).with_suffix(".gate.json")


def benefit_gate(checkpoint: str | Path) -> QualityGate | None:
    """The benefit gate stored beside `checkpoint`, if any; refused in one line if it was
    fitted for another checkpoint (its meta records the checkpoint's SHA-256)."""
    import hashlib

    path = benefit_gate_path(checkpoint)
    if not path.is_file():
        return None
    gate = QualityGate.load(path)
    want = gate.meta.get("checkpoint_sha256")
    if want != hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest():
        raise ModelFileError(f"{path}: this gate was fitted for another Face-ViT checkpoint "
                             f"than {Path(checkpoint).name}; refit it with `facerank train gate "
                             f"--checkpoint {checkpoint}` or delete it")
    return gate


def auto_gate(checkpoint: str | Path, config: dict) -> QualityGate | None:
    """The gate `gate="auto"` uses with `checkpoint` (its `config`): the benefit gate kept
    beside it if there is one, else the clean-vs-occluded gate its training stored (if any)."""
    stored = config.get("gate")
    return benefit_gate(checkpoint) or (QualityGate(**stored) if isinstance(stored, dict)
                                        else None)


@dataclass
class PairHeatmaps:
    """Relevance of each patch of both faces for the score of B pairs (explanations)."""

    score: np.ndarray  # (B,) ViT score (query first)
    cosine: np.ndarray  # (B,)
    final: np.ndarray  # (B,)
    heat_a: np.ndarray  # (B, H, W) relevance of face a's patches, max 1
    heat_b: np.ndarray  # (B, H, W)
    method: str


class Stage2ViT(GatedBlendReranker):
    """`Stage2ViT(model, grid="l2", alpha=0.5, k=100)`; usually `Stage2ViT.load(path)`."""

    name = "vit"

    def __init__(self, model: FaceViT, grid: str = "l2", alpha: float = 0.5, k: int = 100,
                 gate: QualityGate | str | None = None, device: str = "cpu",
                 chunk_pairs: int | None = None, meta: dict | None = None,
                 runtime: str = "auto", threads: int | None = None) -> None:
        """runtime: how pair scores run - "onnx-int8", "onnx" (CPU only), "torch", or "auto"
        (onnx-int8 for a two-image model on the CPU, else torch). threads: onnxruntime's
        intra-op threads (None: one per usable core, at most 4)."""
        self._set_blend(alpha, k, gate)
        self.grid = grid
        self.grid_name, self.pool = parse_grid(grid)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.chunk_pairs = int(chunk_pairs or default_chunk_pairs(self.device,
                                                                  CPU_VIT_CHUNK_PAIRS))
        self.meta = meta or {}
        self.runtime = self._pick_runtime(runtime)
        self.threads = threads
        self._onnx: fast.OnnxPairScorer | None = None  # built at the first onnx score

    def _pick_runtime(self, runtime: str) -> str:
        if runtime not in ("auto", *fast.RUNTIMES):
            raise InputError(f"unknown Face-ViT runtime {runtime!r}; choose from auto, "
                             f"{', '.join(fast.RUNTIMES)}")
        on_cpu = self.device.type == "cpu"
        if runtime == "auto":
            return "onnx-int8" if on_cpu and fast.supports(self.model) else "torch"
        if runtime != "torch" and not (on_cpu and fast.supports(self.model)):
            raise InputError(f"runtime {runtime!r} runs two-image Face-ViTs on the CPU; use "
                             "runtime=\"torch\" for this model or device")
        return runtime

    @classmethod
    def load(cls, path: str | Path = DEFAULT_CHECKPOINT, backbone: str | None = None,
             **kw: object) -> Stage2ViT:
        """A checkpoint written by `facerank train vit` (refused if made for another backbone
        or another shape); alpha and grid come from its config unless given."""
        model, config = load_model(path, backbone)
        kw.setdefault("grid", str(config.get("grid", "l2")))
        gate = kw.pop("gate", None)
        if gate == "auto":
            gate = auto_gate(path, config)
        # gated, Stage 2 sees (nearly) only occluded queries: the alpha fitted on those
        fitted = config.get("alpha_gated") if gate is not None else None
        kw.setdefault("alpha", float(fitted if fitted is not None else config.get("alpha", 0.5)))
        return cls(model, gate=gate, meta=config, **kw)  # type: ignore[arg-type]

    def describe(self) -> str:
        c = self.model.cfg
        gated = ", gated" if self.gate is not None else ""
        run = "" if self.runtime == "torch" else f", {self.runtime}"
        return (f"Stage 2 Face-ViT {c.variant.upper()} ({self.grid}, depth {c.depth}, "
                f"{c.heads} head{'s' * (c.heads != 1)}, width {c.width}, alpha={self.alpha:g}, "
                f"k={self.k}{gated}{run})")

    # ---- inputs ---------------------------------------------------------------------------

    def grids(self, fs: FeatureSet, index: np.ndarray) -> torch.Tensor:
        """(B, C, H, W) float32 grids of rows `index` on the scorer's device."""
        if self.grid_name not in fs.grids:
            raise InputError(f"features have no grid {self.grid_name!r} (have "
                             f"{', '.join(fs.grids) or 'none'}); extract with grids including it")
        g = torch.from_numpy(np.ascontiguousarray(fs.grids[self.grid_name][index]))
        g = g.to(self.device, torch.float32)
        g = pool_grid(g, self.pool) if self.pool else g
        self.model.check_grids(g)
        return g

    # ---- pair scoring ---------------------------------------------------------------------

    @torch.no_grad()
    def _pairs(self, ta: torch.Tensor, tb: torch.Tensor, ia: torch.Tensor,
               ib: torch.Tensor) -> torch.Tensor:
        """ViT score of pairs (ta[ia[p]], tb[ib[p]]) -> (P,), chunk_pairs at a time."""
        out = torch.empty(len(ia), device=self.device)
        for s in range(0, len(ia), self.chunk_pairs):
            e = min(s + self.chunk_pairs, len(ia))
            out[s:e] = self.model.pair_score(ta[ia[s:e]], tb[ib[s:e]])
        return out

    @torch.no_grad()
    def _grid_pairs(self, ga: torch.Tensor, gb: torch.Tensor, ia: torch.Tensor,
                    ib: torch.Tensor) -> torch.Tensor:
        """ViT score of pairs (ga[ia[p]], gb[ib[p]]) of grids (A|B, C, H, W) -> (P,), by the
        chosen runtime (face a first)."""
        if self.runtime != "torch":
            if self._onnx is None:  # export (+ quantise) once, ~1 s
                self._onnx = fast.OnnxPairScorer(self.model, self.runtime, self.threads)
            return torch.from_numpy(self._onnx.score(ga.numpy(), gb.numpy(), ia.numpy(),
                                                     ib.numpy()))
        return self._pairs(self.model.tokens(ga), self.model.tokens(gb), ia, ib)

    @torch.no_grad()
    def vit_scores(self, queries: FeatureSet, gallery: FeatureSet, cand: np.ndarray,
                   progress: bool = False) -> np.ndarray:
        """ViT score of each query with its candidates: cand (Q, k) -> (Q, k)."""
        n_q, k = cand.shape
        out = np.zeros((n_q, k), dtype=np.float32)
        per_chunk = max(1, self.chunk_pairs // max(k, 1))
        h1 = self.model.cfg.variant == "h1"
        with progress_bar(progress, f"Stage 2 Face-ViT {self.grid}", n_q) as advance:
            for s in range(0, n_q, per_chunk):
                rows = np.arange(s, min(n_q, s + per_chunk))
                uniq, inverse = np.unique(cand[rows], return_inverse=True)
                gq = self.grids(queries, rows)  # (Qc, C, H, W)
                gc = self.grids(gallery, uniq)  # (U, C, H, W)
                inv = torch.from_numpy(inverse.reshape(len(rows), k)).to(self.device)
                if h1:  # one embedding per face, then cosines
                    eq = self.model.embed_one(self.model.tokens(gq))
                    ec = self.model.embed_one(self.model.tokens(gc))
                    sc = torch.einsum("qe,qke->qk", eq, ec[inv])
                else:
                    iq = torch.arange(len(rows), device=self.device).repeat_interleave(k)
                    sc = self._grid_pairs(gq, gc, iq, inv.reshape(-1)).reshape(len(rows), k)
                out[rows] = sc.float().cpu().numpy()
                advance(len(rows))
        return out

    @torch.no_grad()
    def vit_pair_scores(self, a: FeatureSet, b: FeatureSet, symmetric: bool = True
                        ) -> np.ndarray:
        """ViT score of pairs (a[i], b[i]) -> (P,); symmetric: the mean of both orders."""
        if len(a) != len(b):
            raise InputError(f"pair lists differ in length: {len(a)} vs {len(b)}")
        out = np.zeros(len(a), dtype=np.float32)
        step = max(1, self.chunk_pairs)
        for s in range(0, len(a), step):
            idx = np.arange(s, min(len(a), s + step))
            ga, gb = self.grids(a, idx), self.grids(b, idx)
            if self.model.cfg.variant == "h1":
                sc = self.model.pair_score(self.model.tokens(ga), self.model.tokens(gb))
            else:
                same = torch.arange(len(idx), device=self.device)
                sc = self._grid_pairs(ga, gb, same, same)
                if symmetric:
                    sc = 0.5 * (sc + self._grid_pairs(gb, ga, same, same))
            out[idx] = sc.float().cpu().numpy()
        return out

    def score_pairs(self, a: FeatureSet, b: FeatureSet) -> np.ndarray:
        """alpha * ViT (mean of both orders) + (1 - alpha) * cosine of pairs -> (P,).

        Symmetric in the two faces. The gate is not used (it reads a ranked candidate list).
        """
        vit = self.vit_pair_scores(a, b, symmetric=True)
        cos = np.einsum("pd,pd->p", a.embeddings, b.embeddings)
        return self.alpha * vit + (1 - self.alpha) * cos

    # ---- re-ranking -----------------------------------------------------------------------

    def topk_scores(self, queries: FeatureSet, gallery: FeatureSet, cand: np.ndarray,
                    progress: bool = False) -> np.ndarray:
        return self.vit_scores(queries, gallery, cand, progress)


@register_stage2("vit")
def _make(checkpoint: str | None = None, k: int = 100, alpha: float | None = None,
          gate: str | None = "auto", device: str = "cpu", backbone: str | None = None,
          grid: str | None = None, weighting: str | None = None,
          **kw: object) -> Stage2ViT:
    """The product's Face-ViT re-ranker: the bundled H2L checkpoint unless one is given.
    gate: "auto" = the benefit gate kept beside the checkpoint (`benefit_gate_path`), else the
    gate stored in the checkpoint (if any); "none"; or a gate JSON file.
    runtime (keyword): "auto" (onnx-int8 on the CPU), "onnx-int8", "onnx" or "torch".
    grid and weighting are EMD options that the CLI passes to every method: a Face-ViT's grid
    is the one it was trained on (its checkpoint's) and it has no patch weighting."""
    del grid, weighting
    path = checkpoint or default_checkpoint(backbone)
    if gate == "none":
        gate = None
    extra = {} if alpha is None else {"alpha": alpha}
    return Stage2ViT.load(path, backbone=backbone, k=k, gate=gate, device=device,
                          **extra, **kw)


@register_stage2("vit-fast")
def _make_fast(checkpoint: str | None = None, **kw: object) -> Stage2ViT:
    """The bundled narrow Face-ViT (`FAST_CHECKPOINT`), otherwise as "vit"."""
    return _make(checkpoint=checkpoint or str(FAST_CHECKPOINT), **kw)  # type: ignore[arg-type]


# ---- explanations -----------------------------------------------------------------------------

EXPLAIN_METHODS = ("chefer", "rollout")


def explain_pairs(scorer: Stage2ViT, a: FeatureSet, b: FeatureSet,
                  method: str = "chefer") -> PairHeatmaps:
    """Patch relevance of pairs (a[i], b[i]) for the ViT score (face a first; small batches).

    chefer (Chefer et al. 2021, as the Face-ViT paper visualises): R = I, then per block
    R += mean_heads(relu(dscore/dA * A)) R, with A that block's attention. rollout (Abnar &
    Zuidema): R = prod_blocks (0.5 A_mean + 0.5 I), rows renormalised; no gradients. A face's
    heatmap is the relevance its patch tokens receive from the tokens the score is read from
    (H2L: all patch outputs, minus the identity; H2 and H1: the [CLS] output). Gradients,
    attention and the score shown all come from the torch model, whatever the scorer's runtime.
    """
    if method not in EXPLAIN_METHODS:
        raise InputError(f"unknown explanation method {method!r}; choose from "
                         f"{', '.join(EXPLAIN_METHODS)}")
    if len(a) != len(b) or len(a) == 0:
        raise InputError(f"explain needs pairs of equal, non-zero length, got {len(a)}, "
                         f"{len(b)}")
    m = scorer.model
    cfg = m.cfg
    idx = np.arange(len(a))
    ga, gb = scorer.grids(a, idx), scorer.grids(b, idx)
    heats = []
    with torch.enable_grad():
        if cfg.two_image:
            runs = [(ga, gb)]
        else:
            runs = [(ga, None), (gb, None)]
        for g1, g2 in runs:
            t1 = m.tokens(g1)
            if g2 is None:  # H1: one face at a time, relevance of its [CLS] output
                score = m.embed_one(t1, keep_attn=True).sum()
            else:
                out = m.pair_outputs(t1, m.tokens(g2), keep_attn=True)
                score = (torch.tanh(out[0] / 2) if cfg.variant == "h2"
                         else (out[0] * out[1]).sum(dim=1))
            if method == "chefer":
                m.zero_grad(set_to_none=True)
                score.sum().backward()
            heats.append(_relevance(m, method, len(idx), g2 is None))
    with torch.no_grad():  # the torch model's score, which the heatmaps explain
        vit = m.pair_score(m.tokens(ga), m.tokens(gb))
    n = cfg.n_patches
    if cfg.two_image:
        rel = heats[0]  # (B, T)
        ha, hb = rel[:, 1 : n + 1], rel[:, n + 2 :]
    else:
        ha, hb = heats[0][:, 1:], heats[1][:, 1:]
    shape = (len(idx), cfg.grid_h, cfg.grid_w)
    ha = _unit_max(ha).reshape(shape)
    hb = _unit_max(hb).reshape(shape)
    cos = np.einsum("pd,pd->p", a.embeddings, b.embeddings)
    v = vit.numpy()
    for blk in m.blocks:
        blk.attn = None
    return PairHeatmaps(v, cos, scorer.alpha * v + (1 - scorer.alpha) * cos, ha, hb, method)


def _relevance(m: FaceViT, method: str, batch: int, one_image: bool) -> np.ndarray:
    """(B, T) relevance of each input token (see `explain_pairs`)."""
    t = m.cfg.n_tokens
    eye = torch.eye(t).expand(batch, t, t)
    r = eye.clone()
    for blk in m.blocks:
        att = blk.attn.detach()  # (B, heads, T, T)
        if method == "chefer":
            cam = (blk.attn.grad * att).clamp_min(0).mean(dim=1)  # (B, T, T)
            r = r + cam @ r
        else:
            hat = 0.5 * att.mean(dim=1) + 0.5 * eye
            r = (hat / hat.sum(dim=-1, keepdim=True)) @ r
    n = m.cfg.n_patches
    if one_image or m.cfg.variant == "h2":
        return r[:, 0].numpy()  # the [CLS] row
    rows = torch.cat([torch.arange(1, n + 1), torch.arange(n + 2, 2 * n + 2)])
    return (r - eye)[:, rows].sum(dim=1).clamp_min(0).numpy()


def _unit_max(x: np.ndarray) -> np.ndarray:
    x = x - x.min(axis=1, keepdims=True)
    return x / np.maximum(x.max(axis=1, keepdims=True), 1e-12)


class Stage2ViTEMD:
    """EMD and Face-ViT together: the mean of the two Stage-2 blends, for the queries EMD's
    quality gate sends to Stage 2 (the others keep their incoming order).

        final = 0.5 * (a_v * vit + (1 - a_v) * cos) + 0.5 * (a_e * emd + (1 - a_e) * cos)

    Measured on all 9,164 queries of each protocol, test identities only (docs/results.md,
    Face-ViT section), with the bundled H2LW16: P@1 96.28 / 27.62 / 63.06 / 68.05 / 76.40 on
    clean / crop / mask / sunglasses / low-res vs the gated EMD's 96.20 / 22.76 / 54.28 /
    61.48 / 75.89; gated by the ViT's own gate instead it was 0.15 lower on clean queries.
    No weight here is fitted on test queries. EMD scores every query (its gate reads them);
    the ViT (through torch ~3.3x EMD's cost per pair on a CPU, about EMD's with the default
    onnx-int8 runtime) only the queries the gate sends on: the others' "vit" stage scores
    are NaN.
    """

    name = "vit+emd"

    def __init__(self, vit: Stage2ViT, emd: object) -> None:
        self.vit, self.emd = vit, emd
        self.k = min(vit.k, emd.k)  # type: ignore[attr-defined]

    @property
    def gate(self) -> QualityGate | None:
        """EMD's gate decides which queries both scorers re-rank."""
        return getattr(self.emd, "gate", None)

    def describe(self) -> str:
        return f"mean of [{self.vit.describe()}] and [{self.emd.describe()}]"  # type: ignore[attr-defined]

    def score_pairs(self, a: FeatureSet, b: FeatureSet) -> np.ndarray:
        return 0.5 * (self.vit.score_pairs(a, b) + self.emd.score_pairs(a, b))  # type: ignore[attr-defined]

    def rerank(self, queries: FeatureSet, gallery: FeatureSet, ranking: Ranking,
               progress: bool = False) -> Ranking:
        k = rerank_depth(queries, ranking, self.k)
        if k == 0:
            return ranking
        n_q = ranking.num_queries
        cand = ranking.indices[:, :k]
        cos = ranking.stage_scores.get("stage1", ranking.scores)[:, :k]
        maybe = self.emd.maybe_sent(queries, ranking, k)  # type: ignore[attr-defined]
        rows = np.arange(n_q) if maybe is None else np.flatnonzero(maybe)
        emd = np.full((n_q, k), np.nan, dtype=np.float32)  # EMD only where the gate may send
        use = np.zeros(n_q, dtype=bool) if maybe is not None else np.ones(n_q, dtype=bool)
        if len(rows):
            sub = queries if len(rows) == n_q else queries.take(rows)
            emd[rows] = self.emd.emd_scores(sub, gallery, cand[rows], progress)  # type: ignore[attr-defined]
            if self.gate is not None and k >= 2:
                use[rows] = self.gate.use_stage2(self.emd.gate_features(sub, cos[rows],  # type: ignore[attr-defined]
                                                                        emd[rows]))
            else:
                use[rows] = True
        vit = np.full((n_q, k), np.nan, dtype=np.float32)
        sent = np.flatnonzero(use)
        if len(sent):
            vit[sent] = self.vit.vit_scores(queries.take(sent), gallery, cand[sent], progress)
        av, ae = self.vit.alpha, self.emd.alpha  # type: ignore[attr-defined]
        both = np.where(use[:, None], 0.5 * (av * vit + (1 - av) * cos)
                        + 0.5 * (ae * emd + (1 - ae) * cos), cos)  # kept rows: not re-sorted
        emd_full = np.full(ranking.indices.shape, np.nan, dtype=np.float32)
        emd_full[:, :k] = emd  # kept beside the ViT's scores, permuted with them
        with_emd = Ranking(ranking.indices, ranking.scores,
                           {**ranking.stage_scores, "emd": emd_full})
        return reorder_sent(with_emd, both, use, "vit", vit)


@register_stage2("vit+emd")
def _make_both(checkpoint: str | None = None, k: int = 100, gate: str | None = "auto",
               device: str = "cpu", backbone: str | None = None, alpha: float | None = None,
               grid: str | None = None, weighting: str | None = None) -> Stage2ViTEMD:
    """EMD (l2, APC, alpha 0.7 unless given) and the bundled Face-ViT (its ungated alpha),
    gated by EMD's gate: "auto" = the bundled one for that grid / weighting / backbone,
    "none" = every query, or a gate JSON file."""
    from facerank.rerank.base import make_stage2

    vit = _make(checkpoint=checkpoint, k=k, gate="none", device=device, backbone=backbone)
    options: dict[str, object] = {"device": device}
    if backbone is not None:
        options["backbone"] = backbone
    emd = make_stage2("emd", grid=grid or "l2", weighting=weighting or "apc",
                      alpha=0.7 if alpha is None else alpha, k=k, gate=gate, **options)
    return Stage2ViTEMD(vit, emd)
