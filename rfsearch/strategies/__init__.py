"""Search strategies behind one protocol. Importing the package registers the built-ins."""

from rfsearch.strategies.base import Fixing, NoOptions, Strategy
from rfsearch.strategies.registry import get_strategy, register_strategy, registered_strategies
from rfsearch.strategies import pmpl, random, uniform  # noqa: E402,F401  (registration)
from rfsearch.strategies.config import resolve_strategy, switched_to

__all__ = ["Fixing", "NoOptions", "Strategy", "get_strategy", "register_strategy", "registered_strategies", "resolve_strategy", "switched_to"]
