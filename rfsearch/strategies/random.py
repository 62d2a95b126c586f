"""The paper's "Random" row: one candidate per point, drawn uniformly from a seed, no training."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rfsearch.search.context import SearchContext
from rfsearch.strategies.base import Batch, Fixing, Strategy
from rfsearch.strategies.registry import register_strategy


@register_strategy("random")
class RandomChoice(Strategy):
    """One candidate per point drawn uniformly from the seed; the supernet is never trained."""

    trains_supernet = False

    def step(self, ctx: SearchContext, batch: Batch, meta_batch: Batch) -> dict[str, float]:
        raise RuntimeError("the random strategy does not train the supernet")

    def finalize(self, ctx: SearchContext, meta_batches: Iterator[Batch]) -> list[Fixing]:
        fixings = []
        for path in self.supernet.unfixed():
            names = self.supernet.mixed_ops[path].names
            pick = int(torch.randint(len(names), (1,), generator=self.generator))
            fixings.append(self.fix(path, [names[pick]], ctx.step))
        return fixings
