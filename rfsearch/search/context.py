"""What a strategy works with during a step: the model, the weights' optimizer and their gradient step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rfsearch.supernet import Supernet
from rfsearch.train.engine import autocast, classification_loss, to_device

Batch = tuple[Tensor, Tensor]


@dataclass
class SearchContext:
    """The search loop's state as strategies see it.

    ``model`` is what a forward calls: the supernet, or its DistributedDataParallel wrapper, whose
    backward all-reduces weight gradients. ``reduce_grads`` averages gradients computed outside
    it (α's) across ranks, so every rank holds the same α. A strategy's own optimizers are its own.
    """

    supernet: Supernet
    model: nn.Module
    weight_optimizer: torch.optim.Optimizer
    device: torch.device
    amp: bool = False
    channels_last: bool = False
    grad_clip: float | None = None
    step: int = 0
    epoch: int = 0
    epochs: int = 1  # the budget, for a strategy's own schedules (a temperature, a warm-up)
    reduce_grads: Callable[[list[Tensor]], None] = field(default=lambda grads: None)

    @property
    def weight_lr(self) -> float:
        return float(self.weight_optimizer.param_groups[0]["lr"])

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        """Numbers each rank measured on its own shard (a candidate's meta loss), averaged over the
        ranks through ``reduce_grads``: every rank gets the same list and so decides the same way."""
        averaged = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.reduce_grads([averaged])
        return averaged.tolist()

    def batch(self, batch: Batch) -> Batch:
        return to_device(batch, self.device, self.channels_last)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return classification_loss(logits, y)

    def weight_backward(self, batch: Batch) -> dict[str, float]:
        """∇θ L_train(θ, α) into ``.grad`` of the weights (α's gradient is discarded)."""
        x, y = self.batch(batch)
        self.weight_optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            logits = self.model(x)
        loss = self.loss(logits, y)
        loss.backward()
        for alpha in self.supernet.arch_parameters():
            alpha.grad = None
        return {"loss": loss.item(), "acc": 100.0 * (logits.argmax(1) == y).float().mean().item()}

    def clip_weight_grads(self) -> None:
        """Clip ∇θ in ``.grad`` to ``grad_clip`` (on an already clipped gradient it moves only the last
        bits: torch divides by the norm plus 1e-6)."""
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.supernet.weight_parameters(), self.grad_clip)

    def weight_step(self) -> None:
        """θ ← SGD(θ, ∇θ) with the gradient already in ``.grad`` (clipped if configured)."""
        self.clip_weight_grads()
        self.weight_optimizer.step()

    def arch_gradient_step(self, optimizer: torch.optim.Optimizer, alphas: list[Tensor], forward: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """One step of α on a meta batch: ``forward()`` returns (loss, logits); the loss is
        differentiated w.r.t. ``alphas`` only (the weights' ``.grad`` stays untouched), both inside
        :meth:`measuring` (BatchNorm's backward reads the running buffers too), the gradients are
        averaged over ranks so every rank holds the same α, and ``optimizer`` steps."""
        with self.measuring():
            loss, logits = forward()
            grads = list(torch.autograd.grad(loss, alphas))
        self.reduce_grads(grads)
        for alpha, grad in zip(alphas, grads):
            alpha.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, logits

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """A forward and backward that measure but are not the weights' training step (the meta
        loss, the gradient for θ′): BatchNorm's running statistics are restored afterwards."""
        buffers = [(b, b.detach().clone()) for b in self.supernet.state_buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
