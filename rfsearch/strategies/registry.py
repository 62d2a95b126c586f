"""Strategies by name: built-ins register themselves; users name theirs by import path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from rfsearch.imports import import_object, is_import_path

if TYPE_CHECKING:
    from rfsearch.strategies.base import Strategy

S = TypeVar("S", bound="type[Strategy]")
_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[S], S]:
    def decorate(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(f"strategy '{name}' is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_strategies() -> dict[str, type[Strategy]]:
    import rfsearch.strategies  # noqa: F401  (registers the built-ins)

    return dict(_REGISTRY)


def get_strategy(name: str) -> type[Strategy]:
    known = registered_strategies()
    if name in known:
        return known[name]
    if is_import_path(name):
        from rfsearch.strategies.base import Strategy

        cls = import_object(name)
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise ValueError(f"'{name}' is not a subclass of rfsearch.Strategy")
        return cls
    raise ValueError(f"unknown strategy '{name}'; known: {', '.join(sorted(known))}, or an import path 'pkg.module:Class'")
