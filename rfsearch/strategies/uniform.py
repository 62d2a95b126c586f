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
    """Single-path training on uniformly drawn paths, then each point's op chosen greedily by meta loss."""

    Options = UniformOptions
    options: UniformOptions
    single_path = True

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
    def score(self, ctx: SearchContext, path: str, name: str, batches: list[Batch]) -> float:
        """The summed meta loss with ``name`` at ``path``, the points before it at their choices and
        those after it on random paths drawn from the generator. Eval mode: no dropout, BatchNorm's
        running statistics read and never updated, so a candidate scored twice from the same
        generator state scores the same."""
        was_training = self.supernet.training
        self.supernet.eval()
        try:
            self._sample_paths([p for p in self.supernet.unfixed() if p != path])
            self.supernet.mixed_ops[path].active = name
            return sum(ctx.loss(self.supernet(x), y).item() for x, y in batches)
        finally:
            self._clear_paths()
            self.supernet.train(was_training)

    def finalize(self, ctx: SearchContext, meta_batches: Iterator[Batch]) -> list[Fixing]:
        """For each point in order: score every candidate on the same paths and batches, fix the best."""
        batches = [ctx.batch(b) for b in itertools.islice(meta_batches, self.options.eval_batches)]
        fixings = []
        for path in self.supernet.unfixed():
            names = self.supernet.mixed_ops[path].names
            state = self.generator.get_state()
            scores = []
            for name in names:
                self.generator.set_state(state)
                scores.append(self.score(ctx, path, name, batches))
            scores = ctx.mean_over_ranks(scores)  # under torchrun each rank scored its own meta shard
            best = names[min(range(len(scores)), key=scores.__getitem__)]
            fixings.append(self.fix(path, [best], ctx.step))
        return fixings
