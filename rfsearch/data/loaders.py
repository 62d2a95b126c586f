"""DataLoaders for the search (weight / meta / val) and for retraining (train / val).

Every shuffled loader's order is a function of ``(seed, stream, epoch)`` once ``set_epoch`` is
called at the start of each epoch, so a resumed run sees the same batches as an uninterrupted
one. Under ``torchrun`` (``distributed=True``) each process reads its own shard of the same
permutation; ``batch_size`` is then per process (the global batch is ``world_size × batch_size``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from rfsearch.data.datasets import build_datasets
from rfsearch.data.split import stratified_split, stratified_take
from rfsearch.errors import RfsearchError
from rfsearch.space.data_config import DataConfig

# Independent random streams derived from the one seed the caller passes in.
_TRAIN_LIMIT, _VAL_LIMIT, _META_SPLIT = 1, 2, 3
_WEIGHT, _META, _TRAIN = 11, 12, 13


class SeededLoader(DataLoader):
    """A DataLoader that remembers which random ``stream`` its shuffling draws from (see ``set_epoch``)."""

    def __init__(self, dataset: Dataset[Any], *, stream: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.stream = stream


@dataclass
class SearchLoaders:
    """``weight`` and ``meta`` are disjoint, class-stratified parts of the training set; ``val`` is the held-out split."""

    weight: DataLoader
    meta: DataLoader
    val: DataLoader


@dataclass
class TrainLoaders:
    """The whole training set (``train_limit`` applied) and the validation/test split."""

    train: DataLoader
    val: DataLoader


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make ``loader``'s next pass a function of ``(seed, epoch)``: call it before iterating each epoch.

    A training loader's ``DistributedSampler`` gets ``set_epoch(epoch)`` (the permutation; all
    ranks agree on it), and the loader's generator, which draws the worker seeds, is reseeded from
    ``(seed, the loader's stream, epoch)``.
    """
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if isinstance(loader, SeededLoader) and loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, loader.stream, epoch))


def epoch_seed(seed: int, stream: int, epoch: int) -> int:
    """A 63-bit seed that differs for every (seed, stream, epoch); any int ``seed`` (negative too) works."""
    return int(np.random.SeedSequence([seed % 2**64, stream, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and numpy in a worker from torch's per-worker seed (itself drawn from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    train: bool,
    seed: int,
    stream: int,
    workers: int,
    device: str | torch.device,
    distributed: bool,
) -> DataLoader:
    """One loader: training loaders shuffle and drop the last partial batch; evaluation loaders do neither.

    Training loaders shuffle with a ``DistributedSampler`` in every case (one replica without
    torchrun): the epoch's permutation is the same for any number of processes, and process ``r``
    of ``N`` reads every ``N``-th index of it. So ``N`` processes with batch ``b`` read, together,
    the same global batches as one process with batch ``N·b`` (when ``N`` divides the part's size).
    """
    sampler: DistributedSampler[Any] | None = None
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs torch.distributed.init_process_group() first (run under torchrun)")
        sampler = DistributedSampler(dataset, shuffle=train, seed=epoch_seed(seed, stream, 0), drop_last=False)
    elif train:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=epoch_seed(seed, stream, 0), drop_last=False)
    return SeededLoader(
        dataset,
        stream=stream,
        batch_size=batch_size,
        shuffle=None,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(epoch_seed(seed, stream, 0)),
    )


def _limit(dataset: Dataset[Any], labels: np.ndarray, limit: int | None, seed: int, stream: int) -> tuple[Dataset[Any], np.ndarray]:
    if limit is None or limit >= len(labels):
        return dataset, labels
    keep = stratified_take(labels, limit, (seed % 2**64, stream))
    return Subset(dataset, keep.tolist()), labels[keep]


def _limited_splits(cfg: DataConfig, seed: int) -> tuple[Dataset[Any], np.ndarray, Dataset[Any]]:
    """The training set (with its labels) and the validation set, each cut to its seeded limit."""
    splits = build_datasets(cfg)
    train, train_labels = _limit(splits.train, splits.train_labels, cfg.train_limit, seed, _TRAIN_LIMIT)
    val, _ = _limit(splits.val, splits.val_labels, cfg.val_limit, seed, _VAL_LIMIT)
    return train, train_labels, val


def _require_batches(loader: DataLoader, name: str, size: int, batch_size: int) -> None:
    if len(loader) == 0:
        raise RfsearchError(
            f"the {name} part holds {size} images, less than one batch of {batch_size} per process: "
            "lower the batch size or raise data.train_limit / the dataset's size"
        )


def build_search_loaders(
    cfg: DataConfig,
    *,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    eval_batch_size: int | None = None,
) -> SearchLoaders:
    """Weight and meta loaders over a seeded, stratified ``meta_fraction`` split of the training set, plus ``val``.

    The validation/test split is only returned for reporting: the search never reads it.
    """
    train, train_labels, val = _limited_splits(cfg, seed)
    weight_idx, meta_idx = stratified_split(train_labels, cfg.meta_fraction, (seed % 2**64, _META_SPLIT))
    loader = partial(make_loader, seed=seed, workers=cfg.workers, device=device, distributed=distributed)
    weight = loader(Subset(train, weight_idx.tolist()), batch_size=batch_size, train=True, stream=_WEIGHT)
    meta = loader(Subset(train, meta_idx.tolist()), batch_size=batch_size, train=True, stream=_META)
    _require_batches(weight, "weight", len(weight_idx), batch_size)
    _require_batches(meta, "meta", len(meta_idx), batch_size)
    val_loader = loader(val, batch_size=eval_batch_size or batch_size, train=False, stream=0)
    return SearchLoaders(weight, meta, val_loader)


def build_train_loaders(
    cfg: DataConfig,
    *,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    eval_batch_size: int | None = None,
) -> TrainLoaders:
    """A shuffled loader over the whole training set (``train_limit`` applied) and an evaluation loader over ``val``."""
    train, train_labels, val = _limited_splits(cfg, seed)
    loader = partial(make_loader, seed=seed, workers=cfg.workers, device=device, distributed=distributed)
    train_loader = loader(train, batch_size=batch_size, train=True, stream=_TRAIN)
    _require_batches(train_loader, "training", len(train_labels), batch_size)
    val_loader = loader(val, batch_size=eval_batch_size or batch_size, train=False, stream=0)
    return TrainLoaders(train_loader, val_loader)
