"""Whether a tracer is recording the forward: the ops' fast paths (custom autograd nodes, in-place
updates) then step aside for plain ATen ops, which every exporter and compiler understands."""

from __future__ import annotations

import torch


def tracing() -> bool:
    """True under ``torch.jit.trace``, ONNX export and torch.compile / torch.export."""
    if torch.jit.is_tracing():
        return True
    onnx = getattr(torch, "onnx", None)
    if onnx is not None and getattr(onnx, "is_in_onnx_export", None) is not None and onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", None) is not None and compiler.is_compiling())
