"""torchrun support: one process per device, DDP for the weights, all-reduce for everything else.

Single-process runs get the same object with world size 1, whose collectives do nothing.
docs/multi_gpu.md says what is reduced and why every rank holds the same α.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rfsearch.console import console
from rfsearch.errors import RfsearchError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean_(self, tensors: list[Tensor]) -> None:
        """Average tensors across ranks in place (α's gradients: one α for all ranks)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch_dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_(self, tensor: Tensor) -> None:
        if self.enabled:
            torch_dist.all_reduce(tensor)

    def mean_stats(self, stats: dict[str, float], device: torch.device) -> dict[str, float]:
        """Per-step numbers (loss, accuracy) averaged over ranks, for history and display. Every
        rank must pass the same keys."""
        if not self.enabled or not stats:
            return stats
        values = torch.tensor(list(stats.values()), dtype=torch.float64, device=device)
        self.mean_([values])
        return dict(zip(stats, values.tolist()))

    def mean_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks. DDP copies rank
        0's buffers into every rank at each forward, then each rank updates them from its own
        shard: before an evaluation or a checkpoint they differ, and every rank should evaluate the
        model that is saved."""
        if not self.enabled:
            return
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if buffers:
            self.mean_(buffers)

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank, so that a
        user error on rank 0 (a run directory that holds a run) stops all ranks instead of leaving
        the others waiting in the next collective."""
        if not self.enabled:
            return fn()
        outcome: tuple[bool, Any] = (True, None)
        error: Exception | None = None
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as err:  # noqa: BLE001  (re-raised on every rank below)
                error = err
                try:
                    pickle.dumps(err)
                    outcome = (False, err)
                except Exception:  # noqa: BLE001
                    outcome = (False, RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}"))
        ok, value = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if not ok:
            raise value
        return value

    def assert_same(self, what: str, value: Any) -> None:
        """Check that every rank holds an equal ``value`` (α as nested lists of floats, choices);
        all ranks raise together if not. A safeguard: all-reduced gradients keep α bit-identical."""
        if not self.enabled:
            return
        values: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(values, value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise RuntimeError(f"{what} differs between rank 0 and rank(s) {differ}: the ranks diverged")

    def convert_sync_bn(self, module: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
        """SyncBatchNorm for ``train.sync_bn`` under torchrun, before DDP wraps the module. Modules
        are converted in place below the root, so references to submodules (a supernet's MixedOps)
        stay valid. torch's SyncBatchNorm needs CUDA inputs: on CPU the setting is ignored, with a
        note."""
        if not (enabled and self.enabled):
            return module
        if device.type != "cuda":
            if self.is_main:
                console.print("[bold yellow]note:[/] train.sync_bn ignored: SyncBatchNorm runs on CUDA only; each rank normalises its own batch")
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def wrap(self, model: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
        """DDP around the model under torchrun; the model itself otherwise. Called again whenever
        the set of parameters changes (a point was fixed)."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun set up and pick this rank's device. Returns the group and
    the device name to use.

    ``auto`` is ``cuda:<LOCAL_RANK>`` with backend nccl when CUDA is present, else ``cpu`` with
    gloo; ``cuda``/``cuda:i`` become ``cuda:<LOCAL_RANK>`` (one device per process); ``cpu`` is
    gloo even on a machine with GPUs. Ranks other than 0 print nothing (their console is quiet).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RfsearchError(f"device '{device_name}' asked for, but CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise RfsearchError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if rank != 0:
        console.quiet = True
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(_destroy)
    return Dist(rank, world_size, local_rank), device_name


def _destroy() -> None:
    if torch_dist.is_initialized():
        try:
            torch_dist.destroy_process_group()
        except Exception:  # noqa: BLE001  (best effort at interpreter exit)
            pass


def alpha_snapshot(mixed_ops: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """α (exact floats) and the choice of every point: what ``Dist.assert_same`` compares."""
    return {path: (m.alpha.detach().cpu().tolist(), list(m.choice) if m.choice else None) for path, m in mixed_ops}
