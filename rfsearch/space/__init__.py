"""The search-space DSL: schema and YAML loading."""

from rfsearch.space.loader import load_space
from rfsearch.space.schema import (
    BackboneConfig,
    InsertRule,
    RetrainRecipe,
    SearchRecipe,
    SpaceConfig,
    StrategyConfig,
    TrainConfig,
)

__all__ = [
    "BackboneConfig",
    "InsertRule",
    "RetrainRecipe",
    "SearchRecipe",
    "SpaceConfig",
    "StrategyConfig",
    "TrainConfig",
    "load_space",
]
