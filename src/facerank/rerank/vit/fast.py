"""A faster CPU runtime for a Face-ViT's pair scores: the same function, less work, int8 matmuls.

Scoring one query against its candidates with `FaceViT.pair_score` repeats work: the query's
tokens enter every pair's sequence, and the [CLS] and [SEP] tokens are the same in every pair.
`PairScorer` computes the same scores from

- each face's tokens once (not once per pair), and the first block's LayerNorm + qkv
  projection of each face's half of the sequence once per face: the pre-norm block projects
  every token on its own, so a pair's q, k, v are its two faces' halves side by side;
- the [CLS] and [SEP] tokens (constant: their learnt vector + position + segment) once;
- for the last block of an H2L model, only the patch tokens' outputs (the head reads no
  other), so attention queries, output projection, MLP and the final LayerNorm skip [CLS]
  and [SEP]. Self-attention without a mask does not depend on token order, so the sequence
  is laid out [query patches, candidate patches, CLS, SEP] with each token's own position
  and segment embedding added.

Equal to `FaceViT.pair_score` within float rounding (tested). `OnnxPairScorer` exports it to
ONNX in memory the first time a re-ranker scores (nothing is written to disk but a temporary
file for the quantiser) and runs it with onnxruntime, optionally with the Linear layers'
weights quantised to int8 (`onnxruntime.quantization.quantize_dynamic`: per-channel weights,
deterministic for a given checkpoint). int8 activations are quantised per call with one scale
per tensor, so a pair's score can move by about 0.01 with the other pairs of the same call.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facerank._util.cores import ort_session_options
from facerank.errors import InputError
from facerank.rerank.vit.model import Block, FaceViT

RUNTIMES = ("onnx-int8", "onnx", "torch")


def supports(model: FaceViT) -> bool:
    """Whether `PairScorer` covers this model (the two-image variants H2L and H2)."""
    return model.cfg.two_image


class PairScorer(nn.Module):
    """`FaceViT.pair_score` of pairs given by index, with each face's work done once.

    forward(ga (A, C, H, W), gb (B, C, H, W), ia (P,), ib (P,)) -> (P,) scores of the pairs
    (ga[ia[p]], gb[ib[p]]), face a first; grids in the model's dtype.
    """

    def __init__(self, model: FaceViT) -> None:
        super().__init__()
        if not supports(model):
            raise InputError(f"the fast Face-ViT runtime scores two-image models, not "
                             f"{model.cfg.variant!r}")
        self.m = model
        self.eval()  # a new Module is in training mode; export restores the mode it finds

    def forward(self, ga: torch.Tensor, gb: torch.Tensor, ia: torch.Tensor,
                ib: torch.Tensor) -> torch.Tensor:
        m, n = self.m, self.m.cfg.n_patches
        a, p = ga.shape[0], ia.shape[0]
        x = torch.cat([ga, gb]).flatten(2).transpose(1, 2)  # (A+B, N, C): one projection
        t = m.embed(m.norm_in(x))  # (A+B, N, d)
        cls = m.cls[:, 0] + m.pos[:, 0] + m.seg[0]  # (1, d), the same in every pair
        sep = m.sep[:, 0] + m.pos[:, n + 1] + m.seg[1]
        h = torch.cat([cls, sep, (t[:a] + m.pos[:, 1 : n + 1] + m.seg[0]).flatten(0, 1),
                       (t[a:] + m.pos[:, n + 2 :] + m.seg[1]).flatten(0, 1)])
        # rows of h: [CLS], [SEP], face a's patches (A*N), face b's (B*N); token j of pair i
        # is row take[i, j] (its sequence laid out [a's patches, b's patches, CLS, SEP])
        patches = torch.arange(n, device=ia.device) + 2
        specials = torch.arange(2, device=ia.device).expand(p, 2)
        take = torch.cat([ia[:, None] * n + patches, (a + ib[:, None]) * n + patches,
                          specials], dim=1)  # (P, 2N+2)
        depth, d = len(m.blocks), m.cfg.width
        rows = 2 * n if depth == 1 and m.cfg.variant == "h2l" else 2 * n + 2
        first = m.blocks[0]
        # each face projected once (rows of h, d) x 3, then gathered into the pairs: q only
        # for the tokens whose output is read
        q, k, v = first.qkv(first.ln1(h)).split(d, dim=1)
        z = _block_rest(first, h[take[:, :rows]], q[take[:, :rows]], k[take], v[take])
        for i, blk in enumerate(m.blocks[1:], start=1):
            rows = 2 * n if i == depth - 1 and m.cfg.variant == "h2l" else 2 * n + 2
            q, k, v = blk.qkv(blk.ln1(z)).split(d, dim=-1)
            z = _block_rest(blk, z[:, :rows], q[:, :rows], k, v)
        if m.cfg.variant == "h2":  # [CLS] sits at row 2N here
            return torch.tanh(m.head(m.norm(z[:, 2 * n])).squeeze(1) / 2)
        z = m.norm(z)  # (P, 2N, d)
        f1 = m.ln_f1(m.head1(z[:, :n].flatten(1)))
        f2 = m.ln_f2(m.head2(z[:, n:].flatten(1)))
        f1 = f1 / f1.norm(dim=1, keepdim=True).clamp_min(1e-12)
        f2 = f2 / f2.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (f1 * f2).sum(dim=1)


def _block_rest(blk: Block, z: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
    """A pre-norm block after its q/k/v projection: z, q (P, R, d) of the R tokens whose
    output is wanted, k, v (P, T, d) of all T tokens -> (P, R, d)."""
    p, r, d = q.shape
    t, h = k.shape[1], blk.heads
    q = q.reshape(p, r, h, d // h).transpose(1, 2)  # (P, h, R, d/h)
    kt = k.reshape(p, t, h, d // h).permute(0, 2, 3, 1)  # (P, h, d/h, T)
    v = v.reshape(p, t, h, d // h).transpose(1, 2)  # (P, h, T, d/h)
    att = torch.softmax(q @ kt * (d // h) ** -0.5, dim=-1)  # (P, h, R, T)
    o = (att @ v).transpose(1, 2).reshape(p, r, d)
    x = z + blk.proj(o)
    return x + blk.mlp(blk.ln2(x))


def _export(scorer: PairScorer, in_channels: int, grid_h: int, grid_w: int) -> bytes:
    """The ONNX graph of `scorer` (dynamic numbers of faces and pairs), as bytes."""
    ga = torch.zeros(2, in_channels, grid_h, grid_w)  # sizes all differ: the tracer keeps
    gb = torch.zeros(3, in_channels, grid_h, grid_w)  # each one dynamic
    idx = torch.zeros(5, dtype=torch.long)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(scorer, (ga, gb, idx, idx), buf, input_names=["ga", "gb", "ia", "ib"],
                          output_names=["score"], opset_version=17, dynamo=False,
                          dynamic_axes={"ga": {0: "A"}, "gb": {0: "B"}, "ia": {0: "P"},
                                        "ib": {0: "P"}, "score": {0: "P"}})
    return buf.getvalue()


def _int8(graph: bytes) -> bytes:
    """`graph` with its MatMul / Gemm weights int8 per channel (activations dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="facerank-vit-") as tmp:
        src, dst = Path(tmp) / "f32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.getLogger().setLevel(quiet)
        return dst.read_bytes()


class OnnxPairScorer:
    """`PairScorer` of a model through onnxruntime on the CPU ("onnx" or "onnx-int8").

    score(ga, gb, ia, ib): numpy float32 grids (A, C, H, W), (B, C, H, W) and int64 pair
    indices (P,) -> (P,) float32 scores.
    """

    def __init__(self, model: FaceViT, runtime: str = "onnx-int8",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        if runtime not in ("onnx", "onnx-int8"):
            raise InputError(f"unknown ONNX runtime {runtime!r}; choose onnx or onnx-int8")
        c = model.cfg
        twin = FaceViT(c)  # a float32 copy on the CPU: exporting leaves `model` as it is
        twin.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
        graph = _export(PairScorer(twin), c.in_channels, c.grid_h, c.grid_w)
        if runtime == "onnx-int8":
            graph = _int8(graph)
        opts = ort_session_options(threads)
        self.runtime = runtime
        # onnxruntime's fused residual + LayerNorm (SkipLayerNormalization) was the slowest node
        # of this graph; unfused, one probe's 100 pairs took 0.87x the time (int8, one thread)
        self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"],
                                             disabled_optimizers=["SkipLayerNormFusion"])

    def score(self, ga: np.ndarray, gb: np.ndarray, ia: np.ndarray, ib: np.ndarray
              ) -> np.ndarray:
        """(P,) float32 scores of the pairs (ga[ia[p]], gb[ib[p]]), face a first."""
        feed = {"ga": np.ascontiguousarray(ga, dtype=np.float32),
                "gb": np.ascontiguousarray(gb, dtype=np.float32),
                "ia": np.ascontiguousarray(ia, dtype=np.int64),
                "ib": np.ascontiguousarray(ib, dtype=np.int64)}
        return self._session.run(None, feed)[0]
