"""Activations that copy their input when they run in place under autograd.

torch's in-place ``hardtanh_`` (ReLU6), ``hardswish_``, ``hardsigmoid_``, ``silu_`` and ``mish_``
compute their gradient from the input, which the in-place write destroys, so while a gradient is
recorded they first save a copy of it (``aten::clone``): a whole extra pass over the tensor, for no
saving of memory, since the copy is as large as an out-of-place output would be. Out of place they
compute the same values and save the input itself: a PMPL step of the Fashion-MNIST main job
(MobileNetV2's 51 ReLU6) took 0.98× the time, alternating both in one process (docs/performance.md).
``nn.ReLU``, ``LeakyReLU`` and ``ELU`` differentiate through their output and copy nothing, so
they stay as they are.
"""

from __future__ import annotations

from torch import nn

COPYING_WHEN_IN_PLACE: tuple[type[nn.Module], ...] = (nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Mish)  # ReLU6 is a Hardtanh


def activations_out_of_place(model: nn.Module) -> int:
    """Turn off ``inplace`` on every activation of ``model`` that would copy its input under
    autograd (the same values, one pass fewer per training step). Returns how many."""
    changed = 0
    for module in model.modules():
        if isinstance(module, COPYING_WHEN_IN_PLACE) and getattr(module, "inplace", False):
            module.inplace = False
            changed += 1
    return changed
