"""What a space builds, before any compute is spent on it: points, candidates, params and MACs."""

from __future__ import annotations

from typing import Any

import torch

from rfsearch.arch import Arch, fixed_arch
from rfsearch.discretize import build_child
from rfsearch.errors import RfsearchError
from rfsearch.graph.backbone import build_backbone
from rfsearch.graph.points import InsertionPoint
from rfsearch.report import cost, count_params, macs_of
from rfsearch.space.schema import SpaceConfig
from rfsearch.supernet import build_supernet


def _op_cost(point: InsertionPoint) -> dict[str, tuple[int, int]]:
    """(params, MACs) of each candidate at this point's shape: the child-size ranking."""
    x = torch.zeros(1, point.channels, point.height, point.width)
    ops = {cand.name: cand.build(point.channels) for cand in point.candidates}
    return {name: (count_params(op), macs_of(op, x)) for name, op in ops.items()}


def describe_space(space: SpaceConfig, num_classes: int | None = None) -> dict[str, Any]:
    """Everything ``rfsearch inspect`` shows, as plain data (its ``--json``). The classifier is
    sized as the search sizes it (from the data), or left at the backbone's default when the data
    cannot be read yet (an ImageFolder root not in place)."""
    from rfsearch.train.setup import class_count

    if num_classes is None:
        try:
            num_classes = class_count(space.backbone, space.data)
        except RfsearchError:
            num_classes = None
    size, channels = space.backbone.input_size, space.backbone.in_channels
    supernet = build_supernet(space, num_classes)  # first: it maps a backbone that fails to build to its key
    backbone = build_backbone(space.backbone, num_classes)
    points = supernet.points
    costs = {p.path: _op_cost(p) for p in points}

    def extreme(pick: Any) -> Arch:
        return fixed_arch(points, lambda p: [pick(costs[p.path], key=lambda n: costs[p.path][n])], backbone=space.backbone, num_classes=num_classes)

    children = {}
    for label, arch in (("smallest_child", extreme(min)), ("largest_child", extreme(max))):
        children[label] = {**cost(build_child(arch), size, channels), "choices": {p.path: p.choice_names[0] for p in arch.points}}
    head = num_classes if num_classes is not None else space.backbone.kwargs.get("num_classes", "backbone default")
    return {
        "space": space.name,
        "backbone_name": space.backbone.name,
        "input_size": size,
        "num_classes": head,
        "points": [
            {**p.to_dict(), "candidates": p.candidate_names, "candidate_params": {n: c[0] for n, c in costs[p.path].items()}}
            for p in points
        ],
        "backbone": cost(backbone, size, channels),
        "supernet": cost(supernet, size, channels),
        **children,
    }
