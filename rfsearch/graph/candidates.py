"""A point's candidate ops, built once and run once on the point's traced shape: a user op that
raises, returns no module or changes the shape is a config error naming the op, the point and
the YAML key, at build time rather than as a traceback in the middle of a search; and
parameter-free candidates that compute the same thing on this map are found by the same run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rfsearch.graph.points import InsertionPoint
from rfsearch.io import one_line
from rfsearch.ops.registry import Candidate
from rfsearch.space.schema import SpaceConfig


@dataclass
class PointOps:
    """The ops of a point, and the candidates that coincide with an earlier one on its map."""

    ops: dict[str, nn.Module]
    same: dict[str, str]  # name → the earlier candidate it equals here

    @property
    def distinct(self) -> dict[str, nn.Module]:
        return {n: op for n, op in self.ops.items() if n not in self.same}


def build_candidates(space: SpaceConfig, point: InsertionPoint) -> PointOps:
    """Every candidate of ``point``, built and run once (eval, no grad) on a seeded random map of
    the point's shape, whose shape it must keep.

    Candidates without parameters or buffers whose outputs match an earlier one's are reported in
    ``same`` (every local pool is ``skip`` on 1×1; the pools of 3, 5 and 7 coincide on 2×2): α
    cannot tell them apart, so they would only split π and keep Eq. 4 from firing. Candidates with
    state are never merged: equal at initialisation is not equal after training. A build on the
    meta device (shapes only) compares nothing."""
    device = torch.empty(0).device  # where ops are being built (torch.device(...) as a context)
    x = torch.randn(1, point.channels, point.height, point.width, generator=torch.Generator().manual_seed(0)).to(device)
    ops: dict[str, nn.Module] = {}
    pure: dict[str, Tensor] = {}
    same: dict[str, str] = {}
    for candidate in point.candidates:
        where = f"op '{candidate.name}' ({candidate.op}) at point '{point.path}' ({point.channels}×{point.height}×{point.width})"
        try:
            op = candidate.build(point.channels)
            if not isinstance(op, nn.Module):
                raise TypeError(f"the builder returned {type(op).__name__}, not a torch.nn.Module")
            was_training = op.training
            with torch.no_grad():
                out = op.eval()(x)
            op.train(was_training)
        except Exception as err:  # noqa: BLE001  (a user's op may raise anything)
            raise space.error_at(_key_of(space, point, candidate), f"{where}: {type(err).__name__}: {one_line(err)}") from None
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise space.error_at(_key_of(space, point, candidate), f"{where}: outputs {got} for an input of shape {tuple(x.shape)}; an op must keep the shape")
        ops[candidate.name] = op
        if device.type != "meta" and not any(True for _ in op.parameters()) and not any(True for _ in op.buffers()):
            match = next((kept for kept, seen in pure.items() if torch.allclose(seen, out, rtol=1e-5, atol=1e-6)), None)
            if match is None:
                pure[candidate.name] = out
            else:
                same[candidate.name] = match
    return PointOps(ops, same)


def _key_of(space: SpaceConfig, point: InsertionPoint, candidate: Candidate) -> tuple[str | int, ...]:
    """The YAML key of the entry ``candidate`` was expanded from: its rule's list or the space's."""
    rule = space.insert[point.rule]
    groups, loc = (rule.candidates, ("insert", point.rule, "candidates")) if rule.candidates is not None else (space.candidates, ("candidates",))
    for i, group in enumerate(groups):
        if any(c.name == candidate.name for c in group):
            return (*loc, i)
    return loc
