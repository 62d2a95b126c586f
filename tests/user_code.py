"""User code that rfsearch imports by path (``tests.user_code:…``) and that fails the ways user code
fails: backbones and ops that raise, return no module, change the shape, or diverge to NaN."""

from __future__ import annotations

from torch import Tensor, nn

from examples.custom_backbone import TinyNet


def raising_backbone(num_classes: int = 10, width: int = 8) -> nn.Module:
    raise RuntimeError("this backbone cannot be built")


def not_a_module(num_classes: int = 10, width: int = 8) -> object:
    return {"not": "a module"}


class SizeBound(TinyNet):
    """Refuses any input but 32×32, as ViT-style models refuse other sizes."""

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-1] == 32, f"expects 32×32 inputs, got {x.shape[-1]}"
        return super().forward(x)


class Diverging(TinyNet):
    """TinyNet whose logits turn NaN after ``nan_after`` training-mode forwards (a run that diverges
    at a known step). The count is not state: a resumed run starts it again."""

    def __init__(self, num_classes: int = 10, width: int = 8, nan_after: int = 9) -> None:
        super().__init__(num_classes, width)
        self.nan_after, self.calls = nan_after, 0

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_after:
                return out * float("nan")
        return out


def raising_op(channels: int) -> nn.Module:
    raise ValueError("this op needs an even channel count and got an odd one")


def op_not_a_module(channels: int) -> object:
    return lambda x: x


class Halving(nn.Module):
    """Halves the spatial size: not shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x)


class FailingForward(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels + 1, channels, 1)  # one channel too many: its forward fails

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)



def create_model(model_name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """A factory in the style of ``timm.create_model``: ``num_classes`` only through ``**kwargs``."""
    assert model_name == "tinynet" and not pretrained
    return TinyNet(**kwargs)  # type: ignore[arg-type]


def fixed_head(width: int = 8) -> nn.Module:
    """Takes no ``num_classes``: its head stays as built."""
    return TinyNet(num_classes=7, width=width)
