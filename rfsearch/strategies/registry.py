"""Strategies by name: built-ins register themselves; users name theirs by import path."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from rfsearch.registry import Registry
from rfsearch.strategies.base import Strategy

S = TypeVar("S", bound=type[Strategy])


def _user_strategy(name: str, cls: Any) -> type[Strategy]:
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"'{name}' is not a subclass of rfsearch.Strategy")
    return cls


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", _user_strategy)


def register_strategy(name: str) -> Callable[[S], S]:
    def decorate(cls: S) -> S:
        STRATEGIES.register(name, cls)
        return cls

    return decorate


def registered_strategies(pattern: str = "*") -> dict[str, type[Strategy]]:
    return STRATEGIES.entries(pattern)


def get_strategy(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)
