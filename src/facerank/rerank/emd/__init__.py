"""DeepFace-EMD: `solver` (cost matrices, batched Sinkhorn), `weights` (patch weightings, the
OT marginals) and `reranker` (the `--stage2 emd` re-ranker)."""
