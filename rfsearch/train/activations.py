"""In-place activations that copy their input while autograd records.

torch's in-place ``hardtanh_`` (ReLU6), ``hardswish_``, ``hardsigmoid_``, ``silu_`` and ``mish_``
compute their gradient from the input, which the in-place write destroys, so while a gradient is
recorded they first save a copy of it (``aten::clone``): a whole extra pass over the tensor, for no
saving of memory, since the copy is as large as an out-of-place output. Out of place they compute
the same values and save the input itself: a PMPL step of the Fashion-MNIST main job (MobileNetV2's
51 ReLU6) took 0.98× the time, alternating both in one process (docs/performance.md). Without a
gradient (evaluation, inference) in place stays the better choice, with no new tensor at all: at
224 px and batch 32 a fresh output per activation made the forward of MobileNetV2 and its children
1.6× slower on CPU (``python -m benchmarks --only child``). ``nn.ReLU``, ``LeakyReLU`` and ``ELU`` differentiate through their output and copy nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# Each copying activation of torch and its out-of-place form (the same values, the input saved).
_OUT_OF_PLACE: dict[type[nn.Module], Callable[[Any, Tensor], Tensor]] = {
    nn.Hardtanh: lambda m, x: F.hardtanh(x, m.min_val, m.max_val),
    nn.ReLU6: lambda m, x: F.hardtanh(x, m.min_val, m.max_val),
    nn.Hardswish: lambda m, x: F.hardswish(x),
    nn.Hardsigmoid: lambda m, x: F.hardsigmoid(x),
    nn.SiLU: lambda m, x: F.silu(x),
    nn.Mish: lambda m, x: F.mish(x),
}


class _CopyFree:
    """In place as configured, except while autograd records a gradient through the input."""

    _torch_class: type[nn.Module]

    def forward(self, input: Tensor) -> Tensor:
        if torch.is_grad_enabled() and input.requires_grad:
            return _OUT_OF_PLACE[self._torch_class](self, input)
        return super().forward(input)  # type: ignore[misc]


# CopyFreeReLU6 and the rest, module attributes so that pickle and copy find them by name
_COPY_FREE: dict[type[nn.Module], type[nn.Module]] = {
    base: type(f"CopyFree{base.__name__}", (_CopyFree, base), {"_torch_class": base, "__module__": __name__}) for base in _OUT_OF_PLACE
}
globals().update((cls.__name__, cls) for cls in _COPY_FREE.values())


def copy_free_activations(model: nn.Module) -> int:
    """Make every in-place activation of ``model`` that would copy its input under autograd (exactly
    one of torch's classes above, not a subclass of one) its copy-free subclass. The class is
    swapped in place, as :func:`rfsearch.train.cpu_convs.pad_small_grouped_convs` does, so
    ``isinstance``, hooks and the state dict stay. Returns how many."""
    swapped = 0
    for module in model.modules():
        copy_free = _COPY_FREE.get(type(module))
        if copy_free is not None and getattr(module, "inplace", False):
            module.__class__ = copy_free
            swapped += 1
    return swapped
