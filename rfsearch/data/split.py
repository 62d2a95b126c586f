"""Seeded, class-stratified index selection: the weight/meta split of the search and the ``*_limit`` subsets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Labels = Sequence[int] | np.ndarray | torch.Tensor
Seed = int | Sequence[int]


def stratified_take(labels: Labels, count: int, seed: Seed) -> np.ndarray:
    """``count`` sorted indices whose class counts follow ``labels``' proportions.

    Each class ``c`` of ``n_c`` samples contributes ``floor(q_c)`` or ``ceil(q_c)`` indices with
    ``q_c = n_c * count / n`` (largest remainders, ties broken at random), so every class is within
    one sample of its exact share. The selection is a function of ``(labels, count, seed)``.
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    if not 0 <= count <= n:
        raise ValueError(f"cannot take {count} of {n} samples")
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(y, return_inverse=True)
    quota = np.bincount(inverse, minlength=len(classes)) * count / n
    take = np.floor(quota).astype(np.int64)
    shuffled = rng.permutation(len(classes))  # random tie-break among equal remainders
    by_remainder = shuffled[np.argsort(-(quota - take)[shuffled], kind="stable")]
    take[by_remainder[: count - int(take.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == c), take[c], replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: Labels, fraction: float, seed: Seed) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(rest, held)``; ``held`` holds ``round(fraction * n)`` indices, stratified.

    The two parts are disjoint and together cover every index. The search uses ``rest`` for the
    weight steps and ``held`` (``meta_fraction``) for the architecture (meta) steps.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    n = len(np.asarray(labels).reshape(-1))
    held = stratified_take(labels, round(fraction * n), seed)
    rest = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return rest, held
