"""Put an enhancer after a module's output, in place, without rewriting the backbone's code."""

from __future__ import annotations

import copy

from torch import Tensor, nn


class Enhanced(nn.Module):
    """``post(enhancer(inner(x)))``: a selected module followed by its enhancer.

    The same small wrapper serves the supernet (enhancer = MixedOp) and the child (enhancer = the
    chosen op), so both keep the backbone's own module under ``inner``.
    """

    def __init__(self, inner: nn.Module, enhancer: nn.Module, post: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.enhancer = enhancer
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.enhancer(self.inner(x)))


class Summed(nn.ModuleDict):
    """The unweighted sum of several ops: a point fixed to its top-2 candidates."""

    def forward(self, x: Tensor) -> Tensor:
        out = None
        for op in self.values():
            out = op(x) if out is None else out + op(x)
        return out


def post_layers(names: list[str] | tuple[str, ...], channels: int) -> nn.Module | None:
    """The post-mix layers (the authors' BatchNorm + h-swish), or None when there are none."""
    if not names:
        return None
    make = {
        "batchnorm": lambda: nn.BatchNorm2d(channels),
        "hardswish": nn.Hardswish,
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
    }
    return nn.Sequential(*(make[name]() for name in names))


def attach(model: nn.Module, path: str, enhancer: nn.Module | None, post: nn.Module | None) -> None:
    """Replace the module at ``path`` by ``Enhanced(module, enhancer, post)``; nothing to add, no change.
    Attach deeper paths first when points nest, so recorded paths stay valid."""
    if enhancer is None and post is None:
        return
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    inner = parent.get_submodule(name)
    setattr(parent, name, Enhanced(inner, enhancer if enhancer is not None else nn.Identity(), post))


def attach_order(paths: list[str]) -> list[str]:
    """Deepest paths first, so wrapping an outer module never moves an inner one."""
    return sorted(paths, key=lambda p: p.count("."), reverse=True)


def without_enhancers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``Enhanced`` replaced by its ``inner`` module: the backbone
    on the same weights, so a comparison with the child isolates what the enhancers do."""
    plain = copy.deepcopy(model)
    wrapped = [name for name, m in plain.named_modules() if isinstance(m, Enhanced)]
    for name in attach_order(wrapped):  # deepest first: the outer paths stay valid
        parent_path, _, attr = name.rpartition(".")
        parent = plain.get_submodule(parent_path) if parent_path else plain
        setattr(parent, attr, getattr(parent, attr).inner)
    return plain
