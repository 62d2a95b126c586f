"""Local candidates: identity and stride-1, shape-preserving pooling (each a receptive field)."""

from __future__ import annotations

from pydantic import Field, field_validator
from torch import nn

from rfsearch.ops.fused import FastAvgPool2d, FastMaxPool2d
from rfsearch.ops.registry import register_op
from rfsearch.space.base import StrictModel


class PoolParams(StrictModel):
    k: int = Field(description="kernel size; odd, so that padding k//2 keeps the shape")

    @field_validator("k")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel size must be an odd integer >= 1 to preserve the shape, got {k}")
        return k


@register_op("skip")
def skip(channels: int) -> nn.Module:
    """Identity: keeps the backbone's receptive field."""
    return nn.Identity()


@register_op("avgpool", PoolParams)
def avgpool(channels: int, k: int) -> nn.Module:
    """Average pooling, stride 1, padding k//2; borders average over real pixels only. The fast
    drop-in computes exactly what nn.AvgPool2d does (ATen's stride-1 CPU kernel is slow)."""
    return FastAvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False)


@register_op("maxpool", PoolParams)
def maxpool(channels: int, k: int) -> nn.Module:
    """Max pooling, stride 1, padding k//2 (the exact fast drop-in for nn.MaxPool2d)."""
    return FastMaxPool2d(k, stride=1, padding=k // 2)
