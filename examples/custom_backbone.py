"""A user-defined backbone plugged into rfsearch by import path, with no change to rfsearch.

Run from the repository root:

    rfsearch inspect spaces/custom_backbone.yaml
    rfsearch search spaces/custom_backbone.yaml --set train.search.epochs=1

The space names ``examples.custom_backbone:TinyNet``; any callable that returns an ``nn.Module``
works, and ``num_classes`` is filled from the dataset when the callable accepts it.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Block(nn.Module):
    """Depthwise-separable block; the enhancer goes after ``depthwise`` (selected by path)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn(cin, cin, stride, groups=cin)
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn(3, w, stride=1)
        self.blocks = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 2 * w, 1), Block(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


if __name__ == "__main__":
    import torch

    from rfsearch import build_supernet, load_space

    space = load_space("spaces/custom_backbone.yaml")
    supernet = build_supernet(space, num_classes=10)
    print(f"{len(supernet.points)} points:", [p.path for p in supernet.points])
    print("output:", tuple(supernet(torch.randn(2, 3, 32, 32)).shape))
