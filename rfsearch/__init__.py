"""rfsearch: learnable receptive fields for lightweight CNNs (Progressive Meta-Pooling Learning).

The data flows one way: YAML → ``SpaceConfig`` → ``build_supernet`` → ``run_search`` (a
strategy) → ``Arch`` → ``build_child`` → retrain / export.
"""

from rfsearch.arch import Arch
from rfsearch.discretize import build_child, discretize, load_child
from rfsearch.erf import ErfMap, effective_receptive_field
from rfsearch.errors import ConfigError, RfsearchError, RunStopped
from rfsearch.export import export_child
from rfsearch.host_memory import keep_freed_memory
from rfsearch.inference import fold_batchnorm
from rfsearch.ops import Candidate, register_op
from rfsearch.report import child_report
from rfsearch.search.loop import SearchResult, run_search
from rfsearch.loading import load_space
from rfsearch.space import SpaceConfig
from rfsearch.strategies import Fixing, Strategy, register_strategy
from rfsearch.summary import describe_space
from rfsearch.supernet import MixedOp, Supernet, build_supernet
from rfsearch.train.retrain import RetrainResult, run_retrain

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "Candidate",
    "ConfigError",
    "ErfMap",
    "Fixing",
    "MixedOp",
    "RetrainResult",
    "RfsearchError",
    "RunStopped",
    "SearchResult",
    "SpaceConfig",
    "Strategy",
    "Supernet",
    "build_child",
    "build_supernet",
    "child_report",
    "describe_space",
    "discretize",
    "effective_receptive_field",
    "export_child",
    "fold_batchnorm",
    "keep_freed_memory",
    "load_child",
    "load_space",
    "register_op",
    "register_strategy",
    "run_retrain",
    "run_search",
]
