"""Backbones: torchvision models by name, anything else by import path, strides fitted to small inputs."""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable

import torch
from torch import nn

from rfsearch.graph.points import dry_forward
from rfsearch.imports import import_object, is_import_path
from rfsearch.io import one_line
from rfsearch.space.base import KeyedValueError
from rfsearch.space.schema import BackboneConfig, SpaceConfig


def build_backbone(cfg: BackboneConfig, num_classes: int | None = None) -> nn.Module:
    """The backbone of a space. ``num_classes`` fills the constructor's ``num_classes`` (when the
    callable takes it, by name or through ``**kwargs``) unless the space sets it: the classifier then
    fits the dataset. Raises ValueError on a failed construction, whatever the constructor raised
    (a KeyedValueError naming ``backbone.name`` when what it built is no module)."""
    kwargs = dict(cfg.kwargs)
    if is_import_path(cfg.name):
        constructor = import_object(cfg.name)
    else:
        from torchvision.models import get_model

        constructor = functools.partial(get_model, cfg.name)
    if num_classes is not None and _accepts(constructor, "num_classes"):
        kwargs.setdefault("num_classes", num_classes)
    with warnings.catch_warnings(record=True) as said:  # a constructor that fails may warn first: only its error counts
        warnings.simplefilter("always")
        try:
            model = constructor(**kwargs)
        except Exception as err:  # noqa: BLE001  (a user's constructor may raise anything)
            raise ValueError(f"cannot build backbone '{cfg.name}' with kwargs {kwargs}: {type(err).__name__}: {one_line(err)}") from None
    for warning in said:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not isinstance(model, nn.Module):
        raise KeyedValueError(("backbone", "name"), f"backbone '{cfg.name}' returned {type(model).__name__}, not a torch.nn.Module")
    if cfg.max_downsample is not None:
        limit_downsampling(model, cfg.input_size, cfg.in_channels, cfg.max_downsample)
    return model


def limit_downsampling(model: nn.Module, input_size: int, in_channels: int, max_downsample: int) -> int:
    """Set the earliest stride-2 stages to stride 1 until the model downsamples by at most
    ``max_downsample``. A stage is every strided conv or pool that reads the same resolution
    (ShuffleNet's two branches change together), so shapes stay consistent. Returns the new factor."""
    seen: dict[str, tuple[nn.Module, int, int]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name not in seen and inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() == 4:
                seen[name] = (module, inputs[0].shape[-2], output.shape[-2])

        return hook

    strided = {
        module: record(name)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and _stride(module) > 1
    }
    dry_forward(model, input_size, in_channels, strided)
    stages: dict[int, list[nn.Module]] = {}
    factors: dict[int, int] = {}
    for module, size_in, size_out in seen.values():
        stages.setdefault(size_in, []).append(module)
        factors[size_in] = max(1, round(size_in / max(size_out, 1)))
    total = 1
    for factor in factors.values():
        total *= factor
    for size_in in sorted(stages, reverse=True):  # earliest stages first
        if total <= max_downsample:
            break
        for module in stages[size_in]:
            module.stride = (1, 1) if isinstance(module, nn.Conv2d) else 1
        total //= factors[size_in]
    return total


def _stride(module: nn.Module) -> int:
    stride = module.stride
    return max(stride) if isinstance(stride, tuple) else int(stride)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    if isinstance(fn, functools.partial):  # torchvision's get_model forwards **kwargs to the builder
        return True
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build_space_backbone(space: SpaceConfig, num_classes: int | None) -> nn.Module:
    """The space's backbone; a problem building it is a config error at the key that caused it."""
    try:
        return build_backbone(space.backbone, num_classes)
    except ValueError as err:
        raise space.error_at(getattr(err, "loc", ("backbone", "kwargs" if space.backbone.kwargs else "name")), str(err)) from None
