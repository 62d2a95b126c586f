"""Insertion points: which modules the rules select, and their shapes from one dry forward."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
from torch import nn

from rfsearch.io import one_line
from rfsearch.ops.registry import Candidate
from rfsearch.space.base import KeyedValueError
from rfsearch.space.schema import InsertRule, SpaceConfig


@dataclass(frozen=True)
class InsertionPoint:
    """Where an enhancer goes. ``index`` is the execution order: the depth i of Algorithm 1."""

    index: int
    path: str
    module_type: str
    channels: int
    height: int
    width: int
    candidates: tuple[Candidate, ...]
    post: tuple[str, ...]
    rule: int

    @property
    def candidate_names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "module_type": self.module_type,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "candidates": [c.to_dict() for c in self.candidates],
            "post": list(self.post),
            "rule": self.rule,
        }


def match_path(path: str, pattern: str) -> bool:
    """Glob over dotted paths: ``*`` matches within one segment, ``**`` any number of segments."""
    return _match(path.split("."), pattern.split("."))


def _match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(parts[i:], rest) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match(parts[1:], rest)


def _type_matches(module: nn.Module, names: list[str]) -> bool:
    cls = type(module)
    return any(n in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}") for n in names)


def rule_matches(model: nn.Module, rule: InsertRule) -> list[str]:
    return [
        path
        for path, module in model.named_modules()
        if path
        and (not rule.modules or any(match_path(path, g) for g in rule.modules))
        and (not rule.types or _type_matches(module, rule.types))
    ]


def trace_outputs(model: nn.Module, paths: list[str], input_size: int, in_channels: int) -> dict[str, Any]:
    """One eval-mode forward at the space's input size; each selected module's first output,
    in execution order (dict order). Modules that never run are absent."""
    outputs: dict[str, Any] = {}

    def record(path: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs.setdefault(path, output.shape if isinstance(output, torch.Tensor) else type(output).__name__)

        return hook

    dry_forward(model, input_size, in_channels, {model.get_submodule(p): record(p) for p in paths})
    return outputs


def dry_forward(model: nn.Module, input_size: int, in_channels: int, hooks: dict[nn.Module, Any]) -> None:
    """One eval-mode, no-grad forward of a zero image with forward ``hooks`` attached, then removed;
    the model's training flag is restored. Shapes are read this way, never from module attributes.
    A forward that fails (an input the model refuses) raises a ValueError keyed to ``backbone.input_size``."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size, device=device_of(model)))
    except Exception as err:  # noqa: BLE001  (a backbone's forward may raise anything)
        raise KeyedValueError(("backbone", "input_size"), f"the backbone's forward fails on a 1×{in_channels}×{input_size}×{input_size} input: {type(err).__name__}: {one_line(err)}") from None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def device_of(model: nn.Module) -> torch.device:
    """Trace where the model lives: a model built under ``torch.device("meta")`` traces shapes only."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _keep(index: int | str | list[int] | None, items: list[str]) -> list[str]:
    if index is None:
        return items
    if isinstance(index, int):
        return [items[index]] if -len(items) <= index < len(items) else []
    if isinstance(index, list):
        return [items[i] for i in index if -len(items) <= i < len(items)]
    bounds = [int(p) if p.strip() else None for p in index.split(":")]
    return items[slice(*bounds)]


def discover_points(model: nn.Module, space: SpaceConfig) -> list[InsertionPoint]:
    """Apply the space's rules to a built backbone. Errors name the rule, its key and its line."""
    matches: list[list[str]] = []
    for i, rule in enumerate(space.insert):
        found = rule_matches(model, rule)
        if not found:
            key = "modules" if rule.modules else "types"
            what = f"glob {rule.modules}" if rule.modules else f"types {rule.types}"
            if rule.modules and rule.types:
                what += f" with types {rule.types}"
            examples = ", ".join(p for p, _ in list(model.named_modules())[1:6])
            raise space.error_at(("insert", i, key), f"{what} matches no module of the backbone (its paths look like: {examples}, …)")
        matches.append(found)
    selected = sorted({p for found in matches for p in found})
    try:
        traced = trace_outputs(model, selected, space.backbone.input_size, space.backbone.in_channels)
    except KeyedValueError as err:
        raise space.error_at(err.loc, str(err)) from None
    order = list(traced)
    chosen: dict[str, tuple[int, InsertRule]] = {}
    for i, (rule, found) in enumerate(zip(space.insert, matches)):
        ran = [p for p in order if p in set(found)]
        kept = _keep(rule.index, ran)
        if not kept:
            why = "none of the matched modules runs in forward()" if not ran else f"index {rule.index!r} keeps none of the {len(ran)} matches"
            raise space.error_at(("insert", i, "index" if ran else "modules"), why)
        for path in kept:
            shape = traced[path]
            if not isinstance(shape, torch.Size) or len(shape) != 4:
                got = f"shape {tuple(shape)}" if isinstance(shape, torch.Size) else f"a {shape}"
                raise space.error_at(
                    ("insert", i),
                    f"module '{path}' ({type(model.get_submodule(path)).__name__}) outputs {got}, not a 4-D feature map (N, C, H, W); "
                    "enhancers go after modules that output feature maps",
                )
            chosen[path] = (i, rule)
    points = []
    for path in (p for p in order if p in chosen):
        i, rule = chosen[path]
        _, c, h, w = traced[path]
        points.append(
            InsertionPoint(
                index=len(points),
                path=path,
                module_type=type(model.get_submodule(path)).__name__,
                channels=c,
                height=h,
                width=w,
                candidates=tuple(space.rule_candidates(rule)),
                post=tuple(space.rule_post(rule)),
                rule=i,
            )
        )
    return points


def point_graph(points: list[InsertionPoint]) -> nx.DiGraph:
    """The points as a chain in execution order; node attributes carry shapes and candidates."""
    graph = nx.DiGraph()
    for point in points:
        graph.add_node(point.path, **point.to_dict())
    for before, after in zip(points, points[1:]):
        graph.add_edge(before.path, after.path)
    return graph
