"""What every Stage-2 re-ranker provides, and the registry the CLI and web page read.

A re-ranker takes the Stage-1 `Ranking` of some queries against a gallery (both as
`FeatureSet`s, so it can use grids, landmarks or descriptors) and returns a new `Ranking`
whose first k columns are re-ordered, with its own score kept under `stage_scores[name]`.
New methods (a transformer verifier, a calibrated score) register a factory under a name and
become available to `facerank search --stage2 NAME`, `facerank eval --stage2 NAME` and the web
page without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from facerank.errors import InputError
from facerank.features import FeatureSet
from facerank.search import Ranking


class Reranker(Protocol):
    """Stage 2: re-order the top-k of a Stage-1 ranking."""

    name: str
    k: int

    def rerank(self, queries: FeatureSet, gallery: FeatureSet, ranking: Ranking,
               progress: bool = False) -> Ranking:
        """queries: Q faces; ranking: (Q, K) Stage-1 result with K >= k."""
        ...

    def score_pairs(self, a: FeatureSet, b: FeatureSet) -> np.ndarray:
        """Final Stage-2 score of P pairs (a[i], b[i]) -> (P,), for verification."""
        ...

    def describe(self) -> str:
        """One line naming the method and its settings (for reports and the UI)."""
        ...


_STAGE2: dict[str, Callable[..., Reranker]] = {}


def register_stage2(name: str) -> Callable[[Callable[..., Reranker]], Callable[..., Reranker]]:
    """Decorator: make a re-ranker factory available under `name`."""

    def wrap(factory: Callable[..., Reranker]) -> Callable[..., Reranker]:
        _STAGE2[name] = factory
        return factory

    return wrap


def stage2_names() -> list[str]:
    """Registered Stage-2 methods, plus "none"."""
    _load_builtin()
    return ["none", *sorted(_STAGE2)]


def make_stage2(name: str, **options: object) -> Reranker | None:
    """Build a registered re-ranker ("none" -> None); unknown options are an InputError."""
    _load_builtin()
    if name == "none":
        return None
    if name not in _STAGE2:
        raise InputError(f"unknown Stage-2 method {name!r}; choose from "
                         f"{', '.join(stage2_names())}")
    try:
        return _STAGE2[name](**options)
    except TypeError as e:
        raise InputError(f"bad options for Stage-2 method {name!r}: {e}") from None


def _load_builtin() -> None:
    import facerank.rerank.emd_reranker  # noqa: F401 - registers "emd"
    import facerank.rerank.vit_reranker  # noqa: F401 - registers "vit"
