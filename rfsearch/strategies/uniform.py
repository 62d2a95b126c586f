"""Single-path uniform sampling: train the shared weights one random path per step, then choose
each point's op by its loss on the meta split (greedy, in execution order)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from pydantic import Field

from rfsearch.search.context import SearchContext
from rfsearch.space.base import StrictModel
from rfsearch.strategies.base import Batch, Fixing, Strategy
from rfsearch.strategies.registry import register_strategy


class UniformOptions(StrictModel):
    eval_batches: int = Field(4, ge=1, description="meta batches that score each candidate at the end")


@register_strategy("uniform")
class UniformSampling(Strategy):
    Options = UniformOptions
    options: UniformOptions

    def _sample_paths(self, paths: list[str]) -> None:
        for path in paths:
            mixed = self.supernet.mixed_ops[path]
            mixed.active = mixed.names[int(torch.randint(len(mixed.names), (1,), generator=self.generator))]

    def _clear_paths(self) -> None:
        for mixed in self.supernet.mixed_ops.values():
            mixed.active = None

    def step(self, ctx: SearchContext, batch: Batch, meta_batch: Batch) -> dict[str, float]:
        self._sample_paths(self.supernet.unfixed())
        try:
            stats = ctx.weight_backward(batch)
            ctx.weight_step()
        finally:
            self._clear_paths()
        return stats

    def finished(self) -> bool:
        return False  # uniform sampling runs the whole budget; choices are made in finalize

    @torch.no_grad()
    def finalize(self, ctx: SearchContext, meta_batches: Iterator[Batch]) -> list[Fixing]:
        """For each point in order: try every candidate, the points before it at their choices and
        those after it on random paths (the same paths and batches for every candidate)."""
        batches = [ctx.batch(b) for b in itertools.islice(meta_batches, self.options.eval_batches)]
        fixings = []
        try:
            for path in self.supernet.unfixed():
                mixed = self.supernet.mixed_ops[path]
                state = self.generator.get_state()
                scores = []
                for name in mixed.names:
                    self.generator.set_state(state)
                    self._sample_paths([p for p in self.supernet.unfixed() if p != path])
                    mixed.active = name
                    scores.append(sum(ctx.loss(self.supernet(x), y).item() for x, y in batches))
                    self._clear_paths()
                scores = ctx.mean_over_ranks(scores)  # under torchrun each rank scored its own meta shard
                best = mixed.names[min(range(len(scores)), key=scores.__getitem__)]
                fixings.append(self.fix(path, [best], ctx.step))
        finally:
            self._clear_paths()
        return fixings
