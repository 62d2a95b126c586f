"""The set-up every run shares, search and retrain alike: ranks and device, seeding, the run
directory (new or resumed) and its checkpoint, placing the model, the progress display. Each
loop keeps only what differs: its model, its data, its steps, what its checkpoint holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rfsearch import data as rfdata
from rfsearch.console import TrainingProgress
from rfsearch.distributed import Dist, init_distributed
from rfsearch.host_memory import keep_freed_memory
from rfsearch.space.data_config import DataConfig
from rfsearch.space.schema import BackboneConfig, TrainConfig
from rfsearch.train import rundir
from rfsearch.train.activations import copy_free_activations
from rfsearch.train.cpu_convs import pad_small_grouped_convs
from rfsearch.train.engine import resolve_device, seed_everything

Kind = Literal["search", "retrain"]


def class_count(backbone: BackboneConfig, data: DataConfig) -> int | None:
    """The classifier's size: the backbone's ``num_classes`` when its kwargs fix it, else the data's
    (an arch searched on one data set retrains on another)."""
    return backbone.kwargs.get("num_classes") or rfdata.num_classes(data)


def place_model(model: nn.Module, device: torch.device, channels_last: bool, pad_first: bool) -> nn.Module:
    """The model on the device, NHWC if asked (the usual choice on CUDA; measured faster on this
    project's x86 CPU: docs/performance.md); on CPU with ``pad_first`` its grouped convolutions
    pad first on maps where oneDNN's weight gradient is slow (cpu_convs); in-place activations
    that would copy their input under autograd run out of place then (activations). Every run
    places its model so (``train.channels_last``, ``train.pad_first``), and the benchmarks too."""
    copy_free_activations(model)
    if device.type == "cpu" and pad_first:
        pad_small_grouped_convs(model)
    return model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)


@dataclass
class RunSetup:
    kind: Kind
    train: TrainConfig
    dist: Dist
    device: torch.device
    resume: Path | None
    run_dir: Path = Path()

    @classmethod
    def start(cls, kind: Kind, train: TrainConfig, resume: str | Path | None) -> RunSetup:
        """Ranks, device, seeds and the host allocator, before the model is built (its initial
        weights follow the seed)."""
        if train.keep_freed_memory:
            keep_freed_memory()
        dist, device_name = init_distributed(train.device)
        device = resolve_device(device_name)
        seed_everything(train.seed, train.deterministic)
        return cls(kind, train, dist, device, None if resume is None else Path(resume))

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def channels_last(self) -> bool:
        return self.train.channels_last

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / rundir.CHECKPOINT

    @property
    def history(self) -> Path:
        return self.run_dir / rundir.HISTORY

    def open_run_dir(self, name: str, out: str | Path | None) -> Path:
        """Once the model builds (a space that fails makes no directory): one path for every rank;
        rank 0 names and creates it, or checks the one to resume."""
        kind = self.kind
        self.run_dir = self.dist.on_main(lambda: rundir.new_run_dir(kind, name, out) if self.resume is None else rundir.resume_run_dir(self.resume, kind))
        return self.run_dir

    def place(self, model: nn.Module) -> nn.Module:
        return place_model(model, self.device, self.channels_last, self.train.pad_first)

    def sync_bn(self, model: nn.Module) -> nn.Module:
        """SyncBatchNorm under torchrun when the space asks for it (before DDP wraps the model)."""
        return self.dist.convert_sync_bn(model, self.device, self.train.sync_bn)

    def resumed_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The checkpoint a resume continues from, read on every rank; None for a new run or a
        resumed one that holds no checkpoint yet."""
        if self.resume is None or not self.checkpoint.exists():
            return None
        return rundir.read_checkpoint(self.checkpoint, self.kind, map_location=map_location)

    def progress(self, total: int, completed: int, show: bool) -> TrainingProgress:
        return TrainingProgress(self.kind, total, self.run_dir, completed=completed, enabled=show and self.dist.is_main)
