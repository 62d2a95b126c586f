"""``load_space``: a space file read by the DSL (``rfsearch.space``) and its strategy's options
checked against that strategy, so every problem in the file shows before anything is built."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rfsearch.space.loader import read_space
from rfsearch.space.schema import SpaceConfig
from rfsearch.strategies.config import resolve_strategy, switched_to


def load_space(path: str | Path, overrides: Iterable[str] = ()) -> SpaceConfig:
    """Parse, override and validate a space file, its strategy's options included. Every problem
    is a ConfigError with file, key and line (exit code 2)."""
    space = read_space(path, overrides)
    resolve_strategy(space)
    if space.strategy._moved:  # moved options this strategy lacks are left out, as the shared recipe ignored them
        space.strategy = switched_to(space.strategy, space.strategy.name)
    return space
