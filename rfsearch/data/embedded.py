"""The embedded dataset, "dotted lines in clutter": a procedural task whose label needs a large receptive field.

Every image holds the same number of identical square dots on a tinted, noisy background.
Class 0 ("row"): ``line_dots`` of the dots sit evenly spaced along one pixel row, across the
whole image; class 1 ("column"): the same along one column; class 2 ("none"): those dots are
scattered like the clutter. Neighbouring line dots are ``image_size // line_dots`` pixels apart
(10 px at the default 64 px), so any window narrower than about two spacings sees one line dot
at most, which looks exactly like a clutter dot: the local statistics of the three classes are
the same and only long-range alignment tells them apart (docs/data.md has the argument and the
measured plain-vs-global gap).

Generation is vectorised numpy (about a second for the default 5000 images), a pure function of
the config, and cached on disk as ``.npz`` so later runs only load it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rfsearch.data.cache import cache_dir
from rfsearch.io import atomic_write
from rfsearch.space.data_config import EmbeddedConfig

GENERATOR_VERSION = 1  # bump whenever the images a config produces change: it invalidates old caches
CLASS_NAMES = ("row", "column", "none")
NUM_CLASSES = len(CLASS_NAMES)
_CHUNK = 1024  # images drawn per batch of random numbers: bounds the int16 working memory


class EmbeddedSplits(NamedTuple):
    """uint8 images (N, 3, S, S) and int64 labels (N,) of both splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, each class ``n // 3`` or one more times, in random order."""
    return rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)


def draw_images(cfg: EmbeddedConfig, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image (3, S, S) per label, drawn from ``rng``."""
    out = np.empty((len(labels), 3, cfg.image_size, cfg.image_size), np.uint8)
    for start in range(0, len(labels), _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = _draw_chunk(cfg, labels[start:stop], rng)
    return out


def _draw_chunk(cfg: EmbeddedConfig, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, size, dot, k = len(labels), cfg.image_size, cfg.dot_size, cfg.line_dots
    # (x, y) of the top-left pixel of every dot: clutter first, the line's k dots last
    pos = rng.integers(0, size - dot + 1, (n, cfg.clutter + k, 2))
    offset = rng.integers(0, size - dot - cfg.spacing * (k - 1) + 1, n)  # the line fits without clipping
    along = offset[:, None] + cfg.spacing * np.arange(k)[None, :]
    across = np.broadcast_to(rng.integers(0, size - dot + 1, (n, 1)), (n, k))
    row = np.stack([along, across], -1)  # x varies, y fixed
    line = np.where((labels == 0)[:, None, None], row, row[..., ::-1])
    pos[:, cfg.clutter :] = np.where((labels == 2)[:, None, None], pos[:, cfg.clutter :], line)

    mask = np.zeros((n, size, size), bool)
    img = np.repeat(np.arange(n), pos.shape[1])
    xs, ys = pos[..., 0].ravel(), pos[..., 1].ravel()
    for dy in range(dot):
        for dx in range(dot):
            mask[img, ys + dy, xs + dx] = True

    background = rng.integers(0, 61, (n, 3, 1, 1), dtype=np.int16)  # a dark tint per image
    ink = rng.integers(150, 256, (n, 3, 1, 1), dtype=np.int16)  # one light dot colour per image
    pixels = np.where(mask[:, None], ink, background)
    if cfg.noise:
        pixels = pixels + rng.integers(-cfg.noise, cfg.noise + 1, pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def generate(cfg: EmbeddedConfig) -> EmbeddedSplits:
    """Draw both splits from independent streams of ``cfg.seed``; no test image equals a training image."""
    train_rng = np.random.default_rng([cfg.seed, 0])
    test_rng = np.random.default_rng([cfg.seed, 1])
    train_y = balanced_labels(cfg.train_size, train_rng)
    train_x = draw_images(cfg, train_y, train_rng)
    test_y = balanced_labels(cfg.test_size, test_rng)
    test_x = draw_images(cfg, test_y, test_rng)
    seen = {_digest(img) for img in train_x}
    while dup := [i for i, img in enumerate(test_x) if _digest(img) in seen]:  # only with noise 0 and tiny images
        test_x[dup] = draw_images(cfg, test_y[dup], test_rng)
    return EmbeddedSplits(*(torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)))


def _digest(img: np.ndarray) -> bytes:
    return hashlib.blake2b(img.tobytes(), digest_size=16).digest()


def cache_path(cfg: EmbeddedConfig, root: str | Path | None = None) -> Path:
    """The cache file of ``cfg``: its name hashes the generator version and every field of the config."""
    key = json.dumps({"version": GENERATOR_VERSION, **cfg.model_dump()}, sort_keys=True)
    return cache_dir(root) / f"embedded-v{GENERATOR_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def make_embedded(cfg: EmbeddedConfig, root: str | Path | None = None) -> EmbeddedSplits:
    """The embedded dataset of ``cfg``: loaded from the cache, or generated and cached atomically.

    ``root`` overrides the cache folder (``data.root``); else ``$RFSEARCH_CACHE``, else ``~/.cache/rfsearch``.
    """
    path = cache_path(cfg, root)
    if path.exists():
        cached = _load(path, cfg)
        if cached is not None:
            return cached
    splits = generate(cfg)
    atomic_write(path, lambda f: np.savez(f, **{name: t.numpy() for name, t in splits._asdict().items()}))
    return splits


def _load(path: Path, cfg: EmbeddedConfig) -> EmbeddedSplits | None:
    """The cached splits, or None when the file is unreadable or does not match ``cfg`` (then it is rewritten)."""
    try:
        with np.load(path) as npz:
            arrays = [npz[name] for name in EmbeddedSplits._fields]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    shape = (3, cfg.image_size, cfg.image_size)
    train_x, train_y, test_x, test_y = arrays
    if train_x.shape != (cfg.train_size, *shape) or test_x.shape != (cfg.test_size, *shape) or train_x.dtype != np.uint8:
        return None
    if train_y.shape != (cfg.train_size,) or test_y.shape != (cfg.test_size,):
        return None
    return EmbeddedSplits(*(torch.from_numpy(a) for a in arrays))
