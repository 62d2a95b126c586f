"""Supernet + choices → a plain child network: each point holds exactly its chosen op."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from rfsearch.arch import Arch
from rfsearch.errors import RfsearchError
from rfsearch.graph.backbone import build_backbone
from rfsearch.graph.points import trace_outputs
from rfsearch.graph.wrap import Enhanced, Summed, attach, attach_order, post_layers
from rfsearch.io import load_checkpoint, restoring, save_checkpoint
from rfsearch.supernet import MixedOp, Supernet


def enhancer_of(ops: list[nn.Module]) -> nn.Module | None:
    """The child's module for a choice; None when the choice is plain ``skip``."""
    if len(ops) == 1:
        return None if isinstance(ops[0], nn.Identity) else ops[0]
    return Summed({str(i): op for i, op in enumerate(ops)})


def build_child(arch: Arch) -> nn.Module:
    """A fresh child from an arch file alone: no YAML, no supernet, no α, no unused candidates.
    What the file gets wrong (an undecided point, a module the backbone lacks or whose output has
    another shape than the file says) names its key."""
    arch.check_complete()
    try:
        model = build_backbone(arch.backbone, arch.num_classes)
        modules = dict(model.named_modules())
        for i, point in enumerate(arch.points):
            if point.path not in modules:
                raise arch.error_at(("points", i, "path"), f"the backbone {arch.backbone.name} has no module '{point.path}'")
        traced = trace_outputs(model, [p.path for p in arch.points], arch.backbone.input_size, arch.backbone.in_channels)
    except ValueError as err:
        raise arch.error_at(getattr(err, "loc", ("backbone", "kwargs" if arch.backbone.kwargs else "name")), str(err)) from None
    for i, point in enumerate(arch.points):
        shape = tuple(traced.get(point.path, ()))[1:]
        for key, written, real in zip(("channels", "height", "width"), (point.channels, point.height, point.width), shape):
            if written != real:
                raise arch.error_at(("points", i, key), f"'{point.path}' outputs {real} {key} at {arch.backbone.input_size} px, not {written}")
    by_path = {p.path: p for p in arch.points}
    for path in attach_order(list(by_path)):
        point = by_path[path]
        ops = [c.candidate().build(point.channels) for c in point.choice or []]
        attach(model, path, enhancer_of(ops), post_layers(point.post, point.channels))
    return model


def discretize(supernet: Supernet) -> nn.Module:
    """The child of a fully fixed supernet, keeping its weights and BN statistics."""
    if not supernet.all_fixed():
        raise ValueError(f"{len(supernet.unfixed())} point(s) are not fixed yet")
    net = copy.deepcopy(supernet.net)
    wrapped = [(name, m) for name, m in net.named_modules() if isinstance(m, Enhanced) and isinstance(m.enhancer, MixedOp)]
    for name, module in sorted(wrapped, key=lambda item: item[0].count("."), reverse=True):
        mixed = module.enhancer
        ops = [mixed.ops[n] for n in mixed.choice]
        enhancer = enhancer_of(ops)
        has_post = not isinstance(module.post, nn.Identity)
        if enhancer is None and not has_post:
            parent_path, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent_path) if parent_path else net, attr, module.inner)
        else:
            module.enhancer = enhancer if enhancer is not None else nn.Identity()
    return net


CHILD_KIND = "rfsearch-child"


def child_state(arch: Arch, model: nn.Module) -> dict[str, Any]:
    """What a child checkpoint holds at least: the arch (so it rebuilds alone) and every weight and buffer."""
    return {"kind": CHILD_KIND, "arch": arch.model_dump(mode="json"), "model": model.state_dict()}


def save_child(path: str | Path, arch: Arch, model: nn.Module) -> Path:
    return save_checkpoint(path, child_state(arch, model))


def read_child(path: str | Path) -> tuple[Arch, nn.Module]:
    """The arch and the child of a checkpoint, in eval mode. The child is built from the arch first,
    then the state dict (BN statistics included) is loaded strictly, so outputs match the saved model."""
    state = load_checkpoint(path)
    if state.get("kind") != CHILD_KIND:
        hint = " (a search checkpoint holds the supernet; retrain the child with `rfsearch retrain`)" if "arch" in state else ""
        raise RfsearchError(f"{path} is not a child checkpoint{hint}")
    with restoring(path):
        arch = Arch.model_validate(state["arch"])
    arch._file = f"{path} (its arch)"
    model = build_child(arch)
    with restoring(path):
        model.load_state_dict(state["model"])
    return arch, model.eval()


def load_child(path: str | Path) -> nn.Module:
    """A saved child (``best.pt``, ``checkpoint.pt`` of a retrain run), ready for inference."""
    return read_child(path)[1]
