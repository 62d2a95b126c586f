"""Progressive Meta-Pooling Learning (Algorithm 1): first-order meta-learned α, progressive stopping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field

from rfsearch.search.context import SearchContext
from rfsearch.space.base import StrictModel
from rfsearch.strategies.base import Batch, Fixing, Strategy
from rfsearch.strategies.registry import register_strategy


class PMPLOptions(StrictModel):
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

    def step(self, ctx: SearchContext, batch: Batch, meta_batch: Batch) -> dict[str, float]:
        if not (ctx.arch_updates and self.supernet.arch_parameters()):
            stats = ctx.weight_backward(batch)
            ctx.weight_step()
            return stats
        fresh = self.options.weight_grad == "after_alpha"
        stats: dict[str, float] = {}
        if self.options.lookahead or not fresh:
            # the gradient at α_old: θ′'s, and with ``reuse`` the weight step's too
            with ctx.measuring() if fresh else contextlib.nullcontext():
                stats = ctx.weight_backward(batch)
        weights = ctx.lookahead_weights() if self.options.lookahead else None
        stats.update(ctx.arch_step(meta_batch, weights))
        if fresh:
            stats.update(ctx.weight_backward(batch))  # ∇θ L_train(θ, α_new): the loss logged is this one
        ctx.weight_step()
        return stats

    def decide(self, ctx: SearchContext) -> list[Fixing]:
        if self.options.rho is None or not ctx.arch_updates:
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
