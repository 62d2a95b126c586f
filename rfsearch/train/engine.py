"""Pieces every training loop of rfsearch shares: device, precision, optimizers, schedule, metrics."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rfsearch.errors import NonFiniteError, RfsearchError
from rfsearch.space.schema import WeightOptimizer


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when present, else cpu. A CUDA device asked for on a machine without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RfsearchError(f"unknown device '{name}': {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RfsearchError(f"device '{name}' asked for, but CUDA is not available on this machine")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: tuple[Tensor, Tensor], device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def sgd(params: Iterable[nn.Parameter], cfg: WeightOptimizer) -> torch.optim.SGD:
    """SGD with weight decay on conv/linear weights only: BN and biases are not decayed. The
    multi-tensor (foreach) update everywhere, CPU included: the same arithmetic in the same order
    (the same bits), at half the time of the per-tensor loop torch picks on CPU for a small model.
    Not torch's fused update (4× faster still): it fails once some parameters start their momentum
    later than others, as a single-path search's unsampled candidates do (GDAS, uniform sampling)."""
    params = list(params)
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        foreach=True,
    )


def classification_loss(logits: Tensor, y: Tensor, *, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy in float32 whatever autocast computed the logits in: every loop's loss."""
    return nn.functional.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction=reduction)


def epoch_steps(loader: Any, cap: int | None) -> int:
    """Steps in one epoch: a full pass over the loader, or ``cap`` if that is shorter."""
    return len(loader) if cap is None else min(cap, len(loader))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero over the whole budget, stepped every iteration."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def prune_optimizer(optimizer: torch.optim.Optimizer, keep: Iterable[nn.Parameter]) -> int:
    """Drop parameters that left the model (a fixed point's unused candidates, a fixed α) from the
    optimizer's groups and state. Returns how many were dropped."""
    live = {id(p) for p in keep}
    dropped = 0
    for group in optimizer.param_groups:
        gone = [p for p in group["params"] if id(p) not in live]
        for p in gone:
            optimizer.state.pop(p, None)
        group["params"] = [p for p in group["params"] if id(p) in live]
        dropped += len(gone)
    return dropped


def check_finite(values: dict[str, float], where: str, hint: str) -> None:
    """Stop the run at the first NaN or infinite number a step measured (its loss, its accuracy)."""
    bad = [f"{name} is {value}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"{where}: {', '.join(bad)}: stopped ({hint})")


def check_weights_finite(model: nn.Module, where: str, hint: str) -> None:
    """Stop before a checkpoint would save NaN or infinite weights or statistics."""
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"{where}: {name} holds non-finite values: stopped ({hint})")


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Counts of samples whose label is among the top-k logits (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    reduce: Any = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) in eval mode; top-5 is None with 5 classes or fewer, where
    every label is among the top 5. ``reduce`` sums the counts across ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    classes = 0
    try:
        for batch in batches:
            x, y = to_device(batch, device, channels_last)
            with autocast(device, amp):
                logits = model(x)
            classes = logits.shape[1]
            loss = classification_loss(logits, y, reduction="sum")
            top1, top5 = topk_correct(logits, y)
            totals += torch.tensor([loss.item(), top1, top5, y.numel()], dtype=torch.float64, device=device)
    finally:
        model.train(was_training)
    if reduce is not None:
        reduce(totals)
    n = max(totals[3].item(), 1.0)
    top5 = 100 * totals[2].item() / n if classes > 5 else None
    return {"loss": totals[0].item() / n, "top1": 100 * totals[1].item() / n, "top5": top5, "samples": int(totals[3].item())}


def cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """Endless iteration over a loader (each pass re-shuffles as the loader does)."""
    while True:
        yield from loader


def rng_state() -> dict[str, Any]:
    """torch's generators: the only randomness the loops draw from (dropout, sampling, shuffles)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Generator states must be CPU byte tensors, whatever device the checkpoint was mapped to."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
