"""Size and cost of networks: parameters and MACs (torch.utils.flop_counter FLOPs / 2), and the
report of a child against its backbone."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from rfsearch.arch import Arch
from rfsearch.discretize import build_child
from rfsearch.graph.backbone import build_backbone
from rfsearch.graph.wrap import Enhanced


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def macs_of(module: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of one eval-mode forward on ``x`` (convs and matmuls)."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(x)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """MACs of a whole network on a single square image."""
    device = next(model.parameters()).device
    return macs_of(model, torch.zeros(1, in_channels, input_size, input_size, device=device))


def cost(model: nn.Module, input_size: int, in_channels: int = 3) -> dict[str, Any]:
    return {"params": count_params(model), "macs": count_macs(model, input_size, in_channels)}


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def child_report(arch: Arch) -> dict[str, Any]:
    """The child of ``arch`` against its plain backbone: params and MACs of both, and per point the
    chosen op(s) with channels, spatial size and what the point adds (enhancer + post layers)."""
    size, channels = arch.backbone.input_size, arch.backbone.in_channels
    child_net = build_child(arch)  # first: it names the key of whatever in the arch does not build
    backbone = cost(build_backbone(arch.backbone, arch.num_classes), size, channels)
    child = cost(child_net, size, channels)
    points = []
    for p in arch.points:
        module = child_net.get_submodule(p.path)
        added = nn.Sequential(module.enhancer, module.post) if isinstance(module, Enhanced) else nn.Identity()
        points.append(
            {
                "index": p.index,
                "path": p.path,
                "channels": p.channels,
                "height": p.height,
                "width": p.width,
                "choice": p.choice_names,
                "ops": [c.model_dump(mode="json") for c in p.choice or []],
                "post": list(p.post),
                "prob": round(sum(p.probs.get(n, 0.0) for n in p.choice_names), 5) if p.probs else None,
                "fixed_step": p.fixed_step,
                "params": count_params(added),
                "macs": macs_of(added, torch.zeros(1, p.channels, p.height, p.width)),
            }
        )
    return {
        "space": arch.space,
        "strategy": arch.strategy,
        "backbone_name": arch.backbone.name,
        "input_size": size,
        "num_classes": arch.num_classes,
        "backbone": backbone,
        "child": child,
        "added": {"params": child["params"] - backbone["params"], "macs": child["macs"] - backbone["macs"]},
        "choice_counts": dict(Counter(" + ".join(p["choice"]) for p in points)),
        "points": points,
    }
