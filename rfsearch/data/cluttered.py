"""Cluttered Fashion-MNIST / MNIST: real items on a larger canvas among fragments of other items.

The construction of "cluttered MNIST" (Mnih et al., *Recurrent Models of Visual Attention*, 2014):
every canvas holds one 28×28 item at a uniformly random position, and ``fragments`` square
patches of ``fragment_size`` px, each cut at a random place from another item of the same split
and pasted at a random place; overlaps keep the brighter pixel. A fragment looks locally like
part of an item, so a unit that sees only a patch cannot tell the item from the clutter; the
label needs a receptive field the size of the item, wherever it is on the canvas.

Canvases are a pure function of the config and the source images, one numpy stream per split
(PCG64 seeded with ``[seed, split]``). The test canvases are made from test items and test
fragments only, so no training pixel reaches the test split. The result is cached on disk like the
embedded dataset (an ``.npz`` whose name hashes the generator version, the config and the source
images), so later runs only load it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from rfsearch.data.cache import cache_dir
from rfsearch.data.idx import IMAGE_SIDE, IdxSplits
from rfsearch.io import atomic_write
from rfsearch.space.data_config import ClutteredConfig

GENERATOR_VERSION = 1  # bump whenever the canvases a config produces change: it invalidates old caches


def clutter(items: np.ndarray, cfg: ClutteredConfig, rng: np.random.Generator) -> np.ndarray:
    """One uint8 canvas (S, S) per item (N, 28, 28), drawn from ``rng``."""
    n, side, size, frag = len(items), IMAGE_SIDE, cfg.canvas_size, cfg.fragment_size
    canvas = np.zeros((n, size, size), np.uint8)
    every = np.arange(n)[:, None]
    if n > 1:
        for _ in range(cfg.fragments):
            donor = rng.integers(0, n - 1, n)
            donor += donor >= every[:, 0]  # any item but the canvas's own
            src = rng.integers(0, side - frag + 1, (n, 2))  # top-left of the fragment in its donor
            dst = rng.integers(0, size - frag + 1, (n, 2))  # and on the canvas
            cols = np.arange(frag)[None, :]
            for dy in range(frag):
                patch = items[donor[:, None], (src[:, :1] + dy), src[:, 1:] + cols]
                target = (every, dst[:, :1] + dy, dst[:, 1:] + cols)
                canvas[target] = np.maximum(canvas[target], patch)
    at = rng.integers(0, size - side + 1, (n, 2))  # top-left of the item
    cols = np.arange(side)[None, :]
    for dy in range(side):
        target = (every, at[:, :1] + dy, at[:, 1:] + cols)
        canvas[target] = np.maximum(canvas[target], items[:, dy, :])
    return canvas


def generate(cfg: ClutteredConfig, source: IdxSplits) -> IdxSplits:
    """The cluttered splits of ``source``: split ``k`` (0 train, 1 test) draws from ``[cfg.seed, k]``."""
    train_x = clutter(source.train_x.numpy(), cfg, np.random.default_rng([cfg.seed, 0]))
    test_x = clutter(source.test_x.numpy(), cfg, np.random.default_rng([cfg.seed, 1]))
    return IdxSplits(torch.from_numpy(train_x), source.train_y, torch.from_numpy(test_x), source.test_y)


def cache_path(name: str, cfg: ClutteredConfig, source: IdxSplits) -> Path:
    """``<cache>/<name>_cluttered-v<version>-<hash>.npz``; the hash covers the config and every source pixel and label."""
    digest = hashlib.sha256(json.dumps({"version": GENERATOR_VERSION, **cfg.model_dump()}, sort_keys=True).encode())
    for tensor in source:
        digest.update(tensor.numpy().tobytes())
    return cache_dir() / f"{name}_cluttered-v{GENERATOR_VERSION}-{digest.hexdigest()[:16]}.npz"


def make_cluttered(name: str, cfg: ClutteredConfig, source: IdxSplits) -> IdxSplits:
    """The cluttered variant of ``source``: loaded from the cache, or generated and cached atomically."""
    path = cache_path(name, cfg, source)
    if path.exists():
        cached = _load(path, cfg, source)
        if cached is not None:
            return cached
    splits = generate(cfg, source)
    atomic_write(path, lambda f: np.savez(f, train_x=splits.train_x.numpy(), test_x=splits.test_x.numpy()))
    return splits


def _load(path: Path, cfg: ClutteredConfig, source: IdxSplits) -> IdxSplits | None:
    """The cached canvases with the source's labels, or None when the file is unreadable or of another shape."""
    try:
        with np.load(path) as npz:
            train_x, test_x = npz["train_x"], npz["test_x"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    shape = (cfg.canvas_size, cfg.canvas_size)
    if train_x.shape != (len(source.train_y), *shape) or test_x.shape != (len(source.test_y), *shape) or train_x.dtype != np.uint8:
        return None
    return IdxSplits(torch.from_numpy(train_x), source.train_y, torch.from_numpy(test_x), source.test_y)
