"""Global candidates: ops that see the whole feature map and gate the input with it.

``global`` is the paper's spatial separable pooling; ``coordatt`` is the same block under the
name of Coordinate Attention (Hou et al., 2021), which it follows, so the paper's comparison rows
can be named as published. ``se`` and ``cbam`` are the other attention baselines of the paper, as
their own papers define them (reduction 16, no floor on the hidden width); ``se_mnv3`` is the
squeeze-excitation block of MobileNetV3 (reduction 4, hard sigmoid), a different block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchvision.ops import SqueezeExcitation

from rfsearch.ops import native
from rfsearch.ops.fused import gate_forward, global_hooks, has_hooks
from rfsearch.ops.tracing import tracing
from rfsearch.ops.registry import register_op
from rfsearch.space.base import StrictModel


class ReductionParams(StrictModel):
    reduction: int = Field(32, ge=1, description="hidden channels = max(min_channels, C // reduction)")
    min_channels: int = Field(8, ge=1)


class SEParams(StrictModel):
    reduction: int = Field(16, ge=1, description="hidden channels = max(min_channels, C // reduction)")
    min_channels: int = Field(1, ge=1)


class MobileNetV3SEParams(StrictModel):
    reduction: int = Field(4, ge=1, description="hidden channels = max(min_channels, C // reduction)")
    min_channels: int = Field(8, ge=1)


class CBAMParams(StrictModel):
    reduction: int = Field(16, ge=1, description="hidden channels of the shared MLP = max(min_channels, C // reduction)")
    min_channels: int = Field(1, ge=1)
    kernel: int = Field(7, ge=1, description="the spatial gate's kernel")


class SpatialSeparablePool(nn.Module):
    """Pool along W and along H, mix the two profiles jointly, gate the input with both.

    ``reduce`` and the gates are 1×1 convolutions over the (H+W, 1) profile. On CPU in float32 the
    whole head (reduce, BN, hardswish, both gates, the sigmoids) runs as one native call each way
    (``gate_head.c``), where its ~20 PyTorch operations cost 10-30 µs each whatever their size;
    elsewhere the layers run as ``F.linear`` on the (N, H+W, C) profile with the same weights. The
    modules stay convolutions, so checkpoints, children and exports are unchanged."""

    fused_gate = "ssp"  # the fused mix computes x · a_h · a_w from ``gates(x)`` (rfsearch.ops.fused)

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8) -> None:
        super().__init__()
        hidden = max(min_channels, channels // reduction)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
        )
        self.gate_h = nn.Conv2d(hidden, channels, 1)
        self.gate_w = nn.Conv2d(hidden, channels, 1)

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``a_h`` (N,C,H,1) and ``a_w`` (N,C,1,W): the forward is ``x · a_h · a_w``."""
        h = x.shape[-2]
        profile = separable_profiles(x)  # (N, H+W, C)
        head = _native_head(self, profile, h)
        if head is not None:
            a_h, a_w = head
        else:
            conv, norm, act = self.reduce
            mixed = _pointwise(conv, profile)  # (N, H+W, hidden)
            mixed = act(norm(mixed.transpose(1, 2).unsqueeze(-1))).squeeze(-1).transpose(1, 2)
            a_h = _pointwise(self.gate_h, mixed[:, :h]).sigmoid_()  # (N, H, C)
            a_w = _pointwise(self.gate_w, mixed[:, h:]).sigmoid_()  # (N, W, C)
        return a_h.transpose(1, 2).unsqueeze(-1), a_w.transpose(1, 2).unsqueeze(2)

    def forward(self, x: Tensor) -> Tensor:
        out = _native_inference(self, x)
        if out is not None:
            return out
        a_h, a_w = self.gates(x)
        fused = gate_forward(x, (a_h, a_w))
        if fused is not None:
            return fused
        y = x * a_h
        # in place where no backward will need ``y``: one full-size buffer instead of two
        return y * a_w if torch.is_grad_enabled() or tracing() else y.mul_(a_w)


def _pointwise(conv: nn.Conv2d, t: Tensor) -> Tensor:
    """A 1×1 convolution applied to (N, L, C_in) as a linear map: (N, L, C_out)."""
    return F.linear(t, conv.weight.flatten(1), conv.bias)


def separable_profiles(x: Tensor) -> Tensor:
    """(N, H+W, C): the means along W of each row, then the means along H of each column, channels
    innermost (the layout the 1×1 layers take as ``F.linear``); the input of the reduce branch."""
    if tracing():
        return torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2).transpose(1, 2)
    return _Profiles.apply(x)


class _Profiles(torch.autograd.Function):
    """Both means in one node: one read of ``x`` by the native kernel where it applies (float32
    channels_last on CPU), and a backward that writes ``∂x`` once (autograd's divides two expanded
    gradients and accumulates them)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.size = x.shape
        ctx.cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        ctx.native = _native_profiles(x)
        if ctx.native:
            return native.profiles(x)
        return torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2).transpose(1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        h, w = ctx.size[-2], ctx.size[-1]
        out = torch.empty(ctx.size, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last if ctx.cl or ctx.native else torch.contiguous_format)
        if ctx.native:  # channels with stride 1, which the kernel writes
            return native.profiles_backward(grad, out)
        g = grad.transpose(1, 2)
        torch.add(g[:, :, :h, None] / w, g[:, :, None, h:] / h, out=out)
        return out


def _native_profiles(x: Tensor) -> bool:
    return native.supports(x, (), ()) and native.available()


def _native_head(op: SpatialSeparablePool, profile: Tensor, h: int) -> tuple[Tensor, Tensor] | None:
    """(a_h, a_w) as (N, H, C), (N, W, C) from the native head, or None where it does not apply:
    another dtype or device, an empty batch, CPU autocast (its layers then run in bfloat16),
    tracing (exports keep the layers), hooks it would bypass, a changed structure. (BN always sees
    at least two values per channel: the H+W profile rows.)"""
    if tracing() or global_hooks() or torch.is_autocast_enabled("cpu"):  # first: a tracer records what the checks read
        return None
    if profile.dtype != torch.float32 or profile.device.type != "cpu" or profile.numel() == 0:
        return None
    params = _head_params(op)
    if params is None or not native.available():
        return None
    bn = op.reduce[1] if type(op.reduce[1]) is nn.BatchNorm2d else None
    running, momentum, batch = None, None, False
    if bn is not None:  # as _BatchNorm.forward decides
        batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        if bn.running_mean is not None and (not bn.training or bn.track_running_stats):
            running = (bn.running_mean, bn.running_var)
            if any(b is None or b.dtype != torch.float32 or not b.is_contiguous() for b in running):
                return None  # the kernel reads and moves them as float32
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        momentum = factor if batch and running is not None else None  # the running statistics move only with batch statistics
    return _GateHead.apply(profile.contiguous(), running, batch, bn.eps if bn else 0.0, momentum, h, *params)


def _native_inference(op: SpatialSeparablePool, x: Tensor) -> Tensor | None:
    """``x · a_h · a_w`` in one native call (:func:`native.global_forward`, the same bits as the
    three calls of the module's path) where no autograd graph is wanted and BN normalises with its
    running statistics (evaluation) or is folded: a child's inference, a validation pass. At batch 1
    the three calls' Python, autograd nodes and small tensors cost more than their arithmetic.
    None elsewhere (then the op runs as drawn)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return None
    if tracing() or global_hooks() or torch.is_autocast_enabled("cpu"):
        return None
    if x.numel() == 0 or not native.supports(x, (), ()) or not native.available():
        return None
    params = _head_params(op)
    if params is None or (torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)):
        return None
    norm = op.reduce[1]
    if type(norm) is not nn.BatchNorm2d:
        return native.global_forward(x, params, None, 0.0)
    running = (norm.running_mean, norm.running_var)
    if norm.training or any(b is None or b.dtype != torch.float32 or not b.is_contiguous() for b in running):
        return None  # batch statistics (and their update) take the module's path
    return native.global_forward(x, params, running, norm.eps)


def _head_params(op: SpatialSeparablePool) -> tuple[Tensor | None, ...] | None:
    """W1, b1, gamma, beta, Wh, bh, Ww, bw (gamma and beta None for the folded form), or None unless
    the head is exactly the drawn one: 1×1 convolutions with biases, an affine BatchNorm2d or the
    folded form's Identity, hardswish; no hooks; float32 contiguous parameters."""
    if len(op.reduce) != 3:
        return None
    conv, norm, act = op.reduce
    convs = (conv, op.gate_h, op.gate_w)
    if any(type(m) is not nn.Conv2d or m.bias is None for m in convs) or type(act) is not nn.Hardswish:
        return None
    if not (type(norm) is nn.BatchNorm2d and norm.affine) and type(norm) is not nn.Identity:
        return None
    if any(has_hooks(m) for m in (*convs, norm, act)):
        return None
    bn = (norm.weight, norm.bias) if type(norm) is nn.BatchNorm2d else (None, None)
    params = (conv.weight, conv.bias, *bn, op.gate_h.weight, op.gate_h.bias, op.gate_w.weight, op.gate_w.bias)
    if any(t is not None and (t.dtype != torch.float32 or not t.is_contiguous()) for t in params):
        return None
    return params


class _GateHead(torch.autograd.Function):
    """The gate head in one node each way (:func:`native.head_forward`); it keeps the profile, the
    reduce layer's output, the gates and the BN statistics used."""

    @staticmethod
    def forward(ctx: Any, profile: Tensor, running: Any, batch: bool, eps: float, momentum: float | None, h: int, *params: Tensor | None):
        a_h, a_w, z, stats = native.head_forward(profile, params, running, batch, eps, momentum, h)
        ctx.batch = batch
        ctx.save_for_backward(profile, z, a_h, a_w, stats, *params)
        return a_h, a_w

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor | None, grad_w: Tensor | None):
        profile, z, a_h, a_w, stats, *params = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_p, grads = native.head_backward(profile, z, a_h, a_w, grad_h, grad_w, stats, params, ctx.batch, need[0], need[6:])
        return (grad_p, None, None, None, None, None, *grads)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel then spatial gating."""

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 1, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(min_channels, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        channel = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(channel)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


@register_op("global", ReductionParams)
def global_pool(channels: int, reduction: int = 32, min_channels: int = 8) -> nn.Module:
    """Spatial separable (global) pooling of the paper: a receptive field of the whole map."""
    return SpatialSeparablePool(channels, reduction, min_channels)


@register_op("coordatt", ReductionParams)
def coordatt(channels: int, reduction: int = 32, min_channels: int = 8) -> nn.Module:
    """Coordinate Attention (Hou et al., 2021); the same block as ``global``."""
    return SpatialSeparablePool(channels, reduction, min_channels)


@register_op("se", SEParams)
def se(channels: int, reduction: int = 16, min_channels: int = 1) -> nn.Module:
    """Squeeze-and-Excitation (Hu et al., 2018): average pool, FC C→C/r, ReLU, FC C/r→C, sigmoid."""
    return SqueezeExcitation(channels, max(min_channels, channels // reduction))


@register_op("se_mnv3", MobileNetV3SEParams)
def se_mnv3(channels: int, reduction: int = 4, min_channels: int = 8) -> nn.Module:
    """MobileNetV3's squeeze-excitation block (Howard et al., 2019): C/4 hidden, hard sigmoid."""
    return SqueezeExcitation(channels, max(min_channels, channels // reduction), scale_activation=nn.Hardsigmoid)


@register_op("cbam", CBAMParams)
def cbam(channels: int, reduction: int = 16, min_channels: int = 1, kernel: int = 7) -> nn.Module:
    """CBAM (Woo et al., 2018): a shared MLP over average- and max-pooled channels, then a k×k
    spatial gate over the channel mean and max."""
    return CBAM(channels, reduction, min_channels, kernel)
