"""The strategy protocol: a strategy owns its options, its own optimizers and state, its step and
its stopping rule; the loop owns the rest (data, the weights' optimizer and schedule, checkpoints).

A user strategy is one file: subclass ``Strategy``, give it an ``Options`` model, implement
``step`` and ``finalize``; name it in YAML as ``strategy: {name: mypkg.module:MyStrategy, my_option: 1}``
(``examples/gdas_strategy.py`` is one).
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
    """One search strategy. The search loop calls ``setup`` once, then per epoch ``on_epoch_start``
    and per step ``step`` then ``decide`` (and ``after_fixing`` when points were fixed); it stops
    when ``finished`` and calls ``finalize`` once at the end of the budget or on stopping."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    trains_supernet: ClassVar[bool] = True
    """False for strategies that choose without training (``random``): the loop skips to finalize."""
    single_path: ClassVar[bool] = False
    """True for strategies whose step runs one candidate per point: under torchrun the other
    candidates get no gradient, which DistributedDataParallel must be told."""

    def __init__(self, options: BaseModel, supernet: Supernet, seed: int) -> None:
        self.options = options
        self.supernet = supernet
        self.generator = torch.Generator().manual_seed(seed)

    def setup(self, ctx: SearchContext) -> None:
        """Once, with the supernet on its device, before a resume loads ``state_dict``: build the
        strategy's own optimizers here."""

    def on_epoch_start(self, ctx: SearchContext, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based), a resumed epoch included."""

    def after_fixing(self, ctx: SearchContext) -> None:
        """Points were fixed (or a resume re-fixed them): drop the state of parameters that left."""

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
