"""rfsearch: learnable receptive fields for lightweight CNNs (Progressive Meta-Pooling Learning).

The data flows one way: YAML → ``SpaceConfig`` → ``build_supernet`` → ``run_search`` (a
strategy) → ``Arch`` → ``build_child`` → retrain / export.
"""

from rfsearch.arch import Arch
from rfsearch.discretize import build_child, discretize
from rfsearch.errors import ConfigError, RfsearchError
from rfsearch.ops import Candidate, register_op
from rfsearch.search.loop import SearchResult, run_search
from rfsearch.space import SpaceConfig, load_space
from rfsearch.strategies import Fixing, Strategy, register_strategy
from rfsearch.summary import describe_space
from rfsearch.supernet import MixedOp, Supernet, build_supernet

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "Candidate",
    "ConfigError",
    "Fixing",
    "MixedOp",
    "RfsearchError",
    "SearchResult",
    "SpaceConfig",
    "Strategy",
    "Supernet",
    "build_child",
    "build_supernet",
    "describe_space",
    "discretize",
    "load_space",
    "register_op",
    "register_strategy",
    "run_search",
]
