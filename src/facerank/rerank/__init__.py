"""Stage 2: re-rank the Stage-1 top-k by comparing the faces' patch grids.

- `base`: the `Reranker` protocol, the gated blend and the registry behind `--stage2 NAME`
- `gate`: the quality gate that decides which queries Stage 2 may touch
- `emd/`: DeepFace-EMD — `solver` (cost matrices, batched Sinkhorn), `weights` (uniform, APC,
  CC, SC, landmark density: the OT marginals), `reranker` (`--stage2 emd`)
- `vit/`: Face-ViT — `model` (H2L, H2, H1), `reranker` (`--stage2 vit`, `vit+emd`),
  `train` (`facerank train vit`)
- `device`: CPU / GPU chunk sizes shared by both
"""
