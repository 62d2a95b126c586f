"""A space's ``strategy`` section checked against the strategy it names: the one place where
strategy options are validated (at load time by ``rfsearch.load_space``, again by the loop for a
space built in code), with the file, key and line of the first problem."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from rfsearch.space.schema import SpaceConfig, StrategyConfig
from rfsearch.strategies.base import Strategy
from rfsearch.strategies.registry import get_strategy


def resolve_strategy(space: SpaceConfig) -> tuple[type[Strategy], BaseModel]:
    """The strategy class and its validated options; a ConfigError points into ``strategy``.
    Options moved from an older layout that this strategy does not have are ignored, as before."""
    config = space.strategy
    try:
        cls = get_strategy(config.name)
    except ValueError as err:
        raise space.error_at(("strategy", "name"), str(err)) from None
    options = {k: v for k, v in config.options.items() if k not in config._moved or k in cls.Options.model_fields}
    try:
        return cls, cls.Options.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        message = f"unknown option '{first['loc'][-1]}' for strategy '{config.name}'" if first["type"] == "extra_forbidden" else first["msg"]
        raise space.error_at(("strategy", *first["loc"]), message + more) from None


def switched_to(config: StrategyConfig, name: str) -> StrategyConfig:
    """Strategy ``name`` with the options of ``config`` that it accepts: ``--strategy`` and the
    ablation rows switch a space written for PMPL to random or uniform without editing it."""
    accepted = set(get_strategy(name).Options.model_fields)
    return StrategyConfig(name=name, **{k: v for k, v in config.options.items() if k in accepted})
