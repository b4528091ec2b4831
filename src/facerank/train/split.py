"""The identity-disjoint 2-fold split of LFW that every learned part of facerank uses.

It is the split `benchmarks.stage2 gated` fitted its cross-validated gates on: the people
(all 5,749 LFW identities, one-image people included) are permuted with `seed` and the first
half is fold True. A head trained on fold f is reported on the people of fold (not f) only.
"""

from __future__ import annotations

import numpy as np

from facerank.errors import InputError


def identity_fold(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """labels (N,) identity of each image -> (N,) bool: True where the person is in the
    first half of a seeded permutation of the distinct identities."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise InputError(f"identity split needs a non-empty (N,) label vector, got {labels.shape}")
    people = np.unique(labels)
    half = np.random.default_rng(seed).permutation(people)[: len(people) // 2]
    return np.isin(labels, half)


def split_rows(labels: np.ndarray, train_fold: bool, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows) of images for a head trained on `train_fold`; the two share no
    identity."""
    fold = identity_fold(labels, seed)
    train = np.flatnonzero(fold == train_fold)
    test = np.flatnonzero(fold != train_fold)
    return train, test


SUB_SEED = 1  # the seed that splits a training half once more (`sub_fold`)


def sub_fold(labels: np.ndarray, train_fold: bool, seed: int = 0, sub_seed: int = SUB_SEED
             ) -> np.ndarray:
    """labels (N,) of all LFW images -> (N,) bool: True where the person is in the first half
    of a seeded permutation (`sub_seed`) of the identities of half `train_fold`. Used to train
    a head on one part of a half and fit its gate on the other, whose people the head never
    saw; the other identity half stays for the report."""
    labels = np.asarray(labels)
    fold = identity_fold(labels, seed)
    inside = identity_fold(labels[fold == train_fold], sub_seed)
    out = np.zeros(len(labels), dtype=bool)
    out[np.flatnonzero(fold == train_fold)[inside]] = True
    return out


def describe_split(train_fold: bool, seed: int = 0, subfold: bool | None = None) -> dict:
    """What a checkpoint's config records about its training identities (subfold: trained on
    that part of the half only, `sub_fold`; None: the whole half)."""
    out = {"kind": "lfw-identity-halves", "seed": seed, "train_fold": bool(train_fold),
           "rule": "np.random.default_rng(seed).permutation(np.unique(lfw.labels))"
                   "[: n // 2] is fold True (facerank.train.split.identity_fold)"}
    if subfold is not None:
        out.update(subfold=bool(subfold), sub_seed=SUB_SEED,
                   sub_rule="the same rule with seed sub_seed on the identities of fold "
                   "train_fold; trained on part subfold (facerank.train.split.sub_fold)")
    return out
