"""Face-ViT: `model` (H2L, H2, H1), `reranker` (`--stage2 vit`, `vit+emd`, heatmaps) and
`train` (`facerank train vit`)."""
