"""The search-space DSL: schema and YAML loading."""

from rfsearch.space.loader import read_space
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
    "read_space",
]
