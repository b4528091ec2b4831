"""Stage 2: re-rank the Stage-1 top-k by patch-wise similarity (DeepFace-EMD, DESIGN.md §5).

- `emd`: cost matrices, batched Sinkhorn and EMD similarity of many (query, candidate) pairs
- `weights`: patch weightings (uniform, APC, CC, SC, landmark density), the OT marginals
- `base`: the `Reranker` protocol and the registry behind `--stage2 NAME`
"""
