"""A user strategy in one file: a Gumbel-softmax single-path search in the style of GDAS (Dong and
Yang, 2019). Each step every open point computes ONE candidate, drawn as a hard Gumbel-softmax
sample; the straight-through estimator scales its output by a gate whose value is 1 and whose
gradient reaches every α of the point. The temperature anneals linearly over the budget.

    rfsearch search spaces/custom_backbone.yaml --set strategy.name=examples.gdas_strategy:GDAS
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pydantic import Field

from rfsearch import Fixing, Strategy
from rfsearch.search.context import SearchContext
from rfsearch.space.base import StrictModel
from rfsearch.strategies.base import Batch
from rfsearch.strategies.pmpl import ArchOptimizer
from rfsearch.train.engine import prune_optimizer


class GDASOptions(StrictModel):
    tau_max: float = Field(10.0, gt=0, description="temperature of the first epoch")
    tau_min: float = Field(0.1, gt=0, description="temperature of the last epoch")
    arch_optimizer: ArchOptimizer = ArchOptimizer()


class GDAS(Strategy):
    """One hard Gumbel-softmax sample per point and step; θ on the weight batch, α on the meta batch."""

    Options = GDASOptions
    options: GDASOptions
    single_path = True

    def setup(self, ctx: SearchContext) -> None:
        arch = self.options.arch_optimizer
        self.optimizer = torch.optim.Adam(self.supernet.arch_parameters(), lr=arch.lr, betas=arch.betas, weight_decay=arch.weight_decay)
        self.tau = self.options.tau_max
        self.gates: dict[str, torch.Tensor] = {}
        for path, mixed in self.supernet.mixed_ops.items():  # the sampled op's output × its gate
            mixed.register_forward_hook(lambda module, args, out, path=path: out * self.gates[path].to(out.dtype) if path in self.gates else out)

    def on_epoch_start(self, ctx: SearchContext, epoch: int) -> None:
        progress = epoch / max(ctx.epochs - 1, 1)
        self.tau = self.options.tau_max + (self.options.tau_min - self.options.tau_max) * progress

    def after_fixing(self, ctx: SearchContext) -> None:
        prune_optimizer(self.optimizer, self.supernet.arch_parameters())

    def sample(self) -> None:
        """Per open point: index = argmax(α + Gumbel noise) from the strategy's generator, gate =
        hard − soft.detach() + soft at that index (1 forward, softmax((α + g)/τ)'s gradient back)."""
        for path in self.supernet.unfixed():
            mixed = self.supernet.mixed_ops[path]
            noise = -torch.empty(len(mixed.names)).exponential_(generator=self.generator).log()
            soft = torch.softmax((mixed.alpha + noise.to(mixed.alpha.device)) / self.tau, dim=0)
            index = int(soft.argmax())
            mixed.active = mixed.names[index]
            self.gates[path] = 1 - soft[index].detach() + soft[index]

    def clear(self) -> None:
        self.gates.clear()
        for mixed in self.supernet.mixed_ops.values():
            mixed.active = None

    def step(self, ctx: SearchContext, batch: Batch, meta_batch: Batch) -> dict[str, float]:
        try:
            self.sample()
            stats = ctx.weight_backward(batch)
            ctx.weight_step()
            self.clear()
            alphas = self.supernet.arch_parameters()
            if alphas:
                self.sample()
                x, y = ctx.batch(meta_batch)

                def forward() -> tuple[torch.Tensor, torch.Tensor]:
                    logits = self.supernet(x)
                    return ctx.loss(logits, y), logits

                loss, _ = ctx.arch_gradient_step(self.optimizer, alphas, forward)
                stats["meta_loss"] = loss.item()
        finally:
            self.clear()
        return {**stats, "tau": self.tau}

    def finalize(self, ctx: SearchContext, meta_batches: Iterator[Batch]) -> list[Fixing]:
        fixings = []
        for path in self.supernet.unfixed():
            mixed = self.supernet.mixed_ops[path]
            fixings.append(self.fix(path, [mixed.names[int(mixed.probs().argmax())]], ctx.step))
        return fixings

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "arch_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["arch_optimizer"])
