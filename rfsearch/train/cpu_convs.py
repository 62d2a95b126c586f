"""Grouped convolutions on maps so small that every window overlaps the padding, trained on CPU.

On such a map (a depthwise 3×3 over 2×2, the last stage of MobileNetV2 at 28 px) oneDNN computes
the weight's gradient 4-23× slower than for the same convolution over an explicitly zero-padded
input (docs/performance.md): a forward and backward of 480 channels at batch 32 take 6.3 ms
against 0.65 ms padded first, three times per pass in the Fashion-MNIST main job. Padding first
is the same convolution: the forward and the input's gradient keep their bits, the weight's and
bias's gradients their values up to the last bits (another summation order). Where some window
lies inside the map, and for dense convolutions, padding first was slower, so it is left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _every_window_padded(size: int, kernel: int, stride: int, padding: int, dilation: int) -> bool:
    """Along one axis: no output position's window lies wholly inside the map."""
    first = -(-padding // stride)  # the first output whose window starts inside the map
    span = dilation * (kernel - 1)
    outputs = (size + 2 * padding - span - 1) // stride + 1
    return first >= outputs or first * stride - padding + span > size - 1


class PadFirstConv2d(nn.Conv2d):
    """A grouped ``nn.Conv2d`` that pads its input itself when its weight's gradient is computed on
    CPU over a map where every window overlaps the padding; anything else runs ``nn.Conv2d``'s own
    forward (evaluation, export, CUDA, larger maps)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.training and weight.requires_grad and torch.is_grad_enabled() and input.device.type == "cpu" and self._all_padded(input):
            pads = self._reversed_padding_repeated_twice
            return F.conv2d(F.pad(input, pads), weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)

    def _all_padded(self, input: Tensor) -> bool:
        return any(
            _every_window_padded(input.shape[axis - 2], self.kernel_size[axis], self.stride[axis], self.padding[axis], self.dilation[axis])
            for axis in (0, 1)
        )


def pad_small_grouped_convs(model: nn.Module) -> int:
    """Make every plain grouped ``nn.Conv2d`` of ``model`` (zero padding, explicit sizes) a
    :class:`PadFirstConv2d`. The class is swapped in place, so parameters, hooks, optimizers and
    the supernet's member lists stay valid, and the state dict is unchanged. Returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and module.groups > 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str) and any(module.padding):
            module.__class__ = PadFirstConv2d
            swapped += 1
    return swapped
