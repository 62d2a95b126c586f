"""Grouped convolutions that pad first on small CPU maps (rfsearch.train.cpu_convs)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision.models import mobilenet_v2

from rfsearch.train.cpu_convs import PadFirstConv2d, _every_window_padded, pad_small_grouped_convs


def _windows_inside(size: int, kernel: int, stride: int, padding: int, dilation: int) -> list[int]:
    """Output positions whose every tap reads the map, counted tap by tap."""
    outputs = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    return [o for o in range(outputs) if all(0 <= o * stride - padding + t * dilation < size for t in range(kernel))]


@pytest.mark.parametrize("kernel,stride,padding,dilation", list(itertools.product((1, 3, 5, 7), (1, 2, 3), (0, 1, 2, 3), (1, 2))))
def test_every_window_padded_agrees_with_counting_taps(kernel, stride, padding, dilation):
    for size in range(1, 12):
        if size + 2 * padding < dilation * (kernel - 1) + 1:
            continue  # no output at all: torch refuses the convolution
        expected = not _windows_inside(size, kernel, stride, padding, dilation)
        assert _every_window_padded(size, kernel, stride, padding, dilation) == expected, (size, kernel, stride, padding, dilation)


class _Calls(TorchFunctionMode):
    """The names of the torch functions a block calls."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def _pads(conv: nn.Module, x: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """(whether ``conv(x)`` padded its input itself, its output)."""
    with _Calls() as calls:
        out = conv(x)
    return "pad" in calls.names, out


def _depthwise(channels: int, stride: int = 1) -> tuple[nn.Conv2d, PadFirstConv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=True)
    padded = PadFirstConv2d(channels, channels, 3, stride, 1, groups=channels, bias=True)
    padded.load_state_dict(plain.state_dict())
    return plain, padded


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size,stride", [(2, 1), (1, 1), (3, 2)])
def test_pad_first_is_the_same_convolution(layout, size, stride):
    plain, padded = _depthwise(48, stride)
    x = torch.randn(4, 48, size, size).contiguous(memory_format=layout)
    outs, grads, padding = [], [], []
    for conv in (plain, padded):
        conv.to(memory_format=layout)
        xi = x.clone().requires_grad_()
        pads, out = _pads(conv, xi)
        g = torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).sin()
        grads.append(torch.autograd.grad(out, [xi, conv.weight, conv.bias], g))
        outs.append(out)
        padding.append(pads)
    assert padding == [False, True]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0][0], grads[1][0])  # the input's gradient: the same kernel
    for plain_grad, padded_grad in zip(grads[0][1:], grads[1][1:]):  # weight and bias: another summation order
        torch.testing.assert_close(padded_grad, plain_grad, rtol=1e-5, atol=1e-5)


def test_pad_first_only_where_every_window_is_padded_and_the_weight_learns():
    _, conv = _depthwise(8)
    small, larger = torch.randn(2, 8, 2, 2), torch.randn(2, 8, 3, 3)
    assert _pads(conv, small)[0]
    assert not _pads(conv, larger)[0]  # an interior window exists
    with torch.no_grad():
        assert not _pads(conv, small)[0]  # no gradient at all
    conv.eval()
    assert not _pads(conv, small)[0]  # evaluation: torch's own path
    conv.train()
    conv.weight.requires_grad_(False)
    assert not _pads(conv, small.requires_grad_())[0]  # only the input's gradient


def test_pad_small_grouped_convs_swaps_only_grouped_convs_in_place():
    model = mobilenet_v2(width_mult=0.5, num_classes=10)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    dense = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert pad_small_grouped_convs(model) == len(depthwise) == 17
    assert all(type(m) is PadFirstConv2d for m in depthwise) and all(type(m) is nn.Conv2d for m in dense)
    assert all(p is params[n] for n, p in model.named_parameters()) and list(model.state_dict()) == keys
    assert pad_small_grouped_convs(model) == 0  # already swapped
    model.train()
    x = torch.randn(2, 3, 28, 28)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    assert all(m.weight.grad is not None for m in depthwise)


def test_a_trained_models_pad_first_convs_fold_with_their_batchnorm():
    from rfsearch.inference import fold_batchnorm

    model = mobilenet_v2(width_mult=0.5, num_classes=10)
    pad_small_grouped_convs(model)
    model.train()
    for _ in range(2):  # running statistics that are not the initial ones
        model(torch.randn(4, 3, 28, 28))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)
