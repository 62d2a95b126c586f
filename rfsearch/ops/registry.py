"""The candidate-op registry.

Contract (as timm's layer factories): a builder is called with the input channel count and its
validated parameters and returns a shape-preserving ``nn.Module``. Built-ins register by name;
users name their own ops in YAML by import path (``mypkg.ops:MyPool``) with no change here.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ValidationError
from torch import nn

from rfsearch.imports import is_import_path
from rfsearch.registry import Registry

OpBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its builder and, optionally, a pydantic model that validates parameters."""

    name: str
    builder: OpBuilder
    params: type[BaseModel] | None = None
    doc: str = ""

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters checked against the op's model (or its signature for user ops)."""
        if self.params is not None:
            try:
                return self.params.model_validate(params).model_dump()
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"op '{self.name}': {where}: {first['msg'].removeprefix('Value error, ')}") from None
        accepted = _keyword_names(self.builder)
        if accepted is not None:
            unknown = sorted(set(params) - accepted)
            if unknown:
                raise ValueError(f"op '{self.name}' takes no parameter {unknown} (it takes {sorted(accepted)})")
        return dict(params)

    def build(self, channels: int, params: dict[str, Any]) -> nn.Module:
        return self.builder(channels, **params)

    def default_name(self, params: dict[str, Any]) -> str:
        """``avgpool`` with k=5 → ``avgpool5``; parameters left at their defaults add nothing."""
        short = self.name.rsplit(":", 1)[-1].lower() if is_import_path(self.name) else self.name
        defaults = _defaults(self.params, self.builder)
        shown = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
        if len(shown) == 1:
            return f"{short}{next(iter(shown.values()))}"
        return "_".join([short, *(f"{k}{v}" for k, v in shown.items())])


def _user_op(name: str, builder: Any) -> OpSpec:
    if not callable(builder):
        raise ValueError(f"'{name}' is not callable")
    return OpSpec(name, builder, getattr(builder, "Params", None), inspect.getdoc(builder) or "")


OPS: Registry[OpSpec] = Registry("op", _user_op)


def register_op(name: str, params: type[BaseModel] | None = None) -> Callable[[OpBuilder], OpBuilder]:
    """Decorator: ``@register_op("avgpool", PoolParams)`` over a builder ``(channels, **params)``."""

    def decorate(builder: OpBuilder) -> OpBuilder:
        OPS.register(name, OpSpec(name, builder, params, inspect.getdoc(builder) or ""))
        return builder

    return decorate


def registered_ops(pattern: str = "*") -> dict[str, OpSpec]:
    return OPS.entries(pattern)


def get_op(name: str) -> OpSpec:
    """A registered op by name, or a user op by import path ``module:attr``."""
    return OPS.get(name)


@dataclass(frozen=True)
class Candidate:
    """One resolved candidate of a mixed op: a unique name, the op it builds and its parameters."""

    name: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self, channels: int) -> nn.Module:
        return get_op(self.op).build(channels, self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "params": dict(self.params)}


def expand_candidates(entry: Any) -> list[Candidate]:
    """One YAML candidate entry → its candidates.

    Forms: ``skip``; ``{avgpool: {k: [3, 5, 7]}}`` (list values expand to one candidate each:
    avgpool3, avgpool5, avgpool7); ``{op: pkg.mod:Op, name: mine, params: {...}}``.
    """
    if isinstance(entry, str):
        op, params, name = entry, {}, None
    elif isinstance(entry, dict) and "op" in entry:
        unknown = set(entry) - {"op", "name", "params"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in candidate; allowed: op, name, params")
        op, params, name = entry["op"], entry.get("params") or {}, entry.get("name")
    elif isinstance(entry, dict) and len(entry) == 1:
        ((op, params),) = entry.items()
        params, name = params or {}, None
    else:
        raise ValueError("a candidate is an op name, {op_name: {param: value}}, or {op: ..., name: ..., params: ...}")
    if not isinstance(op, str):
        raise ValueError(f"op name must be a string, got {op!r}")
    if not isinstance(params, dict):
        raise ValueError(f"parameters of op '{op}' must be a mapping, got {params!r}")
    spec = get_op(op)
    grid = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    empty = [k for k, values in grid.items() if not values]
    if empty:
        raise ValueError(f"parameter {empty[0]!r} of op '{op}' is an empty list: it expands to no candidate")
    combos = [spec.validate(dict(zip(grid, values))) for values in itertools.product(*grid.values())]
    if name is not None and len(combos) > 1:
        raise ValueError(f"candidate name '{name}' given for {len(combos)} expanded candidates")
    return [Candidate(name or spec.default_name(combo), op, combo) for combo in combos]


def _keyword_names(fn: Callable[..., Any]) -> set[str] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in list(sig.parameters.items())[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _defaults(model: type[BaseModel] | None, fn: Callable[..., Any]) -> dict[str, Any]:
    if model is not None:
        return {k: f.default for k, f in model.model_fields.items() if not f.is_required()}
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    return {n: p.default for n, p in sig.parameters.items() if p.default is not p.empty}
