"""Progressive Meta-Pooling Learning (Algorithm 1): first-order meta-learned α, progressive stopping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from rfsearch.search.context import SearchContext
from rfsearch.supernet import Supernet
from rfsearch.space.base import StrictModel
from rfsearch.strategies.base import Batch, Fixing, Strategy
from rfsearch.strategies.registry import register_strategy
from rfsearch.train.engine import autocast, prune_optimizer


class ArchOptimizer(StrictModel):
    """Adam for the architecture weights α (the paper's lr and decay, the authors' betas)."""

    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(1e-3, ge=0)


class PMPLOptions(StrictModel):
    arch_optimizer: ArchOptimizer = ArchOptimizer()
    arch_warmup_epochs: int = Field(0, ge=0, description="epochs of weight training before α starts to move")
    rho: float | None = Field(
        0.2, gt=0, lt=1, description="fix a point once π_max − π_second ≥ rho; null: no progressive stopping (DARTS-style)"
    )
    lookahead: bool = Field(True, description="α step at θ′ = θ − ζ∇θL_train (the paper); false: at θ (the authors' code)")
    weight_grad: Literal["after_alpha", "reuse"] = Field(
        "after_alpha",
        description="the weight step's gradient: at the new α, as Algorithm 1 orders it (a second forward and "
        "backward); reuse: the one taken for θ′ at the old α (cheaper)",
    )
    fallback: Literal["argmax", "top2"] = Field(
        "argmax", description="how points still open at the end of the budget are fixed; top2 sums the two best (the authors' code)"
    )


def decision(probs: torch.Tensor, rho: float) -> int | None:
    """The candidate index to fix to when the leader is ρ ahead of the runner-up, else None.
    The index is the true argmax (the reference code used the comparison's boolean as an index)."""
    if probs.numel() == 1:
        return 0
    top = probs.topk(2)
    if (top.values[0] - top.values[1]).item() >= rho:
        return int(top.indices[0])
    return None


@register_strategy("pmpl")
class PMPL(Strategy):
    """θ′ = θ − ζ∇θL_train; α ← Adam(∇α L_meta(θ′, α)); θ ← SGD(∇θ L_train(θ, α_new)); fix confident points."""

    Options = PMPLOptions
    options: PMPLOptions

    def __init__(self, options: PMPLOptions, supernet: Supernet, seed: int) -> None:
        super().__init__(options, supernet, seed)
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self.alpha_moves = options.arch_warmup_epochs == 0

    def setup(self, ctx: SearchContext) -> None:
        alphas = self.supernet.arch_parameters()
        if alphas:  # a space whose every point has one candidate has nothing to learn
            arch = self.options.arch_optimizer
            self.arch_optimizer = torch.optim.Adam(alphas, lr=arch.lr, betas=arch.betas, weight_decay=arch.weight_decay)

    def on_epoch_start(self, ctx: SearchContext, epoch: int) -> None:
        self.alpha_moves = epoch >= self.options.arch_warmup_epochs

    def after_fixing(self, ctx: SearchContext) -> None:
        if self.arch_optimizer is not None:
            prune_optimizer(self.arch_optimizer, self.supernet.arch_parameters())

    def step(self, ctx: SearchContext, batch: Batch, meta_batch: Batch) -> dict[str, float]:
        if not (self.alpha_moves and self.supernet.arch_parameters()):
            stats = ctx.weight_backward(batch)
            ctx.weight_step()
            return stats
        fresh = self.options.weight_grad == "after_alpha"
        stats: dict[str, float] = {}
        if self.options.lookahead or not fresh:
            # the gradient at α_old: θ′'s, and with ``reuse`` the weight step's too
            with ctx.measuring() if fresh else contextlib.nullcontext():
                stats = ctx.weight_backward(batch)
        with self.at_lookahead(ctx) if self.options.lookahead else contextlib.nullcontext():
            stats.update(self.arch_step(ctx, meta_batch))
        if fresh:
            stats.update(ctx.weight_backward(batch))  # ∇θ L_train(θ, α_new): the loss logged is this one
        ctx.weight_step()
        return stats

    @contextlib.contextmanager
    def at_lookahead(self, ctx: SearchContext) -> Iterator[None]:
        """The weights at θ′ for the duration of the block, then back at θ: the virtual step of
        Algorithm 1. θ′ is where the weight step would take θ with the gradient in ``.grad``: the
        real optimizer's step (clipping, momentum, weight decay, the scheduled ζ), taken and undone
        with the optimizer's state, so θ′ never drifts from the step θ actually takes. First
        order: θ′ is a constant of the meta loss, so the module runs in place at θ′ with its
        weights marked as constants (no gradient edges to them; the kernels are those of a
        functional call with detached weights, the same bits). Inside the block the supernet's
        ``weight_parameters()`` lists none: they require no gradient there."""
        optimizer = ctx.weight_optimizer
        ctx.clip_weight_grads()
        params = self.supernet.weight_parameters()
        with torch.no_grad():
            theta = [p.detach().clone() for p in params]
            state = {p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()} for p, s in optimizer.state.items()}
        try:
            optimizer.step()
            for p in params:
                p.requires_grad_(False)
            yield
        finally:
            with torch.no_grad():
                for p, before in zip(params, theta):
                    p.requires_grad_(True)
                    p.copy_(before)
            optimizer.state.clear()
            optimizer.state.update(state)

    def arch_step(self, ctx: SearchContext, batch: Batch) -> dict[str, float]:
        """α ← Adam(α, ∇α L_meta) on a meta batch at the weights as they are (θ′ inside
        :meth:`at_lookahead`). Only α's gradient is computed, so the weights' ``.grad`` stays
        untouched; BatchNorm normalises with the meta batch's statistics but keeps its running ones."""
        x, y = ctx.batch(batch)

        def forward() -> tuple[Tensor, Tensor]:
            with autocast(ctx.device, ctx.amp):
                logits = self.supernet(x)
            return ctx.loss(logits, y), logits

        loss, logits = ctx.arch_gradient_step(self.arch_optimizer, self.supernet.arch_parameters(), forward)
        return {"meta_loss": loss.item(), "meta_acc": 100.0 * (logits.argmax(1) == y).float().mean().item()}

    def decide(self, ctx: SearchContext) -> list[Fixing]:
        if self.options.rho is None or not self.alpha_moves:
            return []
        fixings = []
        for path in self.supernet.unfixed():
            mixed = self.supernet.mixed_ops[path]
            index = decision(mixed.probs(), self.options.rho)
            if index is not None:
                fixings.append(self.fix(path, [mixed.names[index]], ctx.step))
        return fixings

    def finalize(self, ctx: SearchContext, meta_batches: Iterator[Batch]) -> list[Fixing]:
        k = 2 if self.options.fallback == "top2" else 1
        fixings = []
        for path in self.supernet.unfixed():
            mixed = self.supernet.mixed_ops[path]
            top = mixed.probs().topk(min(k, len(mixed.names))).indices.tolist()
            fixings.append(self.fix(path, [mixed.names[i] for i in top], ctx.step))
        return fixings

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.arch_optimizer is not None:
            state["arch_optimizer"] = self.arch_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.arch_optimizer is not None:
            self.arch_optimizer.load_state_dict(state["arch_optimizer"])
