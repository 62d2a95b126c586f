"""The strategy protocol: a strategy owns its step and its stopping rule; the loop owns the rest.

A user strategy is one file: subclass ``Strategy``, give it an ``Options`` model, implement
``step``; name it in YAML as ``strategy: {name: mypkg.module:MyStrategy, my_option: 1}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor

from rfsearch.space.base import StrictModel

if TYPE_CHECKING:
    from rfsearch.search.context import SearchContext
    from rfsearch.supernet import Supernet

Batch = tuple[Tensor, Tensor]


class NoOptions(StrictModel):
    """A strategy without options."""


@dataclass
class Fixing:
    """A point decided during the search: which op(s), at which step, with which π."""

    path: str
    choice: list[str]
    step: int
    probs: dict[str, float] = field(default_factory=dict)


class Strategy(ABC):
    """One search strategy. The search loop calls, per step: ``step`` then ``decide``; it stops
    when ``finished`` and calls ``finalize`` once at the end of the budget or on stopping."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    trains_supernet: ClassVar[bool] = True
    """False for strategies that choose without training (``random``): the loop skips to finalize."""

    def __init__(self, options: BaseModel, supernet: Supernet, seed: int) -> None:
        self.options = options
        self.supernet = supernet
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def step(self, ctx: SearchContext, batch: Batch, meta_batch: Batch) -> dict[str, float]:
        """One search step on a weight batch and a meta batch; returns numbers to log."""

    def decide(self, ctx: SearchContext) -> list[Fixing]:
        """Points to fix after this step (progressive stopping). Default: none."""
        return []

    def fix(self, path: str, choice: list[str], step: int) -> Fixing:
        """Fix a point of the supernet and say so (π recorded at this moment)."""
        mixed = self.supernet.mixed_ops[path]
        probs = dict(zip(mixed.names, mixed.probs().tolist()))
        self.supernet.fix(path, *choice, step=step)
        return Fixing(path, list(choice), step, probs)

    def finished(self) -> bool:
        return self.supernet.all_fixed()

    @abstractmethod
    def finalize(self, ctx: SearchContext, meta_batches: Iterator[Batch]) -> list[Fixing]:
        """Fix every point still open (end of budget)."""

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
