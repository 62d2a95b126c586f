"""Candidate operations. Importing this package registers the built-ins."""

from rfsearch.ops.registry import Candidate, OpSpec, expand_candidates, get_op, register_op, registered_ops
from rfsearch.ops import attention, pooling  # noqa: E402,F401  (registration side effect)

__all__ = ["Candidate", "OpSpec", "expand_candidates", "get_op", "register_op", "registered_ops"]
