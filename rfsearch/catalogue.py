"""What a space can name, for ``rfsearch list``: the registered ops and strategies with their
options and defaults, and torchvision's classification backbones (as timm and torchvision list
their models)."""

from __future__ import annotations

import fnmatch
import inspect
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from rfsearch.ops.registry import registered_ops
from rfsearch.strategies.registry import registered_strategies

Kind = Literal["ops", "strategies", "backbones"]
KINDS: tuple[Kind, ...] = ("ops", "strategies", "backbones")


@dataclass(frozen=True)
class Entry:
    name: str
    options: str
    about: str


def options_of(model: type[BaseModel] | None) -> str:
    """``k=3, rho=0.2``: each option with its default (JSON), or ``(required)``."""
    if model is None:
        return ""
    shown = []
    for name, field in model.model_fields.items():
        if field.is_required():
            shown.append(f"{name} (required)")
        else:
            default = field.get_default(call_default_factory=True)
            value = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
            shown.append(f"{name}={json.dumps(value, default=str)}")
    return ", ".join(shown)


def about(doc: str | None) -> str:
    """The first sentence of a docstring."""
    paragraph = " ".join((inspect.cleandoc(doc or "").split("\n\n") or [""])[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "." if paragraph else ""


def entries(kind: Kind, pattern: str = "*") -> list[Entry]:
    """The ``kind`` entries whose name matches the shell-style ``pattern``, by name."""
    if kind == "ops":
        return [Entry(name, options_of(spec.params), about(spec.doc)) for name, spec in registered_ops(pattern).items()]
    if kind == "strategies":  # a strategy's own docstring, not the protocol's
        return [Entry(name, options_of(cls.Options), about(cls.__dict__.get("__doc__"))) for name, cls in registered_strategies(pattern).items()]
    import torchvision
    from torchvision.models import get_model_builder, get_model_weights, list_models

    names = sorted(n for n in list_models(module=torchvision.models) if fnmatch.fnmatchcase(n, pattern))
    return [Entry(n, "weights: " + ", ".join(w.name for w in get_model_weights(n)), about(get_model_builder(n).__doc__)) for n in names]
