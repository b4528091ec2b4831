"""Evaluation: retrieval, verification and open-set metrics and the protocols built on them."""
