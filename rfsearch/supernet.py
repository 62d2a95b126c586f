"""The supernet: a backbone whose insertion points each hold a MixedOp over their candidates."""

from __future__ import annotations

import dataclasses
import warnings

import networkx as nx
import torch
from torch import Tensor, nn

from rfsearch.graph.backbone import build_space_backbone
from rfsearch.graph.candidates import build_candidates
from rfsearch.graph.points import InsertionPoint, discover_points, point_graph
from rfsearch.errors import RfsearchWarning
from rfsearch.graph.wrap import attach, attach_order, post_layers
from rfsearch.ops.fused import fused_mix
from rfsearch.ops.tracing import tracing
from rfsearch.space.schema import SpaceConfig


_FAST_MIXING = True


def set_fast_mixing(enabled: bool) -> bool:
    """Turn the fused mixing of every MixedOp whose ``fast`` is None on or off; returns the previous
    setting. Off: the plain weighted sum, the reference the fast path is tested against."""
    global _FAST_MIXING
    previous, _FAST_MIXING = _FAST_MIXING, bool(enabled)
    return previous


class MixedOp(nn.Module):
    """``Σ_k softmax(α)_k · op_k(x)`` (Eq. 1). Once fixed, only the chosen op(s) remain and run.

    ``active`` routes the forward through one candidate (single-path sampling) while unfixed.

    ``fast`` (None: the module-wide :func:`set_fast_mixing` switch, on by default) computes the sum
    in one fused autograd node (:mod:`rfsearch.ops.fused`): the same forward and gradients, shared
    work between candidates, and only the input kept for the backward. Unknown candidates run as
    they are; ``fast=False`` is the plain weighted sum.
    """

    def __init__(self, candidates: dict[str, nn.Module], init_std: float = 1e-3, *, fast: bool | None = None, aliases: dict[str, str] | None = None) -> None:
        super().__init__()
        if not candidates:
            raise ValueError("a mixed op needs at least one candidate")
        self.names: tuple[str, ...] = tuple(candidates)
        self.aliases: dict[str, str] = dict(aliases or {})  # a dropped candidate → the one it equals here
        self.ops = nn.ModuleDict(candidates)
        self.alpha = nn.Parameter(init_std * torch.randn(len(candidates)))
        self.choice: tuple[str, ...] | None = None
        self.fixed_step: int | None = None
        self.fixed_probs: tuple[float, ...] | None = None
        self.active: str | None = None
        self.fast: bool | None = fast
        self.backend: str | None = None  # fused backend: None (by device), "shift" or "stock"

    @property
    def is_fixed(self) -> bool:
        return self.choice is not None

    def probs(self) -> Tensor:
        return torch.softmax(self.alpha.detach().float(), dim=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.choice is not None:
            if len(self.choice) == 1:
                return self.ops[self.choice[0]](x)
            return sum(self.ops[name](x) for name in self.choice)
        if self.active is not None:
            return self.ops[self.active](x)
        weights = torch.softmax(self.alpha, dim=0).to(x.dtype)
        if (_FAST_MIXING if self.fast is None else self.fast) and not torch.jit.is_scripting():
            if not tracing():
                out = fused_mix([self.ops[name] for name in self.names], weights, x, self.backend)
                if out is not None:
                    return out
        out = weights[0] * self.ops[self.names[0]](x)
        for i in range(1, len(self.names)):
            out = out + weights[i] * self.ops[self.names[i]](x)
        return out

    def fix(self, *names: str, step: int | None = None) -> None:
        """Keep only ``names`` (one op, or several summed); drop the other candidates' parameters
        and stop α. Records π and the step at the moment of fixing. A candidate dropped because
        it equals another on this map (``aliases``) stands for that one."""
        names = tuple(dict.fromkeys(self.aliases.get(n, n) for n in names))
        unknown = [n for n in names if n not in self.names]
        if not names or unknown:
            raise ValueError(f"cannot fix to {list(names)}: candidates are {list(self.names)}")
        if self.choice is not None and set(names) != set(self.choice):
            raise ValueError(f"already fixed to {list(self.choice)}")
        self.fixed_probs = tuple(self.probs().tolist())
        self.fixed_step = step
        self.choice = tuple(names)
        self.ops = nn.ModuleDict({n: self.ops[n] for n in names})
        self.alpha.requires_grad_(False)
        self.active = None

    def extra_repr(self) -> str:
        return f"fixed={list(self.choice)}" if self.choice else f"candidates={list(self.names)}"


class Supernet(nn.Module):
    """The enhanced backbone plus a handle on every MixedOp, in execution order."""

    def __init__(self, net: nn.Module, points: list[InsertionPoint], mixed: dict[str, MixedOp]) -> None:
        super().__init__()
        self.net = net
        self.points = list(points)
        self._mixed = mixed  # plain dict: the ops are registered once, inside ``net``
        self._listed: tuple[object, list[tuple[str, nn.Parameter]], list[Tensor]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _members(self) -> tuple[list[tuple[str, nn.Parameter]], list[Tensor]]:
        """The named non-α parameters and the buffers, listed once per structure: walking the
        supernet's ~1,000 modules takes milliseconds, and a search step asks several times. The
        structure changes when a point is fixed (its dropped candidates leave), when ``net`` is
        replaced (SyncBatchNorm) and when the modules are converted (``to``, ``_apply``)."""
        key = (id(self.net), tuple(m.choice for m in self._mixed.values()))
        if self._listed is None or self._listed[0] != key:
            alphas = {id(m.alpha) for m in self._mixed.values()}
            named = [(n, p) for n, p in self.named_parameters() if id(p) not in alphas]
            self._listed = (key, named, list(self.buffers()))
        return self._listed[1], self._listed[2]

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._listed = None
        return super()._apply(fn, recurse)

    @property
    def mixed_ops(self) -> dict[str, MixedOp]:
        return dict(self._mixed)

    def graph(self) -> nx.DiGraph:
        return point_graph(self.points)

    def arch_parameters(self) -> list[nn.Parameter]:
        """α of the points not yet fixed: what the architecture optimizer updates."""
        return [m.alpha for m in self._mixed.values() if not m.is_fixed]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self._members()[0] if p.requires_grad]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self._members()[0] if p.requires_grad]

    def state_buffers(self) -> list[Tensor]:
        """Every buffer (BatchNorm's running statistics and counters), for saving and restoring them."""
        return list(self._members()[1])

    def unfixed(self) -> list[str]:
        return [path for path, m in self._mixed.items() if not m.is_fixed]

    def all_fixed(self) -> bool:
        return not self.unfixed()

    def fix(self, path: str, *names: str, step: int | None = None) -> None:
        self._mixed[path].fix(*names, step=step)

    def probabilities(self) -> dict[str, dict[str, float]]:
        return {path: dict(zip(m.names, m.probs().tolist())) for path, m in self._mixed.items()}

    def choices(self) -> dict[str, list[str] | None]:
        return {path: list(m.choice) if m.choice else None for path, m in self._mixed.items()}


def build_supernet(space: SpaceConfig, num_classes: int | None = None, init_std: float = 1e-3) -> Supernet:
    """Backbone + rules → supernet. Backbone problems become config errors at ``backbone``.

    Candidates that coincide on a point's map are dropped there (a warning names them); a point
    left with one candidate is fixed to it from the start and spends no α."""
    net = build_space_backbone(space, num_classes)
    points = discover_points(net, space)
    mixed: dict[str, MixedOp] = {}
    merged: dict[str, list[str]] = {}  # what coincides (on which map size) → the points where it does
    for i, point in enumerate(points):
        built = build_candidates(space, point)  # each checked on the point's shape
        same = built.same
        if same:
            points[i] = point = dataclasses.replace(point, candidates=tuple(c for c in point.candidates if c.name not in same))
            merged.setdefault(f"{point.height}×{point.width}: " + ", ".join(f"{n} = {k}" for n, k in same.items()), []).append(point.path)
        mixed[point.path] = MixedOp(built.distinct, init_std, aliases=same)
        if len(mixed[point.path].names) == 1:
            mixed[point.path].fix(mixed[point.path].names[0], step=0)
    if merged:
        count = sum(len(paths) for paths in merged.values())
        warnings.warn(
            f"{count} point(s) have candidates that coincide on their map, so each keeps the first of them: "
            + "; ".join(f"{', '.join(paths)} ({what})" for what, paths in merged.items()),
            RfsearchWarning,
            stacklevel=2,
        )
    by_path = {p.path: p for p in points}
    for path in attach_order(list(by_path)):
        attach(net, path, mixed[path], post_layers(by_path[path].post, by_path[path].channels))
    return Supernet(net, points, mixed)
