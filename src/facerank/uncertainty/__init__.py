"""Per-face uncertainty: URL confidence-aware sub-embeddings (`url.py`), their training
(`train.py`), self-labelled variations (`variations.py`) and use at search time (`confidence.py`).
"""
